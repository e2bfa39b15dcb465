//! Turning logits into tokens: parameters, the sampler and stop strings.

mod params;
mod sampler;
mod stop;

pub use params::{InvalidParam, SamplingParams, MAX_LOGPROBS, MAX_STOP_STRINGS};
pub use sampler::{SampledToken, Sampler};
pub use stop::{StopOutcome, StopStringMatcher};
