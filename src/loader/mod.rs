//! Loading models: GGUF files, Hugging Face directories and the built-in tiny model.
//!
//! [`open`] reads a model's shape, tokenizer and a handle on its weights without touching the
//! device; [`ModelFiles::load`] then builds the model on a backend.

pub mod gguf;
mod gguf_model;
mod hf;
pub mod tiny;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use burn::tensor::FloatDType;

use crate::model::{Llama, LlamaConfig, ModelBackend, WeightError, WeightPolicy, WeightSource};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use gguf_model::GgufWeights;
pub use hf::SafetensorsWeights;

/// The name that selects the built-in tiny model.
pub const TINY_MODEL: &str = "tiny";

/// Why a model could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// What was asked for.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The GGUF reader rejected the file (it names the file, tensor and reason).
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// An architecture we cannot run.
    #[error("{}: unsupported architecture `{architecture}` (supported: llama, qwen2, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)", path.display())]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// What the file says.
        architecture: String,
    },
    /// Hyper-parameters that are missing, inconsistent or unsupported.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A weight is missing, misshapen or unreadable.
    #[error("{}: {source}", path.display())]
    Weight {
        /// The file.
        path: PathBuf,
        /// What is wrong with which tensor.
        source: WeightError,
    },
    /// The tokenizer could not be built.
    #[error("{}: {source}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: TokenizerError,
    },
}

/// A model's shape, tokenizer and weights, before anything is on the device.
pub struct ModelFiles {
    /// A short name for logs and `/v1/models`.
    pub name: String,
    /// Where it came from (`tiny` for the built-in model).
    pub path: PathBuf,
    /// The model's shape.
    pub config: LlamaConfig,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// Which projections keep the checkpoint's quantized blocks (`--weights`).
    pub weight_policy: WeightPolicy,
    weights: Box<dyn WeightSource + Send>,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Opens `spec`: `tiny`, a `.gguf` file, or a Hugging Face model directory.
pub fn open(spec: &str) -> Result<ModelFiles, LoadError> {
    if spec == TINY_MODEL {
        let tokenizer = Tokenizer::tiny();
        let config = tiny::tiny_config(tokenizer.vocab_size());
        return Ok(ModelFiles {
            name: TINY_MODEL.to_string(),
            path: PathBuf::from(TINY_MODEL),
            weight_policy: WeightPolicy::default(),
            weights: Box::new(tiny::TinyWeights::new(config.clone())),
            config,
            tokenizer,
        });
    }
    let path = PathBuf::from(spec);
    if !path.exists() {
        return Err(LoadError::NotFound { path });
    }
    if path.is_dir() {
        open_hf_dir(&path)
    } else {
        open_gguf(&path)
    }
}

fn model_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| path.display().to_string())
}

fn open_gguf(path: &Path) -> Result<ModelFiles, LoadError> {
    let file = gguf::GgufFile::open(path)?;
    let config = gguf_model::config(&file, path)?;
    let spec = gguf_model::tokenizer_spec(&file)?;
    let tokenizer = Tokenizer::from_gguf_spec(&spec).map_err(|source| LoadError::Tokenizer {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ModelFiles {
        name: model_name(path),
        path: path.to_path_buf(),
        config,
        tokenizer,
        weight_policy: WeightPolicy::default(),
        weights: Box::new(GgufWeights::new(file, path.to_path_buf())),
    })
}

fn open_hf_dir(dir: &Path) -> Result<ModelFiles, LoadError> {
    let config = hf::config(dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir).map_err(|source| LoadError::Tokenizer {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(ModelFiles {
        name: model_name(dir),
        path: dir.to_path_buf(),
        config,
        tokenizer,
        weight_policy: WeightPolicy::default(),
        weights: Box::new(SafetensorsWeights::open(dir)?),
    })
}

impl ModelFiles {
    /// Builds the model on `device` in `dtype` (or what the backend computes in instead:
    /// [`Llama::dtype`]), with a progress bar when stderr is a terminal.
    pub fn load<B: ModelBackend>(
        mut self,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Result<(Llama<B>, Tokenizer, String), LoadError> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(self.config.num_layers as u64 + 2);
            bar.set_style(
                indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(self.name.clone());
            bar
        });
        let started = std::time::Instant::now();
        let config = self.config.clone();
        let model = Llama::load(
            config,
            self.weights.as_mut(),
            device,
            dtype,
            self.weight_policy,
            &mut |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            },
        )
        .map_err(|source| LoadError::Weight {
            path: self.path.clone(),
            source,
        })?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let c = &self.config;
        tracing::info!(
            model = %self.name,
            architecture = %c.architecture,
            layers = c.num_layers,
            hidden = c.hidden_size,
            heads = c.num_heads,
            kv_heads = c.num_kv_heads,
            vocab = c.vocab_size,
            context = c.max_position_embeddings,
            parameters = c.num_parameters(),
            dtype = ?model.dtype(),
            weights = ?self.weight_policy,
            weight_bytes = model.weight_bytes(),
            load_seconds = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        Ok((model, self.tokenizer, self.name))
    }
}
