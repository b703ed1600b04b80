// Reading K-quant super-blocks (ggml's block_q4_K, block_q5_K, block_q6_K)
// from a byte buffer `w`, value by value, as the CPU's reference dots and
// dequantizers decode them. KTYPE: 0 Q4_K, 1 Q5_K, 2 Q6_K.

uint k_block_bytes(uint ktype) {
    return ktype == 0u ? 144u : (ktype == 1u ? 176u : 210u);
}

uint k_byte(uint at) {
    return uint(w[at]);
}

float k_f16(uint at) {
    return half_to_float(k_byte(at) | (k_byte(at + 1u) << 8));
}

// ggml's get_scale_min_k4: the 6-bit scale and minimum of sub-block j.
uvec2 k_scale_min(uint scales_at, uint j) {
    if (j < 4u) {
        return uvec2(k_byte(scales_at + j) & 63u, k_byte(scales_at + j + 4u) & 63u);
    }
    uint s = (k_byte(scales_at + j + 4u) & 15u) | ((k_byte(scales_at + j - 4u) >> 6) << 4);
    uint m = (k_byte(scales_at + j + 4u) >> 4) | ((k_byte(scales_at + j) >> 6) << 4);
    return uvec2(s, m);
}

// Quant i (0..256) of the super-block at `at`: 0..15 (Q4_K), 0..31
// (Q5_K), or centred -32..31 (Q6_K).
int k_quant(uint ktype, uint at, uint i) {
    if (ktype == 2u) {
        uint h = i / 128u;
        uint r = i % 128u;
        uint l = r % 32u;
        uint quad = r / 32u;
        uint ql = k_byte(at + 64u * h + l + ((quad & 1u) != 0u ? 32u : 0u));
        uint lo = quad < 2u ? (ql & 15u) : (ql >> 4);
        uint qh = k_byte(at + 128u + 32u * h + l);
        uint hi = (qh >> (2u * quad)) & 3u;
        return int(lo | (hi << 4)) - 32;
    }
    uint qs_at = at + (ktype == 0u ? 16u : 48u);
    uint pair = i / 64u;
    uint r = i % 64u;
    uint l = r % 32u;
    uint byte = k_byte(qs_at + 32u * pair + l);
    uint q = r < 32u ? (byte & 15u) : (byte >> 4);
    if (ktype == 1u) {
        uint bit = 1u << (2u * pair + (r < 32u ? 0u : 1u));
        if ((k_byte(at + 16u + l) & bit) != 0u) {
            q += 16u;
        }
    }
    return int(q);
}

// The scale of quant i: 6-bit per 32 values (Q4_K, Q5_K), signed 8-bit
// per 16 values (Q6_K).
int k_scale(uint ktype, uint at, uint i) {
    if (ktype == 2u) {
        int s = int(k_byte(at + 192u + i / 16u));
        return s >= 128 ? s - 256 : s;
    }
    return int(k_scale_min(at + 4u, i / 32u).x);
}

// Value i dequantized as the CPU does: d·sc·q − dmin·m (Q4_K, Q5_K, each
// product rounded), d·scale·q left to right (Q6_K).
float k_dequant(uint ktype, uint at, uint i) {
    if (ktype == 2u) {
        precise float v = k_f16(at + 208u) * float(k_scale(ktype, at, i)) * float(k_quant(ktype, at, i));
        return v;
    }
    uvec2 sm = k_scale_min(at + 4u, i / 32u);
    precise float dl = k_f16(at) * float(sm.x);
    precise float ml = k_f16(at + 2u) * float(sm.y);
    precise float v = dl * float(k_quant(ktype, at, i)) - ml;
    return v;
}
