#version 450
// Attention scores: the query rounded to f16, k · q in 16 lanes (element
// d into lane d % 16, as the CPU's tinyBLAS-order dot), times `scale`.
// One invocation per (visible entry, head, row).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_16bit_storage : require
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "attention.glsl"

layout(std430, binding = 1) readonly buffer Q { float q[]; };
layout(std430, binding = 2) readonly buffer KC { uint16_t kc[]; };
layout(std430, binding = 3) writeonly buffer S { float scores[]; };

layout(push_constant) uniform Params {
    uint vis_offset;
    uint q_offset;
    uint n_heads;
    uint n_kv_heads;
    uint head_dim;
    uint longest;
    float scale;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    uint h = gl_GlobalInvocationID.y;
    uint r = gl_GlobalInvocationID.z;
    if (i >= visible_len(p.vis_offset, r) || h >= p.n_heads) {
        return;
    }
    uint slot = visible_entry(p.vis_offset, r, i).x;
    uint kv_dim = p.n_kv_heads * p.head_dim;
    uint col0 = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim;
    uint key_block = (slot / 16u) * 16u * kv_dim + slot % 16u;
    uint q_at = p.q_offset + (r * p.n_heads + h) * p.head_dim;
    float acc[16];
    for (int l = 0; l < 16; l++) {
        acc[l] = 0.0;
    }
    for (uint d = 0u; d < p.head_dim; d++) {
        float key = half_to_float(uint(kc[key_block + (col0 + d) * 16u]));
        precise float r2 = fused(key, round_to_half(q[q_at + d]), acc[d % 16u]);
        acc[d % 16u] = r2;
    }
    precise float s = hsum16(acc) * p.scale;
    scores[(r * p.n_heads + h) * p.longest + i] = s;
}
