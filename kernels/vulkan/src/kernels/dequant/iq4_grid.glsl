// The non-linear 4-bit grid of IQ4_NL and IQ4_XS: a nibble q stands for IQ4_GRID[q] (the CPU
// kernel's `IQ4_NL_GRID`, ggml's `kvalues_iq4nl`). Spliced into iq4_nl.glsl and iq4_xs.glsl
// by build.rs.
const int IQ4_GRID[16] = int[16](
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113
);

// Σ GRID[nibble] * x over the 32 values packed in the 16 bytes at q: value l < 16 is the low
// nibble of byte l, value 16 + l its high nibble.
float iq4_grid_dot(uint q, uint xo) {
    float s = 0.0;
    for (uint l = 0u; l < 16u; l++) {
        uint v = byte_at(q + l);
        s += float(IQ4_GRID[v & 15u]) * x[xo + l];
        s += float(IQ4_GRID[v >> 4]) * x[xo + 16u + l];
    }
    return s;
}
