//! The Llama-family model: it sees batches and block tables, never requests.

pub mod attention;
pub mod backend;
pub mod batch;
pub mod config;
pub mod cpu;
pub mod kv_cache;
mod llama;
mod rope;
pub mod weights;

pub use backend::{dense_half_cpu_device, DenseBackend, DenseCpu, DenseHalfCpu, ModelBackend};
pub use batch::{BatchError, ForwardBatch, LogitsWanted, SequenceSlice};
pub use config::{InvalidConfig, LlamaConfig, RopeStyle};
pub use kv_cache::{KvCacheConfig, PagedKvCache, DEFAULT_BLOCK_SIZE};
pub use llama::{ForwardError, Llama, Logits};
pub use weights::{HostTensor, ProjectionWeight, WeightError, WeightPolicy, WeightSource};
