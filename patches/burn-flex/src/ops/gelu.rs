//! clipit patch: GELU and its gradient in f32 without libm's scalar `erff`.
//!
//! Upstream maps every element through `libm::erff` on one thread; in a ViT's MLP (a
//! `[tokens, 4 × width]` tensor per block) that was about 10 % of an image embedding's time on
//! two cores. Here `erf` is Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, the
//! formula PyTorch's own vectorised CPU `erf` uses) with a branch-free `exp` (Cephes' `expf`
//! polynomial, exponent from the bits of a rounding constant), so the compiler vectorises the
//! loop (AVX2 + FMA when the CPU has them, chosen at run time; `simd128` in the wasm build); large
//! tensors are split over the rayon pool. f64, f16 and bf16 keep upstream's libm path.

use burn_backend::DType;
use burn_std::Bytes;

use crate::ops::binary::binary_op;
use crate::ops::unary::{erf_f32, erf_f64, unary_op};
use crate::{FlexTensor, Layout};

/// Elements per rayon task; tensors below twice this run on the calling thread.
#[cfg(feature = "rayon")]
const CHUNK: usize = 1 << 15;

const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` for `x <= 0` (clamped at -87, where it is below the smallest normal f32), within
/// 2 ulp. Branch-free, so loops over it vectorise.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 × 2^23: adding it rounds to an integer, which its low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((exponent + 127) as u32) << 23)
}

/// `(erf(z), exp(-z²))`: Abramowitz and Stegun 7.1.26.
#[inline(always)]
fn erf_and_gaussian(z: f32) -> (f32, f32) {
    let t = 1.0 / (0.327_591_1 * z.abs() + 1.0);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let gaussian = exp_nonpositive(-(z * z));
    ((1.0 - poly * gaussian).copysign(z), gaussian)
}

/// `x Φ(x)` with `Φ` the standard normal CDF (PyTorch's exact `gelu`).
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    let (erf, _) = erf_and_gaussian(x * FRAC_1_SQRT_2);
    0.5 * x * (1.0 + erf)
}

/// `g · d/dx[x Φ(x)] = g · (Φ(x) + x φ(x))`.
#[inline(always)]
fn gelu_grad_one(x: f32, g: f32) -> f32 {
    let (erf, gaussian) = erf_and_gaussian(x * FRAC_1_SQRT_2);
    g * (0.5 * (1.0 + erf) + x * gaussian * INV_SQRT_2PI)
}

#[inline(always)]
fn map_body(values: &mut [f32]) {
    for v in values {
        *v = gelu_one(*v);
    }
}

#[inline(always)]
fn grad_body(x: &[f32], grad: &mut [f32]) {
    for (g, &x) in grad.iter_mut().zip(x) {
        *g = gelu_grad_one(x, *g);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(values: &mut [f32]) {
    map_body(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_avx2(x: &[f32], grad: &mut [f32]) {
    grad_body(x, grad)
}

/// Whether the AVX2 + FMA versions can run (checked once by std).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// GELU of every value, in place, on one thread.
fn map_chunk(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { map_avx2(values) };
    }
    map_body(values)
}

/// `grad ← grad · gelu'(x)`, on one thread.
fn grad_chunk(x: &[f32], grad: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { grad_avx2(x, grad) };
    }
    grad_body(x, grad)
}

fn map_all(values: &mut [f32]) {
    #[cfg(feature = "rayon")]
    if values.len() >= 2 * CHUNK {
        use rayon::prelude::*;
        return values.par_chunks_mut(CHUNK).for_each(map_chunk);
    }
    map_chunk(values)
}

fn grad_all(x: &[f32], grad: &mut [f32]) {
    #[cfg(feature = "rayon")]
    if grad.len() >= 2 * CHUNK {
        use rayon::prelude::*;
        return grad
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(g, x)| grad_chunk(x, g));
    }
    grad_chunk(x, grad)
}

/// An f32 tensor with contiguous storage of exactly its elements (copied if needed).
fn contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    tensor.into_contiguous()
}

/// GELU (exact, erf-based), as upstream's `ActivationOps::gelu`.
pub(crate) fn gelu(tensor: FlexTensor) -> FlexTensor {
    if tensor.dtype() != DType::F32 {
        return unary_op(
            tensor,
            |x: f32| 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2)),
            |x: f64| 0.5 * x * (1.0 + erf_f64(x / core::f64::consts::SQRT_2)),
        );
    }
    let mut out = contiguous_f32(tensor);
    if !out.is_unique() {
        let values: alloc::vec::Vec<f32> = out.storage::<f32>().to_vec();
        out = FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(out.layout().shape().clone()),
            DType::F32,
        );
    }
    map_all(out.storage_mut::<f32>());
    out
}

/// `grad · gelu'(x)`, as upstream's `ActivationOps::gelu_backward`.
pub(crate) fn gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let same_shape = x.layout().shape() == grad.layout().shape();
    if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || !same_shape {
        let sqrt2 = core::f64::consts::SQRT_2;
        let inv_sqrt_2pi = 1.0 / (2.0 * core::f64::consts::PI).sqrt();
        return binary_op(
            x,
            grad,
            move |x: f32, g| gelu_grad_one(x, g),
            move |x: f64, g| {
                let cdf = 0.5 * (1.0 + erf_f64(x / sqrt2));
                g * (cdf + x * inv_sqrt_2pi * (-0.5 * x * x).exp())
            },
            None,
        );
    }
    let x = contiguous_f32(x);
    let mut grad = contiguous_f32(grad);
    if !grad.is_unique() {
        let values: alloc::vec::Vec<f32> = grad.storage::<f32>().to_vec();
        grad = FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(grad.layout().shape().clone()),
            DType::F32,
        );
    }
    grad_all(x.storage::<f32>(), grad.storage_mut::<f32>());
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libm over [-10, 10] and the extremes.
    #[test]
    fn gelu_and_its_gradient_match_libm() {
        let mut worst = (0.0f32, 0.0f32);
        let mut x = -10.0f32;
        while x <= 10.0 {
            let exact = 0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
            worst.0 = worst.0.max((gelu_one(x) - exact).abs());
            let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * libm::expf(-0.5 * x * x);
            worst.1 = worst.1.max((gelu_grad_one(x, 1.0) - (cdf + x * pdf)).abs());
            x += 1.0 / 512.0;
        }
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "max |error| {worst:?}");
        assert_eq!(gelu_one(-1e30), 0.0);
        assert_eq!(gelu_one(1e30), 1e30);
        assert!(gelu_one(f32::NAN).is_nan());
        for x in [-87.0f32, -20.0, -1.0, -0.25, 0.0] {
            let rel = (exp_nonpositive(x) - libm::expf(x)).abs() / libm::expf(x);
            assert!(rel < 3e-7, "exp({x}): relative error {rel}");
        }
    }
}
