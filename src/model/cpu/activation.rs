//! SwiGLU in one pass over the fused gate/up projection.
//!
//! flex computes `silu(gate) * up` as three full-size tensor ops, its `silu` calling libm's
//! `expf` per element; here each output element costs one vectorized exponential.

use rayon::prelude::*;

use super::attention::exp_nonpositive;
use super::{has_avx2, has_avx512};

/// Rows per parallel task: enough work to outweigh handing it to another thread.
const ROWS_PER_TASK: usize = 16;

/// `silu(gate) * up` for each row of `gate_up`, which holds `[gate | up]` side by side.
///
/// # Panics
/// If `gate_up.len()` is not a multiple of `2 * width`.
pub fn swiglu(gate_up: &[f32], width: usize) -> Vec<f32> {
    assert!(
        width > 0 && gate_up.len().is_multiple_of(2 * width),
        "gate/up width"
    );
    let rows = gate_up.len() / (2 * width);
    let mut out = vec![0.0f32; rows * width];
    let (use_avx512, use_avx2) = (has_avx512(), has_avx2());
    out.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(gate_up.par_chunks(ROWS_PER_TASK * 2 * width))
        .for_each(|(out, gate_up)| {
            for (out, row) in out
                .chunks_exact_mut(width)
                .zip(gate_up.chunks_exact(2 * width))
            {
                let (gate, up) = row.split_at(width);
                #[cfg(target_arch = "x86_64")]
                if use_avx512 {
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { swiglu_row_avx512(gate, up, out) };
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if use_avx2 {
                    // SAFETY: the CPU has AVX2 and FMA.
                    unsafe { swiglu_row_avx2(gate, up, out) };
                    continue;
                }
                let _ = use_avx2;
                swiglu_row(gate, up, out);
            }
        });
    out
}

/// [`swiglu_row`] compiled for AVX-512.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn swiglu_row_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_row(gate, up, out);
}

/// [`swiglu_row`] compiled for AVX2: the portable build calls libm's `rintf` per element
/// (x86-64's baseline has no rounding instruction) and does not vectorize; it was about 4% of
/// a one-stream step on an AVX2 machine.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_row_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_row(gate, up, out);
}

#[inline(always)]
fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        // sigmoid from e^-|g| (never overflows): 1 / (1 + e) for g >= 0, e / (1 + e) below.
        let e = exp_nonpositive(-g.abs());
        let sigmoid = if g >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *o = g * sigmoid * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_silu_times_up() {
        let width = 37;
        let gate_up: Vec<f32> = (0..3 * 2 * width)
            .map(|i| (i as f32 * 0.73).sin() * 12.0)
            .collect();
        let got = swiglu(&gate_up, width);
        for (r, row) in gate_up.chunks(2 * width).enumerate() {
            for j in 0..width {
                let (g, u) = (row[j] as f64, row[width + j] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                let got = got[r * width + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }

    /// CPUs without AVX-512 or AVX2 run the portable loop: it must agree with the dispatched
    /// one (a vector build on most x86 machines).
    #[test]
    fn portable_row_agrees_with_the_dispatched_one() {
        let gate: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.37).collect();
        let up: Vec<f32> = (0..100).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut portable = vec![0.0; 100];
        swiglu_row(&gate, &up, &mut portable);
        let fused: Vec<f32> = gate.iter().chain(&up).copied().collect();
        let dispatched = swiglu(&fused, 100);
        for (p, d) in portable.iter().zip(&dispatched) {
            assert!((p - d).abs() <= 1e-6 * p.abs().max(1.0), "{p} vs {d}");
        }
    }

    #[test]
    fn extreme_gates_stay_finite() {
        let out = swiglu(&[-1e30, 500.0, -500.0, 0.0, 2.0, 2.0, 2.0, 2.0], 4);
        assert_eq!(out[0], -0.0);
        assert_eq!(out[1], 1000.0);
        assert_eq!(out[2], -0.0);
        assert_eq!(out[3], 0.0);
    }
}
