// Q3_K: super-blocks of 256 (110 bytes) = 32 bytes of high-bit masks, 64 bytes of 2-bit
// values, 12 bytes of packed 6-bit signed scales (one per 16 values, minus 32), f16 d.
// Value = d * scale * (q - (high bit ? 0 : 4)). In half n, chunk s of 32 takes bits 2s of
// qs[32n + l], bit 4n + s of hmask[l], scale 8n + 2s + l / 16.
#include "q3k_scale.glsl"

float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 110u;
    uint j = c & 7u;
    uint n = j >> 2;
    uint s = j & 3u;
    uint q = b + 32u + 32u * n;
    uint shift = 2u * s;
    uint hbit = 4u * n + s;
    float s0 = 0.0;
    float s1 = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        int v = int((byte_at(q + l) >> shift) & 3u) - (((byte_at(b + l) >> hbit) & 1u) != 0u ? 0 : 4);
        float p = float(v) * x[xo + l];
        if (l < 16u) {
            s0 += p;
        } else {
            s1 += p;
        }
    }
    uint i = 8u * n + 2u * s;
    return f16_at(b + 108u) * (float(q3k_scale(b, i)) * s0 + float(q3k_scale(b, i + 1u)) * s1);
}
