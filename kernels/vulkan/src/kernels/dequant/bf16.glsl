// BF16: the top 16 bits of an f32, 64 bytes per chunk.
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 64u;
    float s = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        uint o = b + 2u * l;
        uint bits = (byte_at(o) | (byte_at(o + 1u) << 8)) << 16;
        s += uintBitsToFloat(bits) * x[xo + l];
    }
    return s;
}
