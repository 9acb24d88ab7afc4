// A call's new KV cache rows rounded to the cache's element type in place (so the rows the
// host reads back and keeps as the cache's record are exactly those of the device copy) and
// stored into the device copy: kv[i] = round(kv[i]); dst[at + i] = kv[i], for i < n.
// Rounding as moe-kernels' KvType: bf16 and f16 round to nearest even, f16 saturating at
// +-65504 and keeping its subnormals; done on the bits, so no conversion instruction's
// rounding mode matters.
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) buffer Rows { float kv[]; };
layout(std430, binding = 1) buffer Cache { float dst[]; };

layout(push_constant) uniform Push {
    uint n;    // values
    uint at;   // where in dst the first value goes
    uint kind; // 0 f32 (unchanged), 1 bf16, 2 f16
    uint base; // first value of this dispatch
} pc;

float round_bf16(float x) {
    uint b = floatBitsToUint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return x; // NaN stays NaN
    }
    b += 0x7fffu + ((b >> 16) & 1u);
    return uintBitsToFloat(b & 0xffff0000u);
}

float round_f16(float x) {
    uint b = floatBitsToUint(x);
    uint sign = b & 0x80000000u;
    uint a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return x; // NaN
    }
    if (a >= 0x477fe000u) {
        return uintBitsToFloat(sign | 0x477fe000u); // saturate at 65504
    }
    if (a < 0x38800000u) {
        // Below 2^-14: an f16 subnormal, a multiple of 2^-24 (the scalings are exact).
        float q = roundEven(uintBitsToFloat(a) * 16777216.0);
        return uintBitsToFloat(sign | floatBitsToUint(q * (1.0 / 16777216.0)));
    }
    a += 0xfffu + ((a >> 13) & 1u);
    return uintBitsToFloat(sign | (a & 0xffffe000u));
}

void main() {
    uint i = pc.base + gl_GlobalInvocationID.x;
    if (i < pc.n) {
        float v = kv[i];
        if (pc.kind == 1u) {
            v = round_bf16(v);
        } else if (pc.kind == 2u) {
            v = round_f16(v);
        }
        kv[i] = v;
        dst[pc.at + i] = v;
    }
}
