//! The one SIMD layer under every matmul kernel: which implementation this CPU runs
//! ([`SimdIsa`], probed once per process), how a kernel body is compiled for it
//! ([`dispatch`]), and the 8-lane f32 vector every kernel accumulates in ([`F32Lanes`]).
//!
//! Decides: the lane count ([`LANES`]), the horizontal reduction ([`reduce_lanes`], pairwise;
//! every kernel's result is its lanes summed this way), and where fused multiply-adds are
//! used: [`F32Lanes::mul_add`] is one rounding on AVX2 + FMA and two (multiply, then add) in
//! portable Rust. Everything else about the arithmetic (what is multiplied with what, in
//! which order) is the kernels' (`dots.rs`, `exact.rs`, `exact_fused.rs`, `fast.rs`).
//!
//! Leaves to each kernel file: format-specific intrinsics (code unpacking, the integer dot
//! of `fast/block_dot.rs`), which are written against the marker types here ([`Portable`],
//! [`Avx2Fma`]) so that a kernel body generic over them is instantiated once per ISA.

use std::sync::OnceLock;

/// f32 lanes of one accumulator (one AVX2 register).
pub(crate) const LANES: usize = 8;

/// Which implementation of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdIsa {
    /// Plain Rust (any CPU; vectorized by LLVM where it can, no fused multiply-adds).
    Portable,
    /// x86-64 AVX2 with FMA and F16C (every AVX2 CPU has F16C).
    Avx2,
    /// x86-64 AVX2 + FMA with AVX-512 F/BW/VL and VNNI: the AVX2 kernels compiled with 32
    /// vector registers, and the Fast kernels' integer multiply-adds as VNNI instructions
    /// (`vpdpwssd`, `vpdpbusd`) on 256-bit vectors. Same results as [`SimdIsa::Avx2`].
    Avx512Vnni,
}

impl SimdIsa {
    /// The best implementation this CPU runs: AVX-512 VNNI when it and AVX-512 F/BW/VL (and
    /// AVX2, FMA, F16C) are detected, else AVX2 when AVX2, FMA and F16C are detected, else
    /// portable. Probed on the first call; later calls read the cached answer.
    pub fn detected() -> Self {
        static DETECTED: OnceLock<SimdIsa> = OnceLock::new();
        *DETECTED.get_or_init(Self::probe)
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2 => Self::detected() != Self::Portable,
            Self::Avx512Vnni => Self::detected() == Self::Avx512Vnni,
        }
    }

    /// The CPU feature probe (the only one in this crate).
    fn probe() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            let vnni = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            return if vnni { Self::Avx512Vnni } else { Self::Avx2 };
        }
        Self::Portable
    }
}

/// A kernel call with one entry per implementation, each instantiating the same generic body
/// with [`Portable`] or [`Avx2Fma`]; [`dispatch`] picks and compiles the entry.
pub(crate) trait IsaKernel {
    /// Runs the body with [`Portable`].
    fn run_portable(self);

    /// Runs the body with [`Avx2Fma`]; must be `#[inline(always)]` so that the body is
    /// compiled inside [`dispatch`]'s AVX2 + FMA function.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_avx2_fma(self);

    /// Runs the body with [`Avx512Vnni`] (default: the [`Avx2Fma`] body, compiled inside
    /// [`dispatch`]'s AVX-512 function); must be `#[inline(always)]` as
    /// [`IsaKernel::run_avx2_fma`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, AVX-512 F/BW/VL and VNNI.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx512_vnni(self)
    where
        Self: Sized,
    {
        // SAFETY: a superset of `run_avx2_fma`'s requirement.
        unsafe { self.run_avx2_fma() }
    }
}

/// Runs `kernel` with `isa` when this CPU has it, else portably.
#[inline(always)]
pub(crate) fn dispatch<K: IsaKernel>(isa: SimdIsa, kernel: K) {
    #[cfg(target_arch = "x86_64")]
    if isa == SimdIsa::Avx512Vnni && isa.available() {
        // SAFETY: the CPU supports everything `Avx512Vnni` needs, checked just above.
        unsafe { run_avx512_vnni(kernel) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == SimdIsa::Avx2 && isa.available() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { run_avx2_fma(kernel) };
        return;
    }
    let _ = isa;
    kernel.run_portable();
}

/// [`IsaKernel::run_avx2_fma`] compiled for AVX2 + FMA (the body is inlined into it).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2_fma<K: IsaKernel>(kernel: K) {
    // SAFETY: this function's own requirement.
    unsafe { kernel.run_avx2_fma() }
}

