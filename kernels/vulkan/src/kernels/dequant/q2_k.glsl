// Q2_K: super-blocks of 256 (84 bytes) = 16 scale bytes (low nibble scale, high nibble min,
// one per 16 values), 64 bytes of 2-bit values, f16 d, f16 dmin. Value = d * scale * q -
// dmin * min. The block is two halves of 128; in half n, chunk s of 32 takes bits 2s of
// qs[32n + l], scale byte 8n + 2s + l / 16.
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + (c >> 3) * 84u;
    uint j = c & 7u;
    uint n = j >> 2;
    uint s = j & 3u;
    uint q = b + 16u + 32u * n;
    uint shift = 2u * s;
    float sq0 = 0.0;
    float sq1 = 0.0;
    float sx0 = 0.0;
    float sx1 = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        float x0 = x[xo + l];
        float x1 = x[xo + 16u + l];
        sq0 += float((byte_at(q + l) >> shift) & 3u) * x0;
        sq1 += float((byte_at(q + 16u + l) >> shift) & 3u) * x1;
        sx0 += x0;
        sx1 += x1;
    }
    uint sc0 = byte_at(b + 8u * n + 2u * s);
    uint sc1 = byte_at(b + 8u * n + 2u * s + 1u);
    float d = f16_at(b + 80u);
    float dmin = f16_at(b + 82u);
    return d * (float(sc0 & 15u) * sq0 + float(sc1 & 15u) * sq1)
        - dmin * (float(sc0 >> 4) * sx0 + float(sc1 >> 4) * sx1);
}
