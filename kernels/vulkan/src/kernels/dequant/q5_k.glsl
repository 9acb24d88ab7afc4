// Q5_K: super-blocks of 256 (176 bytes) = f16 d, f16 dmin, 12 bytes of packed 6-bit
// (scale, min) pairs (as Q4_K), 32 bytes of high bits (bit j of byte l: value l of sub-block
// j), 128 bytes of low nibbles (as Q4_K). Value = d * scale_j * q - dmin * min_j.
#include "k4_scale_min.glsl"

float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 176u;
    uint j = c & 7u;
    uvec2 sm = k4_scale_min(b, j);
    uint q = b + 48u + 32u * (j >> 1);
    uint shift = (j & 1u) * 4u;
    float sq = 0.0;
    float sx = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        float xv = x[xo + l];
        uint v = ((byte_at(q + l) >> shift) & 15u) | (((byte_at(b + 16u + l) >> j) & 1u) << 4);
        sq += float(v) * xv;
        sx += xv;
    }
    return f16_at(b) * float(sm.x) * sq - f16_at(b + 2u) * float(sm.y) * sx;
}
