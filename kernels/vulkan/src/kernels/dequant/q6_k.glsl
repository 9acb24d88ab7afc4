// Q6_K: super-blocks of 256 (210 bytes) = 128 bytes of low nibbles (ql), 64 bytes of high
// 2-bit pairs (qh), 16 int8 scales (one per 16 values), f16 d. Value = d * scale * (q - 32);
// the chunk's bytes as q6k_chunk.glsl finds them.
#include "q6k_chunk.glsl"

float dot32(uint row_off, uint c, uint xo) {
    Q6kChunk q = q6k_chunk(row_off, c);
    float s0 = 0.0;
    float s1 = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        uint v = ((byte_at(q.ql + l) >> q.lshift) & 15u) | (((byte_at(q.qh + l) >> q.hshift) & 3u) << 4);
        float p = float(int(v) - 32) * x[xo + l];
        if (l < 16u) {
            s0 += p;
        } else {
            s1 += p;
        }
    }
    return f16_at(q.b + 208u) * (float(i8_at(q.sc)) * s0 + float(i8_at(q.sc + 1u)) * s1);
}
