// Matrix-vector products of routed experts with int8 activations (the fast numeric mode):
// y[p, row] = W_e(p)[row, :] . x[in_row(p), :] for every route p of the dispatch, where W_e
// is one expert's matrix stored as raw GGUF blocks in `w` and the activation rows were
// quantized by quantize.comp (per 32 values: int8 codes, an f32 scale, 16-value code sums),
// over tiles of routes of one expert (tile_io.glsl, tile_main.glsl).
//
// Per chunk, the weight type's `idot32` (fast/<type>.glsl, spliced in at the `#include`
// line below by build.rs) unpacks the weight codes as int8, four to a word, takes their
// integer dot products with the activation codes (dotPacked4x8AccSatEXT: the sums stay far
// below the saturation bound, |sum| <= 32 * 127 * 127), folds the weight's integer
// sub-block scales and mins in as integers (every such combination stays below 2^24, so
// its conversion to f32 is exact), and only then applies the f32 scales:
// act_d * (d * float(integer) [- dmin * float(integer)]).
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_integer_dot_product : require

layout(local_size_x = 32) in;

// Raw GGUF blocks of one chunk of an expert stack (not 4-byte aligned in general).
layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
// Quantized activations, [input rows, cols / 32] records of QBLOCK_WORDS words (quantize.comp).
layout(std430, binding = 1) readonly buffer Inputs { uint xq[]; };
// Outputs, [routes, rows].
layout(std430, binding = 2) writeonly buffer Outputs { float y[]; };
#include "tile_io.glsl"

// Words of one quantized 32-value activation block (see quantize.comp).
const uint QBLOCK_WORDS = 10u;

uint byte_at(uint off) {
    return (w[off >> 2] >> ((off & 3u) * 8u)) & 0xFFu;
}

int i8_at(uint off) {
    return int(byte_at(off) << 24) >> 24;
}

float f16_at(uint off) {
    return unpackHalf2x16(byte_at(off) | (byte_at(off + 1u) << 8)).x;
}

// The 4 bytes at byte offset `off` (any alignment), byte i in bits 8i.
uint word_at(uint off) {
    uint i = off >> 2;
    uint s = (off & 3u) * 8u;
    if (s == 0u) {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// The activation block at record `xb`: its scale, and its code sums over values 0..16 and
// 16..32.
float act_d(uint xb) {
    return uintBitsToFloat(xq[xb + 8u]);
}

int act_sum0(uint xb) {
    return int(xq[xb + 9u] << 16) >> 16;
}

int act_sum1(uint xb) {
    return int(xq[xb + 9u]) >> 16;
}

// acc + the dot product of 4 weight codes (int8, packed) with activation codes 4k..4k+4.
int dot4(uint codes, uint xb, uint k, int acc) {
    return dotPacked4x8AccSatEXT(int(codes), int(xq[xb + k]), acc);
}

// Per-byte v - off for bytes v < 128 and off <= 128, as int8 (no borrow between bytes).
uint sub_bytes(uint v, uint off) {
    return ((v | 0x80808080u) - off) ^ 0x80808080u;
}

#include "WEIGHT_TYPE"

float chunk_dot(uint row_off, uint c, uint in_row) {
    return idot32(row_off, c, (in_row * (pc.cols / 32u) + c) * QBLOCK_WORDS);
}

#include "tile_main.glsl"
