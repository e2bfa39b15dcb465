//! RMSNorm and RoPE as single passes over rows.
//!
//! On flex each is several tensor ops (RMSNorm: square, mean, add, sqrt, reciprocal, two
//! multiplies; RoPE: a partner-permutation matmul, two multiplies, an add), each allocating
//! its output and dispatching on its own. At one decode token per step those fixed costs, 30
//! layers over, were a measurable share of the step.

use super::has_avx512;
use crate::model::config::RopeStyle;

/// `x * weight / sqrt(mean(x^2) + eps)` per row of `x`.
///
/// # Panics
/// If `x.len()` is not a multiple of `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    assert!(width > 0 && x.len().is_multiple_of(width), "row width");
    let mut out = vec![0.0f32; x.len()];
    for (out, row) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { rms_norm_row_avx512(row, weight, eps, out) };
            continue;
        }
        rms_norm_row(row, weight, eps, out);
    }
    out
}

/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_row_avx512(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_row(row, weight, eps, out);
}

#[inline(always)]
fn rms_norm_row(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // Sixteen partial sums so the sum vectorizes.
    let mut partial = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (p, v) in partial.iter_mut().zip(chunk) {
            *p += v * v;
        }
    }
    let mean = (partial.iter().sum::<f32>() + tail) / row.len() as f32;
    let inv_rms = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
        *o = v * inv_rms * w;
    }
}

/// Rotates every head of every row in place: `x[d] * cos[d] + x[partner(d)] * sin[d]`,
/// with `cos`/`sin` laid out like `x` (`sin` signed so the sum finishes the rotation).
///
/// # Panics
/// If the three slices differ in length or `head_dim` is odd or does not divide it.
pub fn rotate_heads(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle, head_dim: usize) {
    assert!(x.len() == cos.len() && x.len() == sin.len(), "rotary rows");
    assert!(head_dim >= 2 && head_dim.is_multiple_of(2) && x.len().is_multiple_of(head_dim));
    let half = head_dim / 2;
    for ((head, cos), sin) in x
        .chunks_exact_mut(head_dim)
        .zip(cos.chunks_exact(head_dim))
        .zip(sin.chunks_exact(head_dim))
    {
        match style {
            RopeStyle::Interleaved => {
                for ((pair, c), s) in head
                    .chunks_exact_mut(2)
                    .zip(cos.chunks_exact(2))
                    .zip(sin.chunks_exact(2))
                {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c[0] + b * s[0];
                    pair[1] = b * c[1] + a * s[1];
                }
            }
            RopeStyle::Half => {
                let (first, second) = head.split_at_mut(half);
                for (i, (a, b)) in first.iter_mut().zip(second.iter_mut()).enumerate() {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * cos[i] + x1 * sin[i];
                    *b = x1 * cos[half + i] + x0 * sin[half + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_its_definition() {
        let width = 37;
        let x: Vec<f32> = (0..2 * width)
            .map(|i| (i as f32 * 0.7).sin() * 3.0)
            .collect();
        let weight: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 * 0.01).collect();
        let got = rms_norm(&x, &weight, 1e-5);
        for (r, row) in x.chunks(width).enumerate() {
            let mean = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = row[j] as f64 / (mean + 1e-5).sqrt() * weight[j] as f64;
                let got = got[r * width + j] as f64;
                assert!((got - want).abs() < 1e-5, "{got} vs {want}");
            }
        }
        let mut portable = vec![0.0; width];
        rms_norm_row(&x[..width], &weight, 1e-5, &mut portable);
        assert_eq!(portable, got[..width]);
    }

    #[test]
    fn rotation_pairs_each_dimension_with_its_partner() {
        // One head of width 4; cos 1 and a signed sin of 1 swap partners with a sign.
        let cos = [0.0; 4];
        let sin = [-1.0, 1.0, -1.0, 1.0];
        let mut interleaved = [1.0, 2.0, 3.0, 4.0];
        rotate_heads(&mut interleaved, &cos, &sin, RopeStyle::Interleaved, 4);
        assert_eq!(interleaved, [-2.0, 1.0, -4.0, 3.0]);
        let mut half = [1.0, 2.0, 3.0, 4.0];
        rotate_heads(&mut half, &cos, &sin, RopeStyle::Half, 4);
        // Partners (0, 2) and (1, 3).
        assert_eq!(half, [-3.0, 4.0, -1.0, 2.0]);
    }
}
