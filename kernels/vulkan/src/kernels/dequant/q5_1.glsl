// Q5_1: blocks of 32 = f16 scale d, f16 minimum m, 32 high bits, 16 bytes of low nibbles
// (as Q5_0). Value = d * (nibble | high << 4) + m. A chunk is one block (24 bytes).
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 24u;
    uint qh = byte_at(b + 4u) | (byte_at(b + 5u) << 8) | (byte_at(b + 6u) << 16)
        | (byte_at(b + 7u) << 24);
    float s = 0.0;
    float sx = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        uint q = byte_at(b + 8u + l);
        uint lo = (q & 15u) | (((qh >> l) & 1u) << 4);
        uint hi = (q >> 4) | (((qh >> (l + 16u)) & 1u) << 4);
        s += float(lo) * x[xo + l] + float(hi) * x[xo + 16u + l];
        sx += x[xo + l] + x[xo + 16u + l];
    }
    return f16_at(b) * s + f16_at(b + 2u) * sx;
}
