// IQ4_NL: blocks of 32 = f16 d, 16 bytes of 4-bit grid indices (a chunk is one block, 18
// bytes). Value = d * GRID[nibble]: act_d * (d * S).
#include "iq4_grid.glsl"

float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + c * 18u;
    return act_d(xb) * (f16_at(b) * float(iq4_grid_idot(b + 2u, xb)));
}
