// Activation quantization for the fast numeric mode: every 32-value block of the f32 rows in
// `x` becomes one record of QBLOCK_WORDS (10) words in `q`:
//
//   words 0..8  the 32 codes as int8, 4 per word (value 4k + i in byte i of word k);
//   word 8      the block scale d as f32 bits;
//   word 9      the sums of codes 0..16 (low 16 bits) and 16..32 (high 16 bits), signed
//               (|sum| <= 16 * 127 = 2032); their total is the block's code sum.
//
// With amax the block's largest |x|: iscale = 127 / amax, codes round_half_even(x * iscale)
// clamped to [-127, 127], d = 1 / iscale (the CPU's quantizer, moe-kernels matmul/q8.rs, at
// 32 values per block). amax = 0, or so small that 127 / amax overflows, gives d = 0 and
// zero codes; a NaN or infinity in the block gives d = NaN (and zero codes), so the products
// that read it are NaN, as the exact path's would be.
//
// One invocation per block; blocks never straddle rows (columns are a multiple of 32), so
// block i is x[32i .. 32i + 32] whatever the row length.
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Inputs { float x[]; };
layout(std430, binding = 1) writeonly buffer Quantized { uint q[]; };

layout(push_constant) uniform Push {
    uint blocks; // 32-value blocks in x
    uint base;   // first block of this dispatch
} pc;

void main() {
    uint blk = pc.base + gl_GlobalInvocationID.x;
    if (blk >= pc.blocks) {
        return;
    }
    uint xo = 32u * blk;
    uint qo = 10u * blk;
    float amax = 0.0;
    bool finite = true;
    for (uint l = 0u; l < 32u; l++) {
        float v = x[xo + l];
        finite = finite && !isnan(v) && !isinf(v);
        amax = max(amax, abs(v));
    }
    float iscale = amax == 0.0 ? 0.0 : 127.0 / amax;
    if (!finite || isinf(iscale) || iscale == 0.0) {
        for (uint k = 0u; k < 8u; k++) {
            q[qo + k] = 0u;
        }
        q[qo + 8u] = finite ? 0u : 0x7FC00000u;
        q[qo + 9u] = 0u;
        return;
    }
    int s0 = 0;
    int s1 = 0;
    for (uint k = 0u; k < 8u; k++) {
        uint word = 0u;
        for (uint i = 0u; i < 4u; i++) {
            int c = clamp(int(roundEven(x[xo + 4u * k + i] * iscale)), -127, 127);
            word |= (uint(c) & 0xFFu) << (8u * i);
            if (k < 4u) {
                s0 += c;
            } else {
                s1 += c;
            }
        }
        q[qo + k] = word;
    }
    q[qo + 8u] = floatBitsToUint(1.0 / iscale);
    q[qo + 9u] = (uint(s0) & 0xFFFFu) | (uint(s1) << 16);
}
