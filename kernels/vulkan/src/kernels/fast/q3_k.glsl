// Q3_K: super-blocks of 256 (110 bytes) = 32 bytes of high-bit masks, 64 bytes of 2-bit
// values, 12 bytes of packed 6-bit signed scales (one per 16 values, minus 32), f16 d. Code
// = q - (high bit ? 0 : 4), in -4..3: (q | high bit << 2) - 4 per byte. In half n, chunk s
// takes bits 2s of qs[32n + l], bit 4n + s of hmask[l], scales 8n + 2s and 8n + 2s + 1:
// act_d * (d * (sc0 * S0 + sc1 * S1)).
#include "../dequant/q3k_scale.glsl"

float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 110u;
    uint j = c & 7u;
    uint n = j >> 2;
    uint s = j & 3u;
    uint q = b + 32u + 32u * n;
    uint sh = 2u * s;
    uint hbit = 4u * n + s;
    int s0 = 0;
    int s1 = 0;
    for (uint k = 0u; k < 8u; k++) {
        uint lo = (word_at(q + 4u * k) >> sh) & 0x03030303u;
        uint hi = ((word_at(b + 4u * k) >> hbit) & 0x01010101u) << 2;
        uint codes = sub_bytes(lo | hi, 0x04040404u);
        if (k < 4u) {
            s0 = dot4(codes, xb, k, s0);
        } else {
            s1 = dot4(codes, xb, k, s1);
        }
    }
    uint i = 8u * n + 2u * s;
    return act_d(xb) * (f16_at(b + 108u) * float(q3k_scale(b, i) * s0 + q3k_scale(b, i + 1u) * s1));
}
