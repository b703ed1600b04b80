#version 450
// out[r] = table[ids[r]], dequantized as the CPU does (Q4_0: (q - 8)·d,
// Q4_1: q·d + m, Q8_0: q·d, f16, f32, and the K-quants). The host has checked every id.
// One invocation per output element; `row_base` and `rows` select the
// chunk of the table that is bound (tables past the binding limit).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint DTYPE = 0u; // 0 Q4_0, 1 Q4_1, 2 Q8_0, 3 F16, 4 F32, 5 Q4_K, 6 Q5_K, 7 Q6_K
#include "common.glsl"

layout(std430, binding = 0) readonly buffer T { uint8_t w[]; };
#include "kquant.glsl"
layout(std430, binding = 1) readonly buffer I { int ids[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint ids_offset;
    uint out_offset;
    uint n;
    uint cols;
    uint row_bytes;
    uint row_base;
    uint rows;
} p;

float f16_at(uint at) {
    return half_to_float(uint(w[at]) | (uint(w[at + 1u]) << 8));
}

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.n * p.cols) {
        return;
    }
    uint r = id / p.cols;
    uint c = id % p.cols;
    uint token = uint(ids[p.ids_offset + r]);
    if (token < p.row_base || token >= p.row_base + p.rows) {
        return;
    }
    uint row_at = (token - p.row_base) * p.row_bytes;
    float v;
    if (DTYPE >= 5u) {
        uint at = row_at + (c / 256u) * k_block_bytes(DTYPE - 5u);
        v = k_dequant(DTYPE - 5u, at, c % 256u);
    } else if (DTYPE == 3u) {
        v = f16_at(row_at + 2u * c);
    } else if (DTYPE == 4u) {
        uint at = row_at + 4u * c;
        v = uintBitsToFloat(uint(w[at]) | (uint(w[at + 1u]) << 8) | (uint(w[at + 2u]) << 16) | (uint(w[at + 3u]) << 24));
    } else {
        uint bb = DTYPE == 0u ? 18u : (DTYPE == 1u ? 20u : 34u);
        uint at = row_at + (c / 32u) * bb;
        uint e = c % 32u;
        float d = f16_at(at);
        if (DTYPE == 2u) {
            int b = int(uint(w[at + 2u + e]));
            v = float(b >= 128 ? b - 256 : b) * d;
        } else {
            uint qs_at = at + (DTYPE == 1u ? 4u : 2u);
            uint byte = uint(w[qs_at + (e & 15u)]);
            uint q = e < 16u ? (byte & 15u) : (byte >> 4);
            if (DTYPE == 0u) {
                v = float(int(q) - 8) * d;
            } else {
                precise float s = float(q) * d;
                precise float s2 = s + f16_at(at + 2u);
                v = s2;
            }
        }
    }
    o[p.out_offset + r * p.cols + c] = v;
}
