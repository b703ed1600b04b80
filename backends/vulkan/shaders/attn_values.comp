#version 450
// The weighted sum of values: visible entry i (in order) is FMA'd into
// lane position % 16 of 16 accumulators, which are then summed as hsum16
// (the CPU's tinyBLAS-order value pass). One invocation per (value, head,
// row).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_16bit_storage : require
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "attention.glsl"

layout(std430, binding = 1) readonly buffer S { float scores[]; };
layout(std430, binding = 2) readonly buffer VC { uint16_t vc[]; };
layout(std430, binding = 3) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint vis_offset;
    uint out_offset;
    uint n_heads;
    uint n_kv_heads;
    uint head_dim;
    uint longest;
} p;

void main() {
    uint d = gl_GlobalInvocationID.x;
    uint h = gl_GlobalInvocationID.y;
    uint r = gl_GlobalInvocationID.z;
    if (d >= p.head_dim || h >= p.n_heads) {
        return;
    }
    uint len = visible_len(p.vis_offset, r);
    uint kv_dim = p.n_kv_heads * p.head_dim;
    uint col = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim + d;
    uint base = (r * p.n_heads + h) * p.longest;
    float lanes[16];
    for (int l = 0; l < 16; l++) {
        lanes[l] = 0.0;
    }
    for (uint i = 0u; i < len; i++) {
        uvec2 entry = visible_entry(p.vis_offset, r, i);
        float v = half_to_float(uint(vc[entry.x * kv_dim + col]));
        uint lane = entry.y % 16u;
        precise float acc = fused(scores[base + i], v, lanes[lane]);
        lanes[lane] = acc;
    }
    o[p.out_offset + (r * p.n_heads + h) * p.head_dim + d] = hsum16(lanes);
}
