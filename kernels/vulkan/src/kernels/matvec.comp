// Matrix-vector products of routed experts with f32 activations (the exact-check path):
// y[r, row] = W_e(r)[row, :] . x[r, :] for every route r of the dispatch, where W_e is one
// expert's matrix stored as raw GGUF blocks in `w` at byte offset `route_off[r]`.
//
// One workgroup per (output row, route); its threads take 32-element chunks of the row in
// turn (a chunk is a Q8_0 or IQ4_NL block, or a K-quant or IQ4_XS sub-block), then reduce in
// shared memory in a fixed order. The weight type's `dot32` comes from dequant/<type>.glsl,
// spliced in at the `#include` line below by build.rs.
#version 450

layout(local_size_x = 32) in;

// Raw GGUF blocks of one chunk of an expert stack, read a byte at a time (blocks of 18, 34,
// 110 or 210 bytes are not 4-byte aligned).
layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
// Gathered activations, [routes, cols].
layout(std430, binding = 1) readonly buffer Inputs { float x[]; };
// Outputs, [routes, rows].
layout(std430, binding = 2) writeonly buffer Outputs { float y[]; };
// Per route: byte offset of its expert's matrix in `w` (at off_base + route).
layout(std430, binding = 3) readonly buffer RouteOffsets { uint route_off[]; };

layout(push_constant) uniform Push {
    uint rows;       // output features of one expert matrix
    uint cols;       // input features (a multiple of 32)
    uint row_bytes;  // bytes of one row of blocks
    uint route_base; // first route of this dispatch
    uint off_base;   // where this matrix's offsets start in route_off
} pc;

uint byte_at(uint off) {
    return (w[off >> 2] >> ((off & 3u) * 8u)) & 0xFFu;
}

int i8_at(uint off) {
    return int(byte_at(off) << 24) >> 24;
}

float f16_at(uint off) {
    return unpackHalf2x16(byte_at(off) | (byte_at(off + 1u) << 8)).x;
}

#include "WEIGHT_TYPE"

shared float partial[32];

void main() {
    uint row = gl_WorkGroupID.x;
    uint r = pc.route_base + gl_WorkGroupID.y;
    uint tid = gl_LocalInvocationID.x;
    uint row_off = route_off[pc.off_base + r] + row * pc.row_bytes;
    uint x_base = r * pc.cols;
    float acc = 0.0;
    for (uint c = tid; c < pc.cols / 32u; c += 32u) {
        acc += dot32(row_off, c, x_base + c * 32u);
    }
    partial[tid] = acc;
    barrier();
    for (uint s = 16u; s > 0u; s >>= 1) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        barrier();
    }
    if (tid == 0u) {
        y[r * pc.rows + row] = partial[0];
    }
}
