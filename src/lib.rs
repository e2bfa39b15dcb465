//! Waypoint: an LLM inference server in which every request can be followed from arrival to
//! last token. See `docs/ARCHITECTURE.md` for the code map.

pub mod loader;
pub mod model;
