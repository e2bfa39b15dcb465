//! Turning logits into tokens: parameters and their validation, the sampler, and stop strings.
//!
//! Self-contained (no `crate::` paths) so it can be built and tested on its own.

mod params;
mod sampler;
mod stop;

pub use params::{
    InvalidParam, SamplingParams, DEFAULT_MAX_TOKENS, MAX_LOGPROBS, MAX_STOP_BYTES,
    MAX_STOP_STRINGS, MAX_STOP_STRING_BYTES, MAX_STOP_TOKEN_IDS, MIN_TEMPERATURE,
};
pub use sampler::{SampledToken, Sampler};
pub use stop::{StopOutcome, StopStringMatcher};
