// Q5_0: blocks of 32 = f16 scale d, 32 high bits (u32, bit l for value l), 16 bytes of low
// nibbles (as Q4_0). Value = d * ((nibble | high << 4) - 16). A chunk is one block (22 bytes).
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 22u;
    uint qh = byte_at(b + 2u) | (byte_at(b + 3u) << 8) | (byte_at(b + 4u) << 16)
        | (byte_at(b + 5u) << 24);
    float s = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        uint q = byte_at(b + 6u + l);
        int lo = int((q & 15u) | (((qh >> l) & 1u) << 4)) - 16;
        int hi = int((q >> 4) | (((qh >> (l + 16u)) & 1u) << 4)) - 16;
        s += float(lo) * x[xo + l] + float(hi) * x[xo + 16u + l];
    }
    return f16_at(b) * s;
}
