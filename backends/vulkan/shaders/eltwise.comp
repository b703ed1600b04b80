#version 450
// Element-wise ops over the valid rows: OP 0 is out = a + b, OP 1 is
// out = silu(a) · b with silu(g) = g / (1 + ggml_expf(0 - g)) (ggml's
// SwiGLU, as the CPU computes it).
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint OP = 0u;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint a_offset;
    uint b_offset;
    uint out_offset;
    uint len;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.len) {
        return;
    }
    float x = a[p.a_offset + i];
    float y = b[p.b_offset + i];
    if (OP == 0u) {
        precise float s = x + y;
        o[p.out_offset + i] = s;
    } else {
        precise float e = 1.0 + ggml_expf(0.0 - x);
        precise float s = (x / e) * y;
        o[p.out_offset + i] = s;
    }
}
