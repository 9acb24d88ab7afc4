// Q8_0: blocks of 32 = f16 scale d, 32 x int8. A chunk is one block (34 bytes).
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 34u;
    float s = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        s += float(i8_at(b + 2u + l)) * x[xo + l];
    }
    return f16_at(b) * s;
}
