// F32: plain little-endian floats, 128 bytes per chunk.
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 128u;
    float s = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        uint o = b + 4u * l;
        uint bits = byte_at(o) | (byte_at(o + 1u) << 8) | (byte_at(o + 2u) << 16) | (byte_at(o + 3u) << 24);
        s += uintBitsToFloat(bits) * x[xo + l];
    }
    return s;
}
