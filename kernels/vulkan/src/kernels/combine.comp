// The weighted add: out[t, :] += w_r * y[r, :] for the routes r of token t, in the order
// `tok_routes` lists them (ascending expert, the CPU's summation order). One invocation per
// output value, so no two invocations write the same place.
#version 450

layout(local_size_x = 64) in;

// Down-projection outputs, [routes, dim].
layout(std430, binding = 0) readonly buffer Expert { float y[]; };
// Route weights, [routes].
layout(std430, binding = 1) readonly buffer Weights { float route_w[]; };
// tok_start[t] .. tok_start[t + 1]: token t's entries in tok_routes.
layout(std430, binding = 2) readonly buffer TokStart { uint tok_start[]; };
// Route indices, grouped by token.
layout(std430, binding = 3) readonly buffer TokRoutes { uint tok_routes[]; };
// The caller's accumulator, [tokens, dim].
layout(std430, binding = 4) buffer Out { float o[]; };

layout(push_constant) uniform Push {
    uint tokens;
    uint dim;
    uint base; // first output value of this dispatch
} pc;

void main() {
    uint i = pc.base + gl_GlobalInvocationID.x;
    if (i >= pc.tokens * pc.dim) {
        return;
    }
    uint t = i / pc.dim;
    uint d = i - t * pc.dim;
    float acc = o[i];
    for (uint j = tok_start[t]; j < tok_start[t + 1u]; j++) {
        uint r = tok_routes[j];
        acc += route_w[r] * y[r * pc.dim + d];
    }
    o[i] = acc;
}
