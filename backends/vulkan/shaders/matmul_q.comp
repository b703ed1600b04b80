#version 450
// out[j][m] = Σ_k x[j][k] · w[m][k] for ggml-block weights (Q4_0, Q4_1,
// Q8_0) against Q8 activations, in the CPU's order: per block, eight i32
// lanes of four products each (exact), each FMA'd into an f32 lane with
// d = dw · dx; then the lanes summed as ggml's hsum_float_8 (Q4_1 adds
// Σ m·s, accumulated with an FMA per block). One invocation per output.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint DTYPE = 0u; // 0: Q4_0, 1: Q4_1, 2: Q8_0
#include "common.glsl"

struct Q8Block { uint qs[8]; float d; float s; };

layout(std430, binding = 0) readonly buffer W { uint8_t w[]; };
layout(std430, binding = 1) readonly buffer Q { Q8Block q[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint w_offset;   // bytes of this chunk's first row in the bound range
    uint rows;       // weight rows in this chunk
    uint row_base;   // output column of the chunk's first row
    uint out_stride; // output columns (all rows of the matrix)
    uint blocks;     // blocks per row (k / 32)
    uint n;          // activation rows
    uint out_offset; // elements
} p;

uint block_bytes() {
    return DTYPE == 0u ? 18u : (DTYPE == 1u ? 20u : 34u);
}

float f16_at(uint at) {
    return half_to_float(uint(w[at]) | (uint(w[at + 1u]) << 8));
}

int weight_q(uint qs_at, uint e) {
    if (DTYPE == 2u) {
        int b = int(uint(w[qs_at + e]));
        return b >= 128 ? b - 256 : b;
    }
    uint byte = uint(w[qs_at + (e & 15u)]);
    int v = int(e < 16u ? (byte & 15u) : (byte >> 4));
    return DTYPE == 0u ? v - 8 : v;
}

void main() {
    uint m = gl_GlobalInvocationID.x;
    uint j = gl_GlobalInvocationID.y;
    if (m >= p.rows || j >= p.n) {
        return;
    }
    uint bb = block_bytes();
    uint row_at = p.w_offset + m * p.blocks * bb;
    float acc[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    precise float summs = 0.0;
    for (uint b = 0u; b < p.blocks; b++) {
        uint at = row_at + b * bb;
        Q8Block a = q[j * p.blocks + b];
        float dw = f16_at(at);
        uint qs_at = at + (DTYPE == 1u ? 4u : 2u);
        if (DTYPE == 1u) {
            summs = fused(f16_at(at + 2u), a.s, summs);
        }
        precise float d = dw * a.d;
        for (uint l = 0u; l < 8u; l++) {
            uint word = a.qs[l];
            int s = 0;
            for (uint e = 0u; e < 4u; e++) {
                int xq = int(word << (24u - 8u * e)) >> 24;
                s += weight_q(qs_at, 4u * l + e) * xq;
            }
            precise float r = fused(d, float(s), acc[l]);
            acc[l] = r;
        }
    }
    precise float result = hsum8(acc) + summs;
    o[p.out_offset + j * p.out_stride + p.row_base + m] = result;
}
