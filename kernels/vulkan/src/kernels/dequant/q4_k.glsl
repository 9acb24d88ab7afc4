// Q4_K: super-blocks of 256 (144 bytes) = f16 d, f16 dmin, 12 bytes of packed 6-bit
// (scale, min) pairs for 8 sub-blocks of 32, 128 bytes of 4-bit values. Value =
// d * scale_j * q - dmin * min_j. A chunk is sub-block j: 64-value group j / 2, low nibbles
// for even j, high for odd.
#include "k4_scale_min.glsl"

float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 144u;
    uint j = c & 7u;
    uvec2 sm = k4_scale_min(b, j);
    uint q = b + 16u + 32u * (j >> 1);
    uint shift = (j & 1u) * 4u;
    float sq = 0.0;
    float sx = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        float xv = x[xo + l];
        sq += float((byte_at(q + l) >> shift) & 15u) * xv;
        sx += xv;
    }
    return f16_at(b) * float(sm.x) * sq - f16_at(b + 2u) * float(sm.y) * sx;
}
