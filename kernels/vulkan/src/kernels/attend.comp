// MLA attention proper in the absorbed form (moe-model forward/attention.rs, exact mode's
// two-pass softmax): for query row k = head * t + i (new token i at position pos0 + i),
//   score[j] = (q_abs[k] . c[j] + q_rot[i, head] . k_rot[j]) * scale   for j <= pos0 + i,
//   ctx[k]   = sum_j softmax(score)[j] * c[j],
// over the sequence's cache rows [c | k_rot] (f32, lkv + dr values a position). One
// workgroup per row: its threads score positions in turn into the row's slice of `scores`,
// reduce max and sum in shared memory, then each thread sums the context of its latent
// values over every position (the CPU's order per value: ascending position).
#version 450

layout(local_size_x = 64) in;

// Absorbed queries, head-major [heads * t, lkv].
layout(std430, binding = 0) readonly buffer QAbs { float q_abs[]; };
// Queries [t, heads, qk], the rope part (from dn) already rotated.
layout(std430, binding = 1) readonly buffer Q { float q[]; };
// The cache rows [positions, lkv + dr].
layout(std430, binding = 2) readonly buffer Cache { float kv[]; };
// Scratch [rows of this dispatch, stride].
layout(std430, binding = 3) buffer Scores { float sc[]; };
// Context, head-major [heads * t, lkv].
layout(std430, binding = 4) writeonly buffer Ctx { float ctx[]; };

layout(push_constant) uniform Push {
    uint t;          // new tokens
    uint heads;
    uint lkv;        // latent width
    uint dr;         // rope width
    uint qk;         // query values per head (dn + dr)
    uint dn;         // where a head's rope part starts
    uint pos0;       // position of new token 0
    uint scale_bits; // softmax scale as f32 bits
    uint stride;     // values per row in `scores`
    uint row_base;   // first row of this dispatch
} pc;

shared float red[64];

void main() {
    uint k = pc.row_base + gl_WorkGroupID.x;
    uint head = k / pc.t;
    uint i = k - head * pc.t;
    uint n = pc.pos0 + i + 1u;
    uint tid = gl_LocalInvocationID.x;
    uint sb = gl_WorkGroupID.x * pc.stride;
    uint qa = k * pc.lkv;
    uint qr = (i * pc.heads + head) * pc.qk + pc.dn;
    uint width = pc.lkv + pc.dr;
    float scale = uintBitsToFloat(pc.scale_bits);

    float m = uintBitsToFloat(0xFF800000u); // -inf
    for (uint j = tid; j < n; j += 64u) {
        uint r = j * width;
        float a = 0.0;
        for (uint v = 0u; v < pc.lkv; v++) {
            a += q_abs[qa + v] * kv[r + v];
        }
        float b = 0.0;
        for (uint v = 0u; v < pc.dr; v++) {
            b += q[qr + v] * kv[r + pc.lkv + v];
        }
        float s = (a + b) * scale;
        sc[sb + j] = s;
        m = max(m, s);
    }
    red[tid] = m;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s) {
            red[tid] = max(red[tid], red[tid + s]);
        }
        barrier();
    }
    float mx = red[0];
    barrier();
    float sum = 0.0;
    for (uint j = tid; j < n; j += 64u) {
        float e = exp(sc[sb + j] - mx);
        sc[sb + j] = e;
        sum += e;
    }
    red[tid] = sum;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        barrier();
    }
    float inv = 1.0 / red[0];
    memoryBarrierBuffer();
    barrier();
    for (uint v = tid; v < pc.lkv; v += 64u) {
        float acc = 0.0;
        for (uint j = 0u; j < n; j++) {
            acc += (sc[sb + j] * inv) * kv[j * width + v];
        }
        ctx[k * pc.lkv + v] = acc;
    }
}
