// Q6_K: super-blocks of 256 (210 bytes) = 128 bytes of low nibbles (ql), 64 bytes of high
// 2-bit pairs (qh), 16 int8 scales (one per 16 values), f16 d. Code = q - 32, in -32..31,
// the chunk's bytes as q6k_chunk.glsl finds them: act_d * (d * (sc0 * S0 + sc1 * S1)).
#include "../dequant/q6k_chunk.glsl"

float idot32(uint row_off, uint c, uint xb) {
    Q6kChunk q = q6k_chunk(row_off, c);
    int s0 = 0;
    int s1 = 0;
    for (uint i = 0u; i < 8u; i++) {
        uint lo = (word_at(q.ql + 4u * i) >> q.lshift) & 0x0F0F0F0Fu;
        uint hi = ((word_at(q.qh + 4u * i) >> q.hshift) & 0x03030303u) << 4;
        uint codes = sub_bytes(lo | hi, 0x20202020u);
        if (i < 4u) {
            s0 = dot4(codes, xb, i, s0);
        } else {
            s1 = dot4(codes, xb, i, s1);
        }
    }
    return act_d(xb) * (f16_at(q.b + 208u) * float(i8_at(q.sc) * s0 + i8_at(q.sc + 1u) * s1));
}
