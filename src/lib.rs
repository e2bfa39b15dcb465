//! Waypoint: an LLM inference server in which every request can be followed from arrival to
//! last token. See `docs/ARCHITECTURE.md` for the code map.

pub mod bench;
pub mod cli;
pub mod engine;
pub mod generate;
pub mod journey_console;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod server;
pub mod telemetry;
pub mod tokenizer;
