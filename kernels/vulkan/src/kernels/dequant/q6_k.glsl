// Q6_K: super-blocks of 256 (210 bytes) = 128 bytes of low nibbles (ql), 64 bytes of high
// 2-bit pairs (qh), 16 int8 scales (one per 16 values), f16 d. Value = d * scale * (q - 32).
// The block is two halves of 128; in half h, quarter k (a chunk of 32) takes nibble k / 2 of
// ql[64h + 32(k & 1) + l] and bits 2k of qh[32h + l], scale 8h + 2k + l / 16.
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 210u;
    uint j = c & 7u;
    uint h = j >> 2;
    uint k = j & 3u;
    uint ql = b + 64u * h + 32u * (k & 1u);
    uint lshift = (k >> 1) * 4u;
    uint qh = b + 128u + 32u * h;
    uint hshift = 2u * k;
    float s0 = 0.0;
    float s1 = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        uint v = ((byte_at(ql + l) >> lshift) & 15u) | (((byte_at(qh + l) >> hshift) & 3u) << 4);
        float p = float(int(v) - 32) * x[xo + l];
        if (l < 16u) {
            s0 += p;
        } else {
            s1 += p;
        }
    }
    uint sc = b + 192u + 8u * h + 2u * k;
    return f16_at(b + 208u) * (float(i8_at(sc)) * s0 + float(i8_at(sc + 1u)) * s1);
}
