// Q6_K: super-blocks of 256 (210 bytes) = 128 bytes of low nibbles (ql), 64 bytes of high
// 2-bit pairs (qh), 16 int8 scales (one per 16 values), f16 d. Code = q - 32, in -32..31. In
// half h, quarter k takes nibble k / 2 of ql[64h + 32(k & 1) + l] and bits 2k of
// qh[32h + l], scales 8h + 2k and 8h + 2k + 1: act_d * (d * (sc0 * S0 + sc1 * S1)).
float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + (c >> 3) * 210u;
    uint j = c & 7u;
    uint h = j >> 2;
    uint k = j & 3u;
    uint ql = b + 64u * h + 32u * (k & 1u);
    uint lshift = (k >> 1) * 4u;
    uint qh = b + 128u + 32u * h;
    uint hshift = 2u * k;
    int s0 = 0;
    int s1 = 0;
    for (uint i = 0u; i < 8u; i++) {
        uint lo = (word_at(ql + 4u * i) >> lshift) & 0x0F0F0F0Fu;
        uint hi = ((word_at(qh + 4u * i) >> hshift) & 0x03030303u) << 4;
        uint codes = sub_bytes(lo | hi, 0x20202020u);
        if (i < 4u) {
            s0 = dot4(codes, xb, i, s0);
        } else {
            s1 = dot4(codes, xb, i, s1);
        }
    }
    uint sc = b + 192u + 8u * h + 2u * k;
    return act_d(xb) * (f16_at(b + 208u) * float(i8_at(sc) * s0 + i8_at(sc + 1u) * s1));
}
