// One workgroup per (output row, tile). Its 32 threads take 32-value chunks of the row in
// turn (a chunk is a Q8_0 or IQ4_NL block, or a K-quant or IQ4_XS sub-block) and, per
// chunk, the dot product with every route of the tile, so a tile's routes read the expert's
// row from memory once; then one reduction per route in shared memory in a fixed order (the
// same order whatever the tile's size, so a route's result does not depend on which other
// routes share its tile). `chunk_dot(row_off, c, in_row)` is the including shader's.

shared float partial[ROUTE_TILE * 32u];

void main() {
    uint row = gl_WorkGroupID.x;
    uint tile = pc.tile_base + gl_WorkGroupID.y;
    uint first = meta[pc.tiles_at + tile];
    uint n = meta[pc.tiles_at + tile + 1u] - first;
    uint tid = gl_LocalInvocationID.x;
    uint row_off = pc.w_base + meta[pc.off_base + first] + row * pc.row_bytes;
    uint in_rows[ROUTE_TILE];
    float acc[ROUTE_TILE];
    [[unroll]] for (uint t = 0u; t < ROUTE_TILE; t++) {
        in_rows[t] = t < n ? meta[pc.in_base + first + t] : 0u;
        acc[t] = 0.0;
    }
    for (uint c = tid; c < pc.cols / 32u; c += 32u) {
        [[unroll]] for (uint t = 0u; t < ROUTE_TILE; t++) {
            if (t < n) {
                acc[t] += chunk_dot(row_off, c, in_rows[t]);
            }
        }
    }
    [[unroll]] for (uint t = 0u; t < ROUTE_TILE; t++) {
        if (t < n) {
            partial[t * 32u + tid] = acc[t];
        }
    }
    barrier();
    for (uint s = 16u; s > 0u; s >>= 1) {
        if (tid < s) {
            [[unroll]] for (uint t = 0u; t < ROUTE_TILE; t++) {
                if (t < n) {
                    partial[t * 32u + tid] += partial[t * 32u + tid + s];
                }
            }
        }
        barrier();
    }
    if (tid < n) {
        y[(first + tid) * pc.rows + row] = partial[tid * 32u];
    }
}
