use std::arch::x86_64::*;
#[target_feature(enable = "avx512f")]
pub unsafe fn peak512(iters: usize) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let a = _mm512_set1_ps(1.0000001);
    let b = _mm512_set1_ps(0.9999999);
    for _ in 0..iters {
        for j in 0..12 {
            acc[j] = _mm512_fmadd_ps(acc[j], a, b);
        }
    }
    let mut s = _mm512_set1_ps(0.0);
    for j in 0..12 {
        s = _mm512_add_ps(s, acc[j]);
    }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx2,fma")]
pub unsafe fn peak256(iters: usize) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(1.0000001);
    let b = _mm256_set1_ps(0.9999999);
    for _ in 0..iters {
        for j in 0..12 {
            acc[j] = _mm256_fmadd_ps(acc[j], a, b);
        }
    }
    let mut s = _mm256_set1_ps(0.0);
    for j in 0..12 {
        s = _mm256_add_ps(s, acc[j]);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}
