//! The serving engine: scheduling, the KV block manager and the loop that runs the model.
//! It knows nothing of HTTP or JSON; the server talks to it through [`EngineHandle`].

mod core;
pub mod handle;
pub mod inspect;
pub mod journey;
pub mod kv_cache;
pub mod output;
pub mod output_processor;
pub mod queue;
pub mod request;
pub mod retention;
mod runner;
pub mod scheduler;
pub mod step_trace;
pub mod types;

pub use core::{start, EngineConfig, RunningEngine, StartError};
pub use handle::*;
pub use output_processor::{OutputProcessor, OutputSink};
pub use queue::SchedulingPolicy;
pub use runner::{BurnRunner, ExecuteError, ModelRunner};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use step_trace::StepTracingConfig;
pub use types::{max_sequence_len, EngineStats, FinishReason};
