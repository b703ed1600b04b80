//! f32 kernels written once, generically over pulp's `Simd` trait, and
//! instantiated per instruction set (V3 = AVX2+FMA, V4 = AVX-512, NEON).
//!
//! Each instantiation is a plain `fn` so it can sit in a [`crate::KernelSet`].

use pulp::{Simd, WithSimd};

/// f32 dot product with four independent accumulators (hides FMA latency).
pub(crate) struct DotF32<'a> {
    pub x: &'a [f32],
    pub y: &'a [f32],
}

impl WithSimd for DotF32<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let (xh, xt) = S::as_simd_f32s(self.x);
        let (yh, yt) = S::as_simd_f32s(self.y);
        let mut acc0 = simd.splat_f32s(0.0);
        let mut acc1 = simd.splat_f32s(0.0);
        let mut acc2 = simd.splat_f32s(0.0);
        let mut acc3 = simd.splat_f32s(0.0);
        let mut xc = xh.chunks_exact(4);
        let mut yc = yh.chunks_exact(4);
        for (a, b) in (&mut xc).zip(&mut yc) {
            acc0 = simd.mul_add_e_f32s(a[0], b[0], acc0);
            acc1 = simd.mul_add_e_f32s(a[1], b[1], acc1);
            acc2 = simd.mul_add_e_f32s(a[2], b[2], acc2);
            acc3 = simd.mul_add_e_f32s(a[3], b[3], acc3);
        }
        for (&a, &b) in xc.remainder().iter().zip(yc.remainder()) {
            acc0 = simd.mul_add_e_f32s(a, b, acc0);
        }
        let acc = simd.add_f32s(simd.add_f32s(acc0, acc1), simd.add_f32s(acc2, acc3));
        let mut sum = simd.reduce_sum_f32s(acc);
        for (&a, &b) in xt.iter().zip(yt) {
            sum += a * b;
        }
        sum
    }
}

/// `x *= a` over f32.
pub(crate) struct ScaleF32<'a> {
    pub a: f32,
    pub x: &'a mut [f32],
}

impl WithSimd for ScaleF32<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (xh, xt) = S::as_mut_simd_f32s(self.x);
        let va = simd.splat_f32s(self.a);
        for v in xh.iter_mut() {
            *v = simd.mul_f32s(*v, va);
        }
        for v in xt {
            *v *= self.a;
        }
    }
}

/// `x += y` over f32.
pub(crate) struct AddF32<'a> {
    pub x: &'a mut [f32],
    pub y: &'a [f32],
}

impl WithSimd for AddF32<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (xh, xt) = S::as_mut_simd_f32s(self.x);
        let (yh, yt) = S::as_simd_f32s(self.y);
        for (a, &b) in xh.iter_mut().zip(yh) {
            *a = simd.add_f32s(*a, b);
        }
        for (a, &b) in xt.iter_mut().zip(yt) {
            *a += b;
        }
    }
}

/// `out = (x * scale) * w` (the two roundings of ggml's `rms_norm` then `mul`).
pub(crate) struct ScaleMulF32<'a> {
    pub x: &'a [f32],
    pub scale: f32,
    pub w: &'a [f32],
    pub out: &'a mut [f32],
}

impl WithSimd for ScaleMulF32<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (xh, xt) = S::as_simd_f32s(self.x);
        let (wh, wt) = S::as_simd_f32s(self.w);
        let (oh, ot) = S::as_mut_simd_f32s(self.out);
        let vs = simd.splat_f32s(self.scale);
        for ((o, &x), &w) in oh.iter_mut().zip(xh).zip(wh) {
            *o = simd.mul_f32s(simd.mul_f32s(x, vs), w);
        }
        for ((o, &x), &w) in ot.iter_mut().zip(xt).zip(wt) {
            *o = (x * self.scale) * w;
        }
    }
}
