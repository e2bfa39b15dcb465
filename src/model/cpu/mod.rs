//! CPU kernels the flex backend uses where burn's own ops move more memory than the math
//! needs: projections against weights packed once ([`PackedMatrix`]) and causal attention
//! reading the paged cache in place ([`PagedAttention`]).

mod activation;
mod attention;
mod microkernel;
mod packed;

pub use activation::swiglu;
pub use attention::{write_keys_transposed, KeyLayout, PagedAttention};
pub use packed::PackedMatrix;
