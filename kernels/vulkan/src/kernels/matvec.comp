// Matrix-vector products of routed experts with f32 activations (the exact-check path):
// y[p, row] = W_e(p)[row, :] . x[in_row(p), :] for every route p of the dispatch, where W_e
// is one expert's matrix stored as raw GGUF blocks in `w`, over tiles of routes of one
// expert (tile_io.glsl, tile_main.glsl). The weight type's `dot32` comes from
// dequant/<type>.glsl, which build.rs splices in at the weight-type include line below.
#version 450
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 32) in;

// Raw GGUF blocks of one chunk of an expert stack, read a byte at a time (blocks of 18, 34,
// 110 or 210 bytes are not 4-byte aligned).
layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
// Activations, [input rows, cols].
layout(std430, binding = 1) readonly buffer Inputs { float x[]; };
// Outputs, [routes, rows].
layout(std430, binding = 2) writeonly buffer Outputs { float y[]; };

#include "tile_io.glsl"

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

float chunk_dot(uint row_off, uint c, uint in_row) {
    return dot32(row_off, c, in_row * pc.cols + c * 32u);
}

#include "tile_main.glsl"
