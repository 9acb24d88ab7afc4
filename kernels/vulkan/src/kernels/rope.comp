// Rotary embedding of the query heads' rope parts in place, adjacent pairs (moe-model
// rope.rs): for row r (token r / heads), pair f at x[r * stride + offset + 2f ..]:
// (x0, x1) -> (x0 c - x1 s, x0 s + x1 c), with (c, s) = cs[token][f] from the host's table
// (the host computes the angles as the CPU does; GPU sin and cos of large angles are coarse).
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) buffer Rows { float x[]; };
// [tokens, pairs, 2]: cos, sin.
layout(std430, binding = 1) readonly buffer Table { float cs[]; };

layout(push_constant) uniform Push {
    uint rows;   // rows to rotate (tokens x heads)
    uint heads;  // rows per token
    uint stride; // values from one row's start to the next
    uint offset; // where the rope part starts in a row
    uint pairs;  // pairs per row
    uint base;   // first (row, pair) of this dispatch
} pc;

void main() {
    uint g = pc.base + gl_GlobalInvocationID.x;
    if (g >= pc.rows * pc.pairs) {
        return;
    }
    uint r = g / pc.pairs;
    uint f = g - r * pc.pairs;
    uint token = r / pc.heads;
    float c = cs[(token * pc.pairs + f) * 2u];
    float s = cs[(token * pc.pairs + f) * 2u + 1u];
    uint at = r * pc.stride + pc.offset + 2u * f;
    float x0 = x[at];
    float x1 = x[at + 1u];
    x[at] = x0 * c - x1 * s;
    x[at + 1u] = x0 * s + x1 * c;
}