/// [`IsaKernel::run_avx512_vnni`] compiled for AVX2 + FMA + AVX-512 F/BW/VL/VNNI.
///
/// # Safety
/// The CPU must support those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_avx512_vnni<K: IsaKernel>(kernel: K) {
    // SAFETY: this function's own requirement.
    unsafe { kernel.run_avx512_vnni() }
}

/// Sums 8 lanes pairwise: `((0+4) + (1+5)) + ((2+6) + (3+7))`.
#[inline(always)]
pub(crate) fn reduce_lanes(v: [f32; LANES]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// An 8-lane f32 vector and the operations the kernels accumulate with.
pub(crate) trait F32Lanes {
    /// The vector.
    type V: Copy;
    /// All lanes 0.
    fn zero() -> Self::V;
    /// The lanes `v[0..8]`.
    fn load(v: &[f32; LANES]) -> Self::V;
    /// `a · b` per lane.
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c` per lane: fused (one rounding) where the ISA has it, else two roundings.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a · s + c` per lane, `s` broadcast (rounded as [`F32Lanes::mul_add`]).
    fn mul_add_splat(a: Self::V, s: f32, c: Self::V) -> Self::V;
    /// Writes the lanes to `out[0..8]`.
    fn store(v: Self::V, out: &mut [f32; LANES]);
    /// Scalar `a · b + c`, rounded as [`F32Lanes::mul_add`] rounds.
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32;
    /// The lanes summed by [`reduce_lanes`].
    fn reduce(v: Self::V) -> f32;
}

/// Plain Rust lanes (`[f32; 8]`, which LLVM vectorizes at opt-level 3).
pub(crate) struct Portable;

impl F32Lanes for Portable {
    type V = [f32; LANES];

    #[inline(always)]
    fn zero() -> Self::V {
        [0.0; LANES]
    }

    #[inline(always)]
    fn load(v: &[f32; LANES]) -> Self::V {
        *v
    }

    #[inline(always)]
    fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l])
    }

    #[inline(always)]
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| c[l] + a[l] * b[l])
    }

    #[inline(always)]
    fn mul_add_splat(a: Self::V, s: f32, c: Self::V) -> Self::V {
        std::array::from_fn(|l| c[l] + a[l] * s)
    }

    #[inline(always)]
    fn store(v: Self::V, out: &mut [f32; LANES]) {
        *out = v;
    }

    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        c + a * b
    }

    #[inline(always)]
    fn reduce(v: Self::V) -> f32 {
        reduce_lanes(v)
    }
}

/// AVX2 + FMA lanes (`__m256`). Used only in bodies reached through [`dispatch`] after
/// detection (and in tests after detection): that is what every `unsafe` below relies on.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2Fma;

#[cfg(target_arch = "x86_64")]
impl F32Lanes for Avx2Fma {
    type V = std::arch::x86_64::__m256;

    #[inline(always)]
    fn zero() -> Self::V {
        // SAFETY: AVX, per the type's invariant.
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }

    #[inline(always)]
    fn load(v: &[f32; LANES]) -> Self::V {
        // SAFETY: AVX per the type's invariant; `v` holds the 8 f32 read.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline(always)]
    fn mul(a: Self::V, b: Self::V) -> Self::V {
        // SAFETY: AVX, per the type's invariant.
        unsafe { std::arch::x86_64::_mm256_mul_ps(a, b) }
    }

    #[inline(always)]
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // SAFETY: FMA, per the type's invariant.
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    fn mul_add_splat(a: Self::V, s: f32, c: Self::V) -> Self::V {
        // SAFETY: AVX + FMA, per the type's invariant.
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(a, std::arch::x86_64::_mm256_set1_ps(s), c) }
    }

    #[inline(always)]
    fn store(v: Self::V, out: &mut [f32; LANES]) {
        // SAFETY: AVX per the type's invariant; `out` has room for the 8 f32 written.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), v) }
    }

    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn reduce(v: Self::V) -> f32 {
        let mut a = [0f32; LANES];
        // SAFETY: AVX per the type's invariant; `a` has room for the 8 f32 written.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(a.as_mut_ptr(), v) };
        reduce_lanes(a)
    }
}

