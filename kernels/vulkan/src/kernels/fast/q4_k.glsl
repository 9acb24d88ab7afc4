// Q4_K: super-blocks of 256 (144 bytes) = f16 d, f16 dmin, 12 bytes of 6-bit (scale, min)
// pairs, 128 bytes of 4-bit values; chunk j of a super-block takes the low (even j) or high
// (odd j) nibbles of qs[32 (j / 2) ..]. Value = d * scale * q - dmin * min, so with S = Σ q·a
// and A the activation codes' sum: act_d * (d * (scale * S) - dmin * (min * A)).
#include "../dequant/k4_scale_min.glsl"

float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 144u;
    uint j = c & 7u;
    uvec2 sm = k4_scale_min(b, j);
    uint q = b + 16u + 32u * (j >> 1);
    uint shift = (j & 1u) * 4u;
    int s = 0;
    for (uint k = 0u; k < 8u; k++) {
        s = dot4((word_at(q + 4u * k) >> shift) & 0x0F0F0F0Fu, xb, k, s);
    }
    int a = act_sum0(xb) + act_sum1(xb);
    return act_d(xb) * (f16_at(b) * float(int(sm.x) * s) - f16_at(b + 2u) * float(int(sm.y) * a));
}
