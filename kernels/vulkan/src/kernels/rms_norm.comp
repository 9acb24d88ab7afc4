// RMS norm of rows in place: x[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)), rows of `width`
// values `stride` apart (the CPU's formula, moe-model forward/ops.rs; it sums the squares in
// f64, this shader in f32 in a fixed tree order, so results agree to rounding). One
// workgroup per row.
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) buffer Rows { float x[]; };
layout(std430, binding = 1) readonly buffer Gain { float w[]; };

layout(push_constant) uniform Push {
    uint width;    // values normalized per row
    uint stride;   // values from one row's start to the next
    uint eps_bits; // eps as f32 bits
} pc;

shared float partial[64];

void main() {
    uint base = gl_WorkGroupID.x * pc.stride;
    uint tid = gl_LocalInvocationID.x;
    float ss = 0.0;
    for (uint i = tid; i < pc.width; i += 64u) {
        float v = x[base + i];
        ss += v * v;
    }
    partial[tid] = ss;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        barrier();
    }
    float inv = 1.0 / sqrt(partial[0] / float(pc.width) + uintBitsToFloat(pc.eps_bits));
    for (uint i = tid; i < pc.width; i += 64u) {
        x[base + i] = w[i] * (x[base + i] * inv);
    }
}
