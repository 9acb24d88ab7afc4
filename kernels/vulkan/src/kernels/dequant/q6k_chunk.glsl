// Where chunk c (32 values) of a Q6_K row starting at byte row_off lies: in half h, quarter
// k of its super-block b, nibble k / 2 of ql[64h + 32(k & 1) + l], bits 2k of
// qh[32h + l], scales 8h + 2k and 8h + 2k + 1, f16 d at b + 208. Spliced into
// dequant/q6_k.glsl and fast/q6_k.glsl.
struct Q6kChunk {
    uint b;      // super-block
    uint ql;     // low nibbles
    uint lshift; // which nibble
    uint qh;     // high 2-bit pairs
    uint hshift; // which pair
    uint sc;     // the chunk's two int8 scales
};

Q6kChunk q6k_chunk(uint row_off, uint c) {
    uint b = row_off + (c >> 3) * 210u;
    uint j = c & 7u;
    uint h = j >> 2;
    uint k = j & 3u;
    return Q6kChunk(b, b + 64u * h + 32u * (k & 1u), (k >> 1) * 4u, b + 128u + 32u * h,
                    2u * k, b + 192u + 8u * h + 2u * k);
}
