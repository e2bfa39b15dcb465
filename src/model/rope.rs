//! Rotary position embeddings applied at arbitrary per-token positions.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::RopeStyle;

/// Precomputed cos/sin for every position up to the model's context.
#[derive(Debug, Clone)]
pub struct RotaryTable<B: Backend> {
    /// `[max_positions, head_dim / 2]`
    cos: Tensor<B, 2>,
    /// `[max_positions, head_dim / 2]`
    sin: Tensor<B, 2>,
    style: RopeStyle,
}

/// cos/sin rows picked for the positions of one batch, shared by every layer.
#[derive(Debug, Clone)]
pub struct RotaryRows<B: Backend> {
    /// `[num_tokens, 1, head_dim / 2]`
    cos: Tensor<B, 3>,
    /// `[num_tokens, 1, head_dim / 2]`
    sin: Tensor<B, 3>,
}

impl<B: Backend> RotaryTable<B> {
    /// Builds the table; frequencies are computed in f64 so long contexts stay accurate.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        style: RopeStyle,
        device: &B::Device,
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
        let shape = [max_positions, half];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            style,
        }
    }

    /// Picks the rows for `positions` (`[num_tokens]`).
    pub fn rows(&self, positions: Tensor<B, 1, Int>) -> RotaryRows<B> {
        let n = positions.dims()[0];
        let half = self.cos.dims()[1];
        RotaryRows {
            cos: self
                .cos
                .clone()
                .select(0, positions.clone())
                .reshape([n, 1, half]),
            sin: self.sin.clone().select(0, positions).reshape([n, 1, half]),
        }
    }

    /// Rotates every head of `x`.
    ///
    /// # Shapes
    /// - `x`: `[num_tokens, num_heads, head_dim]`, returned in the same shape
    pub fn apply(&self, x: Tensor<B, 3>, rows: &RotaryRows<B>) -> Tensor<B, 3> {
        let [n, heads, head_dim] = x.dims();
        let half = head_dim / 2;
        let (cos, sin) = (rows.cos.clone(), rows.sin.clone());
        match self.style {
            RopeStyle::Interleaved => {
                let pairs = x.reshape([n, heads, half, 2]);
                let even = pairs.clone().narrow(3, 0, 1).reshape([n, heads, half]);
                let odd = pairs.narrow(3, 1, 1).reshape([n, heads, half]);
                let rotated_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
                let rotated_odd = even * sin + odd * cos;
                Tensor::stack::<4>(vec![rotated_even, rotated_odd], 3).reshape([n, heads, head_dim])
            }
            RopeStyle::Half => {
                let first = x.clone().narrow(2, 0, half);
                let second = x.narrow(2, half, half);
                let rotated_first = first.clone() * cos.clone() - second.clone() * sin.clone();
                let rotated_second = second * cos + first * sin;
                Tensor::cat(vec![rotated_first, rotated_second], 2)
            }
        }
    }
}
