#version 450
// Activations to ggml's Q8_K blocks of 256, as the CPU quantizes them for
// the K-quant dots: the value of largest magnitude (first one on ties)
// sets iscale = -127 / max, q = roundEven(iscale · x) clamped to i8,
// d = 1 / iscale, bsums = sums of each 16 quants. One invocation per block.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x_id = 0) in;

struct Q8KBlock { float d; uint qs[64]; int bsums[16]; };

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Q { Q8KBlock q[]; };

layout(push_constant) uniform Params {
    uint x_offset;
    uint rows;
    uint blocks; // per row
} p;

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.rows * p.blocks) {
        return;
    }
    uint base = p.x_offset + id * 256u;
    float mx = 0.0;
    float amax = 0.0;
    for (uint i = 0u; i < 256u; i++) {
        float v = x[base + i];
        if (abs(v) > amax) {
            amax = abs(v);
            mx = v;
        }
    }
    if (amax == 0.0) {
        q[id].d = 0.0;
        for (uint w = 0u; w < 64u; w++) {
            q[id].qs[w] = 0u;
        }
        for (uint j = 0u; j < 16u; j++) {
            q[id].bsums[j] = 0;
        }
        return;
    }
    float iscale = -127.0 / mx;
    for (uint j = 0u; j < 16u; j++) {
        int sum = 0;
        for (uint w = 0u; w < 4u; w++) {
            uint word = 0u;
            for (uint b = 0u; b < 4u; b++) {
                precise float scaled = iscale * x[base + 16u * j + 4u * w + b];
                int v = clamp(int(roundEven(scaled)), -128, 127);
                sum += v;
                word |= (uint(v) & 0xffu) << (8u * b);
            }
            q[id].qs[4u * j + w] = word;
        }
        q[id].bsums[j] = sum;
    }
    q[id].d = 1.0 / iscale;
}
