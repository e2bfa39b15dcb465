//! CPU kernels the flex backend uses where burn's own ops move more memory than the math
//! needs: projections against weights packed once ([`PackedMatrix`]), causal attention
//! reading the paged cache in place ([`PagedAttention`]), and single-pass SwiGLU, RMSNorm
//! and RoPE.

mod activation;
mod attention;
mod elementwise;
mod microkernel;
mod packed;

pub use activation::swiglu;
pub use attention::{write_keys_transposed, KeyLayout, PagedAttention};
pub use elementwise::{rms_norm, rotate_heads};
pub use packed::PackedMatrix;
