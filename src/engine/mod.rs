//! The serving engine: scheduling, the KV block manager and the loop that runs the model.
//! It knows nothing of HTTP or JSON; the server talks to it through [`EngineHandle`].

mod core;
pub mod handle;
pub mod journey;
pub mod kv_cache;
pub mod output;
pub mod queue;
pub mod request;
mod runner;
pub mod scheduler;
pub mod step_trace;

pub use core::{start, EngineConfig, EngineStats, RunningEngine};
pub use handle::*;
pub use queue::SchedulingPolicy;
pub use runner::{BurnRunner, ModelRunner};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use step_trace::StepTracingConfig;
