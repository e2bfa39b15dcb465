//! CPU kernels the flex backend uses where burn's own ops move more memory than the math
//! needs: projections against weights packed once ([`PackedMatrix`]), causal attention
//! reading the paged cache in place ([`PagedAttention`]), and single-pass SwiGLU, RMSNorm
//! and RoPE.

mod activation;
mod attention;
mod elementwise;
mod microkernel;
mod packed;
pub mod quant;
mod workers;

pub use activation::swiglu;
pub use attention::{write_keys_transposed, KeyLayout, PagedAttention};
pub use elementwise::{rms_norm, rotate_heads};
pub use packed::PackedMatrix;
pub use workers::run_with_workers_awake;

use crate::model::HostTensor;

/// A projection's weight as flex multiplies it: f32 packed into panels, or the checkpoint's
/// quantized blocks read in place, optionally with the packed f32 beside them.
#[derive(Debug)]
pub enum CpuProjection {
    /// The f32 expansion, packed once.
    Packed(PackedMatrix),
    /// GGUF blocks, for one-row steps; `packed`, when kept, for the others.
    Blocks {
        /// The checkpoint's blocks.
        blocks: quant::QuantMatrix,
        /// Their f32 expansion.
        packed: Option<PackedMatrix>,
    },
}

impl CpuProjection {
    /// `x @ W^T` for `x` row-major `[n, in_features]`; returns `[n, out_features]`. Blocks
    /// serve one row (where reading the weights is the cost) and packed f32 more rows (where
    /// its register-blocked kernel wins): `docs/BENCHMARKS.md`, "Quantized projections".
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        match self {
            CpuProjection::Packed(p) => p.matmul(x),
            CpuProjection::Blocks {
                blocks,
                packed: Some(packed),
            } if x.len() > blocks.cols() => packed.matmul(x),
            CpuProjection::Blocks { blocks, .. } => blocks.matmul(x),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            CpuProjection::Packed(p) => p.out_features(),
            CpuProjection::Blocks { blocks, .. } => blocks.rows(),
        }
    }
}

/// The embedding table as flex looks rows up in it: f32, or the checkpoint's blocks with each
/// looked-up row expanded (the table is the largest weight, and a step reads one row per token).
#[derive(Debug)]
pub enum CpuEmbedding {
    /// Row-major `[vocab, hidden]`.
    F32(HostTensor),
    /// `[vocab, hidden]` in blocks.
    Blocks(quant::QuantMatrix),
}

impl CpuEmbedding {
    /// The rows of `ids`, end to end. Ids are below the vocabulary size (batches are validated
    /// before the model runs).
    pub fn lookup(&self, ids: &[u32]) -> Vec<f32> {
        match self {
            CpuEmbedding::F32(table) => {
                let hidden = table.shape[1];
                ids.iter()
                    .flat_map(|&id| &table.data[id as usize * hidden..][..hidden])
                    .copied()
                    .collect()
            }
            CpuEmbedding::Blocks(table) => table.dequantize_rows(ids),
        }
    }
}

/// Whether this CPU runs the AVX-512 builds of the kernels (checked once per call site; the
/// standard library caches the answer).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Hints that `data` will be read soon: one prefetch per 64-byte line.
#[inline(always)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: `offset` is inside `data`, and a prefetch never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.add(offset),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Whether this CPU runs the AVX2 builds of the portable loops.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An output buffer shared by parallel tasks that each write their own disjoint cells.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used by tasks writing disjoint cells, while the buffer outlives them (each
// user says which cells are whose).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// `x @ W^T` in f64, rounded once: what every matmul kernel is checked against. `x` is
/// `[n, k]`, `w` `[out_features, k]`; returns `[n, out_features]`.
#[cfg(test)]
fn naive_matmul(x: &[f32], w: &[f32], out_features: usize, k: usize) -> Vec<f32> {
    let n = x.len() / k;
    let mut out = vec![0.0; n * out_features];
    for r in 0..n {
        for j in 0..out_features {
            out[r * out_features + j] = (0..k)
                .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Deterministic test values in [-1, 1) (xorshift), without a random-number dependency.
#[cfg(test)]
fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
