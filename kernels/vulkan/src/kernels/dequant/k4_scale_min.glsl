// The 6-bit (scale, min) pair of sub-block j (0..8) of a Q4_K/Q5_K super-block at byte b: the
// 12 bytes at b + 4 hold scales 0..4 and mins 0..4 in their low 6 bits (bytes 0..4 and
// 4..8); scales and mins 4..8 are the low and high nibbles of bytes 8..12 with the top 2 bits
// of bytes 0..4 (scales) and 4..8 (mins) above them.
uvec2 k4_scale_min(uint b, uint j) {
    if (j < 4u) {
        return uvec2(byte_at(b + 4u + j) & 63u, byte_at(b + 8u + j) & 63u);
    }
    return uvec2((byte_at(b + 8u + j) & 15u) | ((byte_at(b + j) >> 6) << 4),
                 (byte_at(b + 8u + j) >> 4) | ((byte_at(b + 4u + j) >> 6) << 4));
}
