// Shared helpers of the coordgen compute shaders. Every float operation
// here mirrors the CPU backend's reference kernels operation for operation
// (same roundings, same FMAs, same summation trees), so a Vulkan run agrees
// with the CPU bit for bit where the device computes IEEE-exact adds,
// multiplies, FMAs, divides and square roots (lavapipe does).

// Two builds of every shader (tools/compile-shaders): the default repeats
// the CPU's roundings exactly, with f64 where f32 cannot (an FMA that
// lavapipe would split in two, the f64 sums of norms and softmax); the
// NO_F64 build, for devices without shaderFloat64 (most mobile GPUs), uses
// the native fma and f32 sums, and agrees with the CPU within a tolerance.
#ifdef NO_F64
#define WIDE float
// a · b + c: fused on GPUs with FMA units (lavapipe rounds twice).
float fused(float a, float b, float c) {
    return fma(a, b, c);
}
#else
#define WIDE double
// a · b + c rounded once (to f32, through an exact f64 product).
float fused(float a, float b, float c) {
    precise double s = double(a) * double(b) + double(c);
    return float(s);
}
#endif

// f16 bits to f32: exact, subnormals included (no reliance on the
// driver's conversion, whose handling of subnormals may vary).
float half_to_float(uint h) {
    uint sign = (h & 0x8000u) << 16;
    uint e = (h >> 10) & 0x1fu;
    uint m = h & 0x3ffu;
    if (e == 0u) {
        float v = float(m) * 5.9604644775390625e-8; // m · 2^-24, exact
        return (sign != 0u) ? -v : v;
    }
    if (e == 31u) {
        return uintBitsToFloat(sign | 0x7f800000u | (m << 13));
    }
    return uintBitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}

// f32 to f16 bits with round-to-nearest-even (what F16C's vcvtps2ph and
// the `half` crate do); SPIR-V leaves OpFConvert's rounding to the driver.
uint float_to_half(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint e = (x >> 23) & 0xffu;
    uint m = x & 0x7fffffu;
    if (e == 255u) {
        return sign | 0x7c00u | ((m != 0u) ? 0x200u : 0u);
    }
    int ex = int(e) - 112;
    if (ex >= 31) {
        return sign | 0x7c00u;
    }
    if (ex <= 0) {
        if (ex < -10) {
            return sign;
        }
        m |= 0x800000u;
        uint shift = uint(14 - ex);
        uint hm = m >> shift;
        uint rem = m & ((1u << shift) - 1u);
        uint halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (hm & 1u) != 0u)) {
            hm += 1u;
        }
        return sign | hm;
    }
    uint h = sign | (uint(ex) << 10) | (m >> 13);
    uint rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) {
        h += 1u; // a carry into the exponent is the correct rounding
    }
    return h;
}

float round_to_half(float f) {
    return half_to_float(float_to_half(f));
}

// ggml's vectorized expf (`ggml_v_expf`), lane for lane as the CPU's
// `ggml_expf`: the final scaling j · 2^n is one rounding, done in f64
// (ldexp in the NO_F64 build: the same but for subnormal results).
float ggml_expf(float x) {
    const float r = uintBitsToFloat(0x4b400000u);
    precise float z = fused(x, uintBitsToFloat(0x3fb8aa3bu), r);
    precise float n = z - r;
    precise float b = fused(-n, uintBitsToFloat(0x35bfbe8eu), fused(-n, uintBitsToFloat(0x3f317200u), x));
    if (abs(n) > 192.0) {
        return (n <= 0.0) ? 0.0 : uintBitsToFloat(0x7f800000u);
    }
    precise float u = b * b;
    precise float j = fused(
        fused(fused(uintBitsToFloat(0x3c072010u), b, uintBitsToFloat(0x3d2b9f17u)), u,
            fused(uintBitsToFloat(0x3e2aaf33u), b, uintBitsToFloat(0x3efffedbu))),
        u, fused(uintBitsToFloat(0x3f7ffff6u), b, 1.0));
#ifdef NO_F64
    return ldexp(j, int(n));
#else
    double two_n = packDouble2x32(uvec2(0u, uint(int(n) + 1023) << 20));
    return float(double(j) * two_n);
#endif
}

// Sum of 8 lanes in ggml's `hsum_float_8` order.
float hsum8(float a[8]) {
    precise float t0 = a[4] + a[0];
    precise float t1 = a[5] + a[1];
    precise float t2 = a[6] + a[2];
    precise float t3 = a[7] + a[3];
    precise float s = (t0 + t2) + (t1 + t3);
    return s;
}

// Sum of 16 lanes in `_mm512_reduce_add_ps` order.
float hsum16(float a[16]) {
    float t[8];
    for (int k = 0; k < 8; k++) {
        precise float s = a[k + 8] + a[k];
        t[k] = s;
    }
    return hsum8(t);
}
