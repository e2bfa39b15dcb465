//! Rotary position embeddings applied at arbitrary per-token positions.
//!
//! Every head's dimension `d` is rotated with a partner dimension `partner(d)`:
//! `out[d] = x[d] * cos[d] + x[partner(d)] * signed_sin[d]`. The partner swap is a matmul
//! with a fixed permutation matrix, and cos/sin are laid out at full width for the batch,
//! so every elementwise op runs on contiguous, same-shape tensors (flex's fast path) instead
//! of strided slices of pairs.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::backend::ModelBackend;
use super::config::RopeStyle;

/// Frequencies for every position up to the model's context, kept on the host.
#[derive(Debug, Clone)]
pub struct RotaryTable<B: Backend> {
    /// `[max_positions * head_dim / 2]`
    cos: Vec<f32>,
    /// `[max_positions * head_dim / 2]`
    sin: Vec<f32>,
    head_dim: usize,
    style: RopeStyle,
    /// `[head_dim, head_dim]`: `x @ swap` puts each dimension's partner in its place.
    swap: Tensor<B, 2>,
    /// The model's float type, which the rows are made in.
    dtype: FloatDType,
}

/// cos/sin of one batch at full width, shared by every layer.
#[derive(Debug, Clone)]
pub struct RotaryRows<B: Backend> {
    /// `[num_tokens, num_rotated_heads * head_dim]`
    pub cos: Tensor<B, 2>,
    /// `[num_tokens, num_rotated_heads * head_dim]`, signed so that a plain add finishes the rotation.
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RotaryTable<B> {
    /// Builds the table; frequencies are computed in f64 so long contexts stay accurate.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        style: RopeStyle,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for i in 0..half {
                let inv_freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let mut swap = vec![0.0f32; head_dim * head_dim];
        for d in 0..head_dim {
            swap[partner(style, d, head_dim) * head_dim + d] = 1.0;
        }
        Self {
            cos,
            sin,
            head_dim,
            style,
            swap: Tensor::from_data(
                TensorData::new(swap, [head_dim, head_dim]),
                (device, dtype.into()),
            ),
            dtype,
        }
    }

    /// cos/sin rows for tokens at `positions`, for `num_heads` rotated heads side by side.
    /// Positions must be below the table's `max_positions` (the batch was validated).
    pub fn rows(&self, positions: &[usize], num_heads: usize, device: &B::Device) -> RotaryRows<B> {
        let hd = self.head_dim;
        let half = hd / 2;
        let width = num_heads * hd;
        let mut cos = Vec::with_capacity(positions.len() * width);
        let mut sin = Vec::with_capacity(positions.len() * width);
        let mut head_cos = vec![0.0f32; hd];
        let mut head_sin = vec![0.0f32; hd];
        for &pos in positions {
            let (c, s) = (
                &self.cos[pos * half..][..half],
                &self.sin[pos * half..][..half],
            );
            for d in 0..hd {
                let (i, first_of_pair) = match self.style {
                    RopeStyle::Interleaved => (d / 2, d % 2 == 0),
                    RopeStyle::Half => (d % half, d < half),
                };
                head_cos[d] = c[i];
                head_sin[d] = if first_of_pair { -s[i] } else { s[i] };
            }
            for _ in 0..num_heads {
                cos.extend_from_slice(&head_cos);
                sin.extend_from_slice(&head_sin);
            }
        }
        let shape = [positions.len(), width];
        let options = (device, self.dtype.into());
        RotaryRows {
            cos: Tensor::from_data(TensorData::new(cos, shape), options),
            sin: Tensor::from_data(TensorData::new(sin, shape), options),
        }
    }

    /// Width of a head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Which dimensions rotate together.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// Rotates every head of `x`, through [`ModelBackend::rotate_heads`].
    ///
    /// # Shapes
    /// - `x`: `[num_tokens, num_rotated_heads * head_dim]`, returned in the same shape
    pub fn apply(&self, x: Tensor<B, 2>, rows: &RotaryRows<B>) -> Tensor<B, 2>
    where
        B: ModelBackend,
    {
        B::rotate_heads(x, rows, self)
    }

    /// [`Self::apply`] with burn's tensor ops: [`ModelBackend::rotate_heads`]'s default.
    pub fn apply_with_tensor_ops(&self, x: Tensor<B, 2>, rows: &RotaryRows<B>) -> Tensor<B, 2> {
        let [n, width] = x.dims();
        let hd = self.head_dim;
        let partners = x
            .clone()
            .reshape([n * width / hd, hd])
            .matmul(self.swap.clone())
            .reshape([n, width]);
        x * rows.cos.clone() + partners * rows.sin.clone()
    }
}

/// The dimension that rotates together with `d`.
fn partner(style: RopeStyle, d: usize, head_dim: usize) -> usize {
    match style {
        RopeStyle::Interleaved => d ^ 1,
        RopeStyle::Half => (d + head_dim / 2) % head_dim,
    }
}
