// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (dequant/iq4_grid.glsl's IQ4_GRID) as int8
// bytes, four per word: entry q is byte q % 4 of IQ4_GRID_BYTES[q / 4].
const uint IQ4_GRID_BYTES[4] = uint[4](0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u);

// The grid entries of the 4 nibbles at bit `shift` of the bytes of `v`, packed as int8.
uint iq4_grid4(uint v, uint shift) {
    uint out_ = 0u;
    for (uint i = 0u; i < 4u; i++) {
        uint n = (v >> (8u * i + shift)) & 15u;
        out_ |= ((IQ4_GRID_BYTES[n >> 2] >> (8u * (n & 3u))) & 0xFFu) << (8u * i);
    }
    return out_;
}

// S = Σ GRID[nibble] · a over the 32 values packed in the 16 bytes at q: value l < 16 is the
// low nibble of byte l, value 16 + l its high nibble.
int iq4_grid_idot(uint q, uint xb) {
    int s = 0;
    for (uint k = 0u; k < 4u; k++) {
        uint v = word_at(q + 4u * k);
        s = dot4(iq4_grid4(v, 0u), xb, k, s);
        s = dot4(iq4_grid4(v, 4u), xb, 4u + k, s);
    }
    return s;
}
