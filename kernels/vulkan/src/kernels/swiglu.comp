// SwiGLU of the gathered routes: g[i] = silu(g[i]) * u[i], silu(v) = v / (1 + e^-v), in place
// over `n` values (the CPU's formula, moe-model forward/ops.rs).
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) buffer Gate { float g[]; };
layout(std430, binding = 1) readonly buffer Up { float u[]; };

layout(push_constant) uniform Push {
    uint n;    // values
    uint base; // first value of this dispatch
} pc;

void main() {
    uint i = pc.base + gl_GlobalInvocationID.x;
    if (i < pc.n) {
        float v = g[i];
        g[i] = v / (1.0 + exp(-v)) * u[i];
    }
}
