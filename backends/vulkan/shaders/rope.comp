#version 450
// RoPE, ggml "normal" mode (adjacent pairs), with per-row (sin, cos)
// tables the host computed as the CPU does: x0' = fused(x0, cos, -(x1·sin)),
// x1' = fused(x0, sin, x1·cos). One invocation per pair.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer A { vec2 angles[]; }; // (sin, cos)
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint x_offset;
    uint out_offset;
    uint angle_offset; // in pairs
    uint n;            // rows
    uint n_heads;
    uint head_dim;
} p;

void main() {
    uint id = gl_GlobalInvocationID.x;
    uint half_dim = p.head_dim / 2u;
    uint pairs_per_row = p.n_heads * half_dim;
    if (id >= p.n * pairs_per_row) {
        return;
    }
    uint row = id / pairs_per_row;
    uint pair = id % pairs_per_row;
    uint i = pair % half_dim;
    uint at = row * p.n_heads * p.head_dim + 2u * pair;
    vec2 sc = angles[p.angle_offset + row * half_dim + i];
    float x0 = x[p.x_offset + at];
    float x1 = x[p.x_offset + at + 1u];
    precise float a = x1 * sc.x;
    precise float b = x1 * sc.y;
    precise float r0 = fused(x0, sc.y, -a);
    precise float r1 = fused(x0, sc.x, b);
    o[p.out_offset + at] = r0;
    o[p.out_offset + at + 1u] = r1;
}
