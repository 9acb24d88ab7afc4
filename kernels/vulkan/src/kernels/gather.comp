// A strided copy of rows: for a < n_a, b < n_b, v < width:
// dst[a * dst_a + b * dst_b + v] = src[a * src_a + b * src_b + v]. Attention uses it to move
// between token-major [t, heads, .] and head-major [heads, t, .] layouts.
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) writeonly buffer Dst { float dst[]; };

layout(push_constant) uniform Push {
    uint n_a;
    uint n_b;
    uint width;
    uint src_a;
    uint src_b;
    uint dst_a;
    uint dst_b;
    uint base; // first value of this dispatch
} pc;

void main() {
    uint g = pc.base + gl_GlobalInvocationID.x;
    if (g >= pc.n_a * pc.n_b * pc.width) {
        return;
    }
    uint v = g % pc.width;
    uint ab = g / pc.width;
    uint b = ab % pc.n_b;
    uint a = ab / pc.n_b;
    dst[a * pc.dst_a + b * pc.dst_b + v] = src[a * pc.src_a + b * pc.src_b + v];
}
