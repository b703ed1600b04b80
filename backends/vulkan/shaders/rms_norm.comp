#version 450
// out = (x · scale) · weight per row, scale = 1 / sqrt(mean(x²) + eps),
// the sum of squares accumulated in f64 in element order (as the CPU and
// ggml do). One workgroup per row: invocation 0 sums, all of them scale.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };

layout(push_constant) uniform Params {
    uint x_offset;
    uint out_offset;
    uint cols;
    float eps;
} p;

shared float row_scale;

void main() {
    uint row = gl_WorkGroupID.x;
    uint base = p.x_offset + row * p.cols;
    if (gl_LocalInvocationID.x == 0u) {
        WIDE sum = WIDE(0.0);
        for (uint i = 0u; i < p.cols; i++) {
            precise float sq = x[base + i] * x[base + i];
            sum += WIDE(sq);
        }
        float mean = float(sum / WIDE(p.cols));
        precise float shifted = mean + p.eps;
        row_scale = 1.0 / sqrt(shifted);
    }
    barrier();
    float scale = row_scale;
    for (uint i = gl_LocalInvocationID.x; i < p.cols; i += gl_WorkGroupSize.x) {
        precise float v = (x[base + i] * scale) * w[i];
        o[p.out_offset + row * p.cols + i] = v;
    }
}
