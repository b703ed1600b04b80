#version 450
// Activations to 8-bit blocks of 32, as the CPU quantizes them for its
// integer dots (ggml's Q8_0 / Q8_1): d = amax / 127 (stored rounded to
// f16), q = roundEven(x · 127 / amax), s = f16(d · Σq). One invocation per
// block; each row is quantized on its own, whatever the batch.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;
#include "common.glsl"

struct Q8Block { uint qs[8]; float d; float s; };

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Q { Q8Block q[]; };

layout(push_constant) uniform Params {
    uint x_offset;   // elements
    uint rows;
    uint blocks;     // blocks per row
} p;

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.rows * p.blocks) {
        return;
    }
    uint base = p.x_offset + id * 32u;
    float amax = 0.0;
    for (uint i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[base + i]));
    }
    float d = amax / 127.0;
    float inv = (amax != 0.0) ? 127.0 / amax : 0.0;
    int sum = 0;
    for (uint w = 0u; w < 8u; w++) {
        uint word = 0u;
        for (uint b = 0u; b < 4u; b++) {
            precise float scaled = x[base + 4u * w + b] * inv;
            int v = int(roundEven(scaled));
            sum += v;
            word |= (uint(v) & 0xffu) << (8u * b);
        }
        q[id].qs[w] = word;
    }
    q[id].d = round_to_half(d);
    precise float s = d * float(sum);
    q[id].s = round_to_half(s);
}
