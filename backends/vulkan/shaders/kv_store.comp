#version 450
// Appends this run's valid K and V rows to the layer's f16 cache after the
// `past` cached slots (round-to-nearest-even), K in the blocked layout of
// 16 slots: column c of slot t at (t / 16)·16·kv_dim + 16·c + t % 16.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_16bit_storage : require
layout(local_size_x_id = 0) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) buffer KC { uint16_t kc[]; };
layout(std430, binding = 3) buffer VC { uint16_t vc[]; };

layout(push_constant) uniform Params {
    uint k_offset;
    uint v_offset;
    uint n;
    uint kv_dim;
    uint past;
} p;

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.n * p.kv_dim) {
        return;
    }
    uint r = id / p.kv_dim;
    uint c = id % p.kv_dim;
    uint slot = p.past + r;
    uint key_at = (slot / 16u) * 16u * p.kv_dim + c * 16u + slot % 16u;
    kc[key_at] = uint16_t(float_to_half(k[p.k_offset + id]));
    vc[slot * p.kv_dim + c] = uint16_t(float_to_half(v[p.v_offset + id]));
}
