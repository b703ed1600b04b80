#version 450
// out[j][m] = Σ_k x[j][k] · w[m][k] for f16 weights and f32 activations,
// in the CPU's order (llamafile's 16-lane tinyBLAS): element k is FMA'd
// into lane k % 16, the lanes summed in _mm512_reduce_add_ps order.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_16bit_storage : require
layout(local_size_x_id = 0) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer W { uint16_t w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint w_offset;   // elements
    uint rows;
    uint row_base;
    uint out_stride;
    uint k;
    uint n;
    uint out_offset;
    uint x_offset;
} p;

void main() {
    uint m = gl_GlobalInvocationID.x;
    uint j = gl_GlobalInvocationID.y;
    if (m >= p.rows || j >= p.n) {
        return;
    }
    float acc[16];
    for (int l = 0; l < 16; l++) {
        acc[l] = 0.0;
    }
    uint wr = p.w_offset + m * p.k;
    uint xr = p.x_offset + j * p.k;
    for (uint i = 0u; i < p.k; i++) {
        precise float r = fused(half_to_float(uint(w[wr + i])), x[xr + i], acc[i % 16u]);
        acc[i % 16u] = r;
    }
    o[p.out_offset + j * p.out_stride + p.row_base + m] = hsum16(acc);
}
