// IQ4_NL: blocks of 32 = f16 d, 16 bytes of 4-bit grid indices (value l < 16 in the low
// nibble of byte l, value 16 + l in its high nibble). Value = d * GRID[nibble]. A chunk is
// one block (18 bytes).
#include "iq4_grid.glsl"

float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 18u;
    return f16_at(b) * iq4_grid_dot(b + 2u, xo);
}
