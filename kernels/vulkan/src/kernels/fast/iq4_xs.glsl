// IQ4_XS: super-blocks of 256 (136 bytes) = f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes
// of 4-bit grid indices; chunk ib has the 6-bit scale ls (dequant/iq4_xs.glsl) and packs its
// values as IQ4_NL does in qs[16ib..]. Value = d * (ls - 32) * GRID[nibble]:
// act_d * (d * ((ls - 32) * S)).
#include "iq4_grid.glsl"

float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 136u;
    uint ib = c & 7u;
    uint lo = (byte_at(b + 4u + (ib >> 1)) >> (4u * (ib & 1u))) & 15u;
    uint scales_h = byte_at(b + 2u) | (byte_at(b + 3u) << 8);
    uint hi = (scales_h >> (2u * ib)) & 3u;
    int ls = int(lo | (hi << 4)) - 32;
    return act_d(xb) * (f16_at(b) * float(ls * iq4_grid_idot(b + 8u + 16u * ib, xb)));
}
