// Q4_0: blocks of 32 = f16 scale d, 16 bytes of 4-bit codes (value l < 16 in the low nibble
// of byte l, value 16 + l in its high nibble). Value = d * (code - 8). A chunk is one block
// (18 bytes).
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 18u;
    float s = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        uint q = byte_at(b + 2u + l);
        s += float(int(q & 15u) - 8) * x[xo + l] + float(int(q >> 4) - 8) * x[xo + 16u + l];
    }
    return f16_at(b) * s;
}
