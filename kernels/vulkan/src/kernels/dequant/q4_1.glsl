// Q4_1: blocks of 32 = f16 scale d, f16 minimum m, 16 bytes of 4-bit codes (as Q4_0).
// Value = d * code + m. A chunk is one block (20 bytes).
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 20u;
    float s = 0.0;
    float sx = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        uint q = byte_at(b + 4u + l);
        s += float(q & 15u) * x[xo + l] + float(q >> 4) * x[xo + 16u + l];
        sx += x[xo + l] + x[xo + 16u + l];
    }
    return f16_at(b) * s + f16_at(b + 2u) * sx;
}
