// Q8_0: blocks of 32 = f16 scale d, 32 x int8 (a chunk is one block, 34 bytes). The codes
// are int8 already: S = Σ q·a over the 8 words; result act_d * (d * S).
float idot32(uint row_off, uint c, uint xb) {
    uint b = row_off + c * 34u;
    int s = 0;
    for (uint k = 0u; k < 8u; k++) {
        s = dot4(word_at(b + 2u + 4u * k), xb, k, s);
    }
    return act_d(xb) * (f16_at(b) * float(s));
}
