#version 450
// Softmax of a row's scores, as the CPU computes it: ggml_expf(s - max);
// the exps summed per 16-slot chunk of sequence positions (hsum16 of the
// chunk's lanes, absent lanes zero), chunk sums added in f64 in order;
// probabilities e · f32(1 / sum) rounded to f16. One invocation per
// (head, row).
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "attention.glsl"

layout(std430, binding = 1) buffer S { float scores[]; };

layout(push_constant) uniform Params {
    uint vis_offset;
    uint n;
    uint n_heads;
    uint longest;
} p;

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.n * p.n_heads) {
        return;
    }
    uint r = id / p.n_heads;
    uint base = id * p.longest;
    uint len = visible_len(p.vis_offset, r);
    float mx = uintBitsToFloat(0xff800000u);
    for (uint i = 0u; i < len; i++) {
        mx = max(mx, scores[base + i]);
    }
    WIDE sum = WIDE(0.0);
    float chunk[16];
    for (int l = 0; l < 16; l++) {
        chunk[l] = 0.0;
    }
    uint chunk_id = 0xffffffffu;
    for (uint i = 0u; i < len; i++) {
        precise float shifted = scores[base + i] - mx;
        float e = ggml_expf(shifted);
        scores[base + i] = e;
        uint pos = visible_entry(p.vis_offset, r, i).y;
        if (pos / 16u != chunk_id) {
            if (chunk_id != 0xffffffffu) {
                sum += WIDE(hsum16(chunk));
            }
            for (int l = 0; l < 16; l++) {
                chunk[l] = 0.0;
            }
            chunk_id = pos / 16u;
        }
        chunk[pos % 16u] = e;
    }
    if (chunk_id != 0xffffffffu) {
        sum += WIDE(hsum16(chunk));
    }
    float inv = float(WIDE(1.0) / sum);
    for (uint i = 0u; i < len; i++) {
        precise float pr = scores[base + i] * inv;
        scores[base + i] = round_to_half(pr);
    }
}
