#version 450
// out[j][m] = Σ_k x[j][k] · w[m][k] for K-quant weights (Q4_K, Q5_K,
// Q6_K) against Q8_K activations, in the order of ggml's generic dots (the
// CPU's reference): per super-block, eight i32 lanes of scale · q8 · q
// (exact), added to f32 lanes as d·lane with d = dw · dx; Q4_K/Q5_K
// subtract dmin · Σ bsums·min from a running f32 sum; the lanes are then
// added to that sum in order. One invocation per output.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint KTYPE = 0u;
#include "common.glsl"

struct Q8KBlock { float d; uint qs[64]; int bsums[16]; };

layout(std430, binding = 0) readonly buffer W { uint8_t w[]; };
layout(std430, binding = 1) readonly buffer Q { Q8KBlock q[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

#include "kquant.glsl"

layout(push_constant) uniform Params {
    uint w_offset;
    uint rows;
    uint row_base;
    uint out_stride;
    uint blocks; // super-blocks per row (k / 256)
    uint n;
    uint out_offset;
} p;

void main() {
    uint m = gl_GlobalInvocationID.x;
    uint j = gl_GlobalInvocationID.y;
    if (m >= p.rows || j >= p.n) {
        return;
    }
    uint bb = k_block_bytes(KTYPE);
    float sums[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    precise float sumf = 0.0;
    for (uint b = 0u; b < p.blocks; b++) {
        uint at = p.w_offset + (m * p.blocks + b) * bb;
        uint qi = j * p.blocks + b;
        float dx = q[qi].d;
        int acc[8] = int[8](0, 0, 0, 0, 0, 0, 0, 0);
        for (uint i = 0u; i < 256u; i++) {
            int xq = int(q[qi].qs[i / 4u] << (24u - 8u * (i % 4u))) >> 24;
            acc[i % 8u] += k_scale(KTYPE, at, i) * (xq * k_quant(KTYPE, at, i));
        }
        float dw = KTYPE == 2u ? k_f16(at + 208u) : k_f16(at);
        precise float d = dw * dx;
        for (uint l = 0u; l < 8u; l++) {
            precise float s = sums[l] + d * float(acc[l]);
            sums[l] = s;
        }
        if (KTYPE != 2u) {
            int sumi = 0;
            for (uint s = 0u; s < 16u; s++) {
                sumi += q[qi].bsums[s] * int(k_scale_min(at + 4u, s / 2u).y);
            }
            precise float dmin = k_f16(at + 2u) * dx;
            sumf = sumf - dmin * float(sumi);
        }
    }
    precise float result = sumf;
    for (uint l = 0u; l < 8u; l++) {
        result = result + sums[l];
    }
    o[p.out_offset + j * p.out_stride + p.row_base + m] = result;
}
