//! Loading models: GGUF files, Hugging Face directories and the built-in tiny model.

pub mod tiny;
