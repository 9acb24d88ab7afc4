// Q2_K: super-blocks of 256 (84 bytes) = 16 scale bytes (low nibble scale, high nibble min,
// one per 16 values), 64 bytes of 2-bit values, f16 d, f16 dmin. In half n, chunk s takes
// bits 2s of qs[32n + l] and scale bytes 8n + 2s (values 0..16) and 8n + 2s + 1 (16..32).
// With S0, S1 and A0, A1 the code dot products and activation code sums of the two 16s:
// act_d * (d * (sc0 * S0 + sc1 * S1) - dmin * (m0 * A0 + m1 * A1)).
float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 84u;
    uint j = c & 7u;
    uint n = j >> 2;
    uint sh = 2u * (j & 3u);
    uint q = b + 16u + 32u * n;
    int s0 = 0;
    int s1 = 0;
    for (uint k = 0u; k < 4u; k++) {
        s0 = dot4((word_at(q + 4u * k) >> sh) & 0x03030303u, xb, k, s0);
        s1 = dot4((word_at(q + 16u + 4u * k) >> sh) & 0x03030303u, xb, 4u + k, s1);
    }
    uint sc0 = byte_at(b + 8u * n + (j & 3u) * 2u);
    uint sc1 = byte_at(b + 8u * n + (j & 3u) * 2u + 1u);
    int sq = int(sc0 & 15u) * s0 + int(sc1 & 15u) * s1;
    int sm = int(sc0 >> 4) * act_sum0(xb) + int(sc1 >> 4) * act_sum1(xb);
    return act_d(xb) * (f16_at(b + 80u) * float(sq) - f16_at(b + 82u) * float(sm));
}