/// AVX-512 VNNI lanes: the [`Avx2Fma`] vector and operations (the same bits); the marker
/// selects the VNNI integer dots of the Fast kernels. Used only after detection.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512Vnni;

#[cfg(target_arch = "x86_64")]
impl F32Lanes for Avx512Vnni {
    type V = std::arch::x86_64::__m256;

    #[inline(always)]
    fn zero() -> Self::V {
        Avx2Fma::zero()
    }

    #[inline(always)]
    fn load(v: &[f32; LANES]) -> Self::V {
        Avx2Fma::load(v)
    }

    #[inline(always)]
    fn mul(a: Self::V, b: Self::V) -> Self::V {
        Avx2Fma::mul(a, b)
    }

    #[inline(always)]
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        Avx2Fma::mul_add(a, b, c)
    }

    #[inline(always)]
    fn mul_add_splat(a: Self::V, s: f32, c: Self::V) -> Self::V {
        Avx2Fma::mul_add_splat(a, s, c)
    }

    #[inline(always)]
    fn store(v: Self::V, out: &mut [f32; LANES]) {
        Avx2Fma::store(v, out)
    }

    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        Avx2Fma::mul_add_scalar(a, b, c)
    }

    #[inline(always)]
    fn reduce(v: Self::V) -> f32 {
        Avx2Fma::reduce(v)
    }
}

/// Whether a test of the AVX2 implementation can run here; when not, says on stderr that
/// `test` was skipped (a test that returns early on `false` passes without checking, so the
/// skip must be visible).
#[cfg(test)]
pub(crate) fn avx2_or_skip(test: &str) -> bool {
    let ok = SimdIsa::Avx2.available();
    if !ok {
        eprintln!("skipped: {test} (CPU lacks avx2+fma)");
    }
    ok
}

/// As [`avx2_or_skip`], for the AVX-512 VNNI implementation.
#[cfg(test)]
pub(crate) fn avx512vnni_or_skip(test: &str) -> bool {
    let ok = SimdIsa::Avx512Vnni.available();
    if !ok {
        eprintln!("skipped: {test} (CPU lacks avx512f+bw+vl+vnni)");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lanes of one implementation's vector after `f`, as bits.
    fn lanes_after<S: F32Lanes>(f: impl Fn(S::V, S::V) -> S::V) -> u32 {
        let a = [1.0f32 + f32::EPSILON, 2.0, -3.5, 4.25, 1e-3, -7.0, 0.5, 3.0];
        let b = [
            1.0f32 - f32::EPSILON,
            -0.5,
            2.0,
            8.0,
            1e3,
            0.25,
            -2.0,
            1.0 / 3.0,
        ];
        S::reduce(f(S::load(&a), S::load(&b))).to_bits()
    }

    #[test]
    fn portable_mul_add_rounds_twice() {
        // (1 + ε)(1 − ε) − 1 = −ε² exactly; two roundings give 0, one gives −ε².
        let e = f32::EPSILON;
        assert_eq!(Portable::mul_add_scalar(1.0 + e, 1.0 - e, -1.0), 0.0);
        let v = Portable::mul_add([1.0 + e; LANES], [1.0 - e; LANES], [-1.0; LANES]);
        assert_eq!(v, [0.0; LANES]);
    }

    #[test]
    fn reduce_is_pairwise() {
        // Large values cancel only when paired as documented (0 with 4, 1 with 5, ...).
        let v = [1e30f32, 1.0, 2.0, 3.0, -1e30, 4.0, 5.0, 6.0];
        assert_eq!(reduce_lanes(v), 21.0);
        assert_eq!(Portable::reduce(v), 21.0);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_lanes_match_portable_where_no_fma_differs() {
        if !avx2_or_skip("avx2_lanes_match_portable_where_no_fma_differs") {
            return;
        }
        assert_eq!(
            lanes_after::<Portable>(Portable::mul),
            lanes_after::<Avx2Fma>(Avx2Fma::mul)
        );
        let e = f32::EPSILON;
        assert_eq!(Avx2Fma::mul_add_scalar(1.0 + e, 1.0 - e, -1.0), -e * e);
        let fused = Avx2Fma::mul_add(
            Avx2Fma::load(&[1.0 + e; LANES]),
            Avx2Fma::load(&[1.0 - e; LANES]),
            Avx2Fma::load(&[-1.0; LANES]),
        );
        assert_eq!(Avx2Fma::reduce(fused), 8.0 * (-e * e));
    }
}
