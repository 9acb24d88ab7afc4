// F16: IEEE halves, 64 bytes per chunk.
float dot32(uint row_off, uint c, uint xo) {
    uint b = row_off + c * 64u;
    float s = 0.0;
    for (uint l = 0u; l < 32u; l++) {
        s += f16_at(b + 2u * l) * x[xo + l];
    }
    return s;
}
