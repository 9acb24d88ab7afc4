// Scale i (0..16) of a Q3_K super-block at byte b: 6 bits, the low 4 from the 8 bytes at
// b + 96 (low nibbles for i < 8, high nibbles for i >= 8), the high 2 from bits 2(i / 4) of
// byte b + 104 + i % 4; stored plus 32. Spliced into dequant/q3_k.glsl and fast/q3_k.glsl.
int q3k_scale(uint b, uint i) {
    uint lo = i < 8u ? (byte_at(b + 96u + i) & 15u) : (byte_at(b + 88u + i) >> 4);
    uint hi = (byte_at(b + 104u + (i & 3u)) >> (2u * (i >> 2))) & 3u;
    return int(lo | (hi << 4)) - 32;
}
