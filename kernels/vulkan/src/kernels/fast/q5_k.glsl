// Q5_K: super-blocks of 256 (176 bytes) = f16 d, f16 dmin, 12 bytes of 6-bit (scale, min)
// pairs (as Q4_K), 32 bytes of high bits (bit j of byte l: value l of chunk j), 128 bytes of
// low nibbles (as Q4_K). Codes 0..31; as Q4_K: act_d * (d * (scale * S) - dmin * (min * A)).
#include "../dequant/k4_scale_min.glsl"

float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 176u;
    uint j = c & 7u;
    uvec2 sm = k4_scale_min(b, j);
    uint q = b + 48u + 32u * (j >> 1);
    uint shift = (j & 1u) * 4u;
    int s = 0;
    for (uint k = 0u; k < 8u; k++) {
        uint lo = (word_at(q + 4u * k) >> shift) & 0x0F0F0F0Fu;
        uint hi = ((word_at(b + 16u + 4u * k) >> j) & 0x01010101u) << 4;
        s = dot4(lo | hi, xb, k, s);
    }
    int a = act_sum0(xb) + act_sum1(xb);
    return act_d(xb) * (f16_at(b) * float(int(sm.x) * s) - f16_at(b + 2u) * float(int(sm.y) * a));
}
