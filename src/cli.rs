//! Command-line arguments shared by the `waypoint` subcommands.

use std::str::FromStr;

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU, with burn's flex backend.
    Cpu,
    /// CUDA device N (needs the `cuda` cargo feature).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How big the KV cache pool is.
#[derive(clap::Args, Clone, Debug)]
pub struct CacheArgs {
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = crate::model::DEFAULT_BLOCK_SIZE, value_parser = clap::value_parser!(usize))]
    pub block_size: usize,
    /// Number of KV cache blocks (overrides --kv-cache-memory).
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,
    /// KV cache size: bytes (suffixes K, M, G accepted, e.g. 512M) or a fraction of the
    /// memory available now (e.g. 0.3).
    #[arg(long, default_value = "1G", value_parser = parse_memory)]
    pub kv_cache_memory: Memory,
}

/// An amount of memory: absolute, or relative to what is available when the pool is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Memory {
    /// This many bytes.
    Bytes(usize),
    /// This fraction (0, 1] of the memory available now.
    Fraction(f64),
}

/// Parses `512M`, `2G`, `1073741824` or a fraction such as `0.3`.
pub fn parse_memory(s: &str) -> Result<Memory, String> {
    if s.contains('.') {
        return match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(Memory::Fraction(f)),
            _ => Err(format!("`{s}` is not a fraction in (0, 1]")),
        };
    }
    parse_bytes(s).map(Memory::Bytes)
}

/// `MemAvailable` from /proc/meminfo (Linux), in bytes.
fn available_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Scheduling and admission settings of `waypoint serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Most tokens computed in one step, over all sequences.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Most requests running at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Split long prompts over several steps (`--enable-chunked-prefill false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_chunked_prefill: bool,
    /// Reuse cached KV blocks of shared prompt prefixes (`--enable-prefix-caching false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_prefix_caching: bool,
    /// Order of the waiting queue: fcfs, or priority (a request's `priority`, lower first).
    #[arg(long, default_value = "fcfs", value_parser = ["fcfs", "priority"])]
    pub scheduling_policy: String,
    /// Requests allowed to wait; more are refused with 429.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting_requests: usize,
    /// Longest prompt + output (default: the model's context).
    #[arg(long)]
    pub max_model_len: Option<usize>,
}

/// Why the serving flags do not fit together (or the model), found before the model loads.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Fewer tokens per step than sequences per step: some sequence would never run.
    #[error(
        "--max-num-batched-tokens ({budget}) must be at least --max-num-seqs ({max_num_seqs})"
    )]
    BudgetBelowMaxNumSeqs {
        /// `--max-num-batched-tokens`.
        budget: usize,
        /// `--max-num-seqs`.
        max_num_seqs: usize,
    },
    /// Nothing fits a context of 0.
    #[error("--max-model-len must be positive")]
    ZeroMaxModelLen,
    /// Beyond what the model was trained for.
    #[error("--max-model-len {given} exceeds the model's context of {context}")]
    MaxModelLenAboveContext {
        /// `--max-model-len`.
        given: usize,
        /// The model's `max_position_embeddings`.
        context: usize,
    },
    /// The scheduler's own rules (written once, in `SchedulerConfig::validate`).
    #[error("scheduler flags: {0}")]
    Scheduler(#[from] crate::engine::scheduler::SchedulerConfigError),
    /// Blocks of 0 or of more than 1024 tokens.
    #[error("--block-size {0} must be in 1..=1024")]
    BlockSize(usize),
    /// A pool of no blocks.
    #[error("--num-kv-blocks must be positive")]
    ZeroKvBlocks,
    /// A fraction of memory cannot be resolved without `/proc/meminfo`.
    #[error("--kv-cache-memory as a fraction needs /proc/meminfo; give bytes")]
    NoMemInfo,
}

impl EngineArgs {
    /// The engine configuration for `model` with cache `pool`, checking the flags together:
    /// the only place they are checked, before the model loads.
    pub fn config(
        &self,
        model: &crate::model::LlamaConfig,
        pool: crate::model::KvCacheConfig,
    ) -> Result<crate::engine::EngineConfig, ConfigError> {
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(ConfigError::BudgetBelowMaxNumSeqs {
                budget: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
            });
        }
        let max_model_len = match self.max_model_len {
            Some(0) => return Err(ConfigError::ZeroMaxModelLen),
            Some(given) if given > model.max_position_embeddings => {
                return Err(ConfigError::MaxModelLenAboveContext {
                    given,
                    context: model.max_position_embeddings,
                })
            }
            Some(n) => n,
            None => model.max_position_embeddings,
        };
        let policy = match self.scheduling_policy.as_str() {
            "priority" => crate::engine::SchedulingPolicy::Priority,
            _ => crate::engine::SchedulingPolicy::Fcfs,
        };
        let scheduler = crate::engine::SchedulerConfig {
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            enable_chunked_prefill: self.enable_chunked_prefill,
            policy,
            block_size: pool.block_size,
            num_blocks: pool.num_blocks,
            enable_prefix_caching: self.enable_prefix_caching,
            max_model_len,
        };
        // Zero sequences, a budget below the longest sequence without chunked prefill, ...
        scheduler.validate()?;
        Ok(crate::engine::EngineConfig {
            scheduler,
            max_waiting_requests: self.max_waiting_requests,
            step_tracing: None,
        })
    }
}

impl CacheArgs {
    /// The pool these arguments describe for `model`.
    pub fn pool(
        &self,
        model: &crate::model::LlamaConfig,
    ) -> Result<crate::model::KvCacheConfig, ConfigError> {
        if self.block_size == 0 || self.block_size > 1024 {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        Ok(match self.num_kv_blocks {
            Some(0) => return Err(ConfigError::ZeroKvBlocks),
            Some(n) => crate::model::KvCacheConfig::with_blocks(self.block_size, n),
            None => {
                let bytes = match self.kv_cache_memory {
                    Memory::Bytes(bytes) => bytes,
                    Memory::Fraction(f) => {
                        let available = available_memory().ok_or(ConfigError::NoMemInfo)?;
                        (available as f64 * f) as usize
                    }
                };
                crate::model::KvCacheConfig::with_bytes(self.block_size, bytes, model)
            }
        })
    }
}

/// Parses `1024`, `64K`, `512M`, `2G` (binary multiples).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, multiplier) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}` is not a size in bytes (e.g. 268435456, 256M, 1G)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_memory("0.25"), Ok(Memory::Fraction(0.25)));
        assert_eq!(parse_memory("1G"), Ok(Memory::Bytes(1 << 30)));
        assert!(parse_memory("1.5").is_err());
    }
}
