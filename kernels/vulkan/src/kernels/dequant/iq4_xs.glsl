// IQ4_XS: super-blocks of 256 (136 bytes) = f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes
// of 4-bit grid indices. Sub-block ib (a chunk of 32) has the 6-bit scale
// ls = nibble ib % 2 of scales_l[ib / 2] | (bits 2ib of scales_h) << 4 and packs its values
// as IQ4_NL does in qs[16ib..16ib + 16]. Value = (d * (ls - 32)) * GRID[nibble].
#include "iq4_grid.glsl"

float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 136u;
    uint ib = c & 7u;
    uint lo = (byte_at(b + 4u + (ib >> 1)) >> (4u * (ib & 1u))) & 15u;
    uint scales_h = byte_at(b + 2u) | (byte_at(b + 3u) << 8);
    uint hi = (scales_h >> (2u * ib)) & 3u;
    float dl = f16_at(b) * float(int(lo | (hi << 4)) - 32);
    return dl * iq4_grid_dot(b + 8u + 16u * ib, xo);
}
