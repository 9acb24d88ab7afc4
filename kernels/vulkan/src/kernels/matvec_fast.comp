// Matrix-vector products of routed experts with int8 activations (the fast numeric mode):
// y[r, row] = W_e(r)[row, :] . x[r, :] for every route r of the dispatch, where W_e is one
// expert's matrix stored as raw GGUF blocks in `w` at byte offset `route_off[r]` and x[r, :]
// was quantized by quantize.comp (per 32 values: int8 codes, an f32 scale, 16-value code
// sums).
//
// The dispatch shape is matvec.comp's: one workgroup per (output row, route), its threads
// take 32-element chunks of the row in turn, then reduce in shared memory in a fixed order.
// Per chunk, the weight type's `idot32` (fast/<type>.glsl, spliced in at the `#include`
// line below by build.rs) unpacks the weight codes as int8, four to a word, takes their
// integer dot products with the activation codes (dotPacked4x8AccSatEXT: the sums stay far
// below the saturation bound, |sum| <= 32 * 127 * 127), folds the weight's integer
// sub-block scales and mins in as integers (every such combination stays below 2^24, so
// its conversion to f32 is exact), and only then applies the f32 scales:
// act_d * (d * float(integer) [- dmin * float(integer)]).
#version 450
#extension GL_EXT_integer_dot_product : require

layout(local_size_x = 32) in;

// Raw GGUF blocks of one chunk of an expert stack (not 4-byte aligned in general).
layout(std430, binding = 0) readonly buffer Weights { uint w[]; };
// Quantized activations, [routes, cols / 32] records of QBLOCK_WORDS words (quantize.comp).
layout(std430, binding = 1) readonly buffer Inputs { uint xq[]; };
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

shared float partial[32];

void main() {
    uint row = gl_WorkGroupID.x;
    uint r = pc.route_base + gl_WorkGroupID.y;
    uint tid = gl_LocalInvocationID.x;
    uint row_off = route_off[pc.off_base + r] + row * pc.row_bytes;
    uint chunks = pc.cols / 32u;
    uint x_base = r * chunks * QBLOCK_WORDS;
    float acc = 0.0;
    for (uint c = tid; c < chunks; c += 32u) {
        acc += idot32(row_off, c, x_base + c * QBLOCK_WORDS);
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
