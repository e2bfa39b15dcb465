//! Command-line arguments shared by the `waypoint` subcommands.

use std::str::FromStr;

use burn::tensor::FloatDType;

use crate::model::ModelBackend;

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

/// What the model stores its weights, activations and KV cache in (`--dtype`).
///
/// Every value is accepted on every device, so a command line does not depend on the machine;
/// a backend that computes in another type serves in that one ([`model_dtype`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    /// f32 on the CPU, bf16 on cuda (f32 on a GPU without bf16).
    #[default]
    Auto,
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// The float type asked for on `device`.
    pub fn requested(self, device: Device) -> FloatDType {
        match (self, device) {
            (Dtype::Auto, Device::Cpu) | (Dtype::F32, _) => FloatDType::F32,
            (Dtype::Auto, Device::Cuda(_)) | (Dtype::Bf16, _) => FloatDType::BF16,
            (Dtype::F16, _) => FloatDType::F16,
        }
    }
}

/// How a checkpoint's quantized (and F16/BF16) projections are held on the CPU (`--weights`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weights {
    /// The file's blocks only, read in place by every step (the least memory).
    #[default]
    Native,
    /// The blocks for one-token steps, and their f32 expansion beside them for the rest (the
    /// fastest batches, for the f32 copy's memory).
    Auto,
    /// Every projection expanded to f32.
    F32,
}

impl From<Weights> for crate::model::WeightPolicy {
    fn from(weights: Weights) -> Self {
        match weights {
            Weights::Auto => Self::Auto,
            Weights::F32 => Self::F32,
            Weights::Native => Self::Native,
        }
    }
}

/// What backend `B` will store and compute in for `--dtype choice` on `device` (`which`, as
/// the user named it), with one warning when that is not what was asked for: flex computes in
/// f32 whatever is asked. `auto` falls back to f32 on a GPU without bf16 (before Ampere).
pub fn model_dtype<B: ModelBackend>(
    choice: Dtype,
    which: Device,
    device: &B::Device,
) -> FloatDType {
    let mut requested = choice.requested(which);
    if choice == Dtype::Auto && !B::supports_dtype(device, requested.into()) {
        requested = FloatDType::F32;
    }
    let dtype = B::compute_dtype(requested);
    if dtype != requested {
        tracing::warn!(
            requested = ?requested,
            serving = ?dtype,
            device = %which,
            "the CPU kernels compute in f32 only; the model is served in f32"
        );
    }
    dtype
}

/// How big the KV cache pool is.
#[derive(clap::Args, Clone, Debug)]
pub struct CacheArgs {
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = crate::model::DEFAULT_BLOCK_SIZE, value_parser = clap::value_parser!(usize))]
    pub block_size: usize,
    /// Number of KV cache blocks (overrides --kv-cache-memory; at most 2^31).
    #[arg(long, value_parser = bounded("--num-kv-blocks", 1, MAX_KV_BLOCKS))]
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
    meminfo("MemAvailable:")
}

/// `MemTotal` from /proc/meminfo (Linux), in bytes: the physical memory.
fn physical_memory() -> Option<usize> {
    meminfo("MemTotal:")
}

fn meminfo(field: &str) -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Most KV cache blocks: block ids are `u32`, and far more than any memory holds.
pub const MAX_KV_BLOCKS: usize = 1 << 31;

/// A parser for a count flag that must lie in `min..=max`; its error names the flag and the
/// bounds, so that a value like `18446744073709551615` is refused before anything is sized
/// from it.
pub fn bounded(
    flag: &'static str,
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let value: u128 = s
            .trim()
            .parse()
            .map_err(|_| format!("{flag} takes a whole number in {min}..={max}, got `{s}`"))?;
        usize::try_from(value)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("{flag} must be in {min}..={max}, got {s}"))
    }
}

/// Largest `--max-request-bytes`: bodies are buffered whole, so this bounds what one request
/// can make the server hold.
pub const MAX_REQUEST_BYTES: usize = 1 << 30;

/// Parses `--max-request-bytes` (a size, at most [`MAX_REQUEST_BYTES`]).
pub fn parse_request_bytes(s: &str) -> Result<usize, String> {
    let bytes = parse_bytes(s)?;
    if bytes > MAX_REQUEST_BYTES {
        return Err(format!(
            "--max-request-bytes must be at most {MAX_REQUEST_BYTES} (1G), got {bytes}"
        ));
    }
    Ok(bytes)
}

/// Parses `--body-min-rate`: bytes per second, with the suffixes of [`parse_bytes`], at
/// most 1G.
pub fn parse_rate(s: &str) -> Result<usize, String> {
    let rate = parse_bytes(s)?;
    if rate > 1 << 30 {
        return Err(format!(
            "--body-min-rate must be at most 1G bytes per second, got {rate}"
        ));
    }
    Ok(rate)
}

/// Most seconds a step-tracing span may stay open: a day.
pub const MAX_SPAN_WINDOW_SECS: f64 = 86_400.0;

/// Parses `--step-tracing-span-window`: seconds in (0, [`MAX_SPAN_WINDOW_SECS`]].
pub fn parse_span_window(s: &str) -> Result<f64, String> {
    let window: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("--step-tracing-span-window takes seconds, got `{s}`"))?;
    if !(window.is_finite() && window > 0.0 && window <= MAX_SPAN_WINDOW_SECS) {
        return Err(format!(
            "--step-tracing-span-window must be in (0, {MAX_SPAN_WINDOW_SECS}] seconds, got {s}"
        ));
    }
    Ok(window)
}

/// The positions this server will serve: `--max-model-len` if given (the engine refuses one
/// beyond the model's context), else the model's context, but never more than the KV pool
/// holds. Per-position buffers such as the RoPE table are sized from this, not from the
/// checkpoint's claim, so a header announcing four billion positions costs nothing.
pub fn served_context(
    model_context: usize,
    max_model_len: Option<usize>,
    pool: &crate::model::KvCacheConfig,
) -> usize {
    match max_model_len {
        // Left as asked when it exceeds the model, so the engine's check reports it.
        Some(n) => n.min(model_context),
        None => model_context.min(pool.num_slots()),
    }
}

/// The pool one `generate` request needs: room for `tokens` (its prompt and the most it may
/// generate), in whole blocks, but never more than `pool` (what the flags allow). A pool
/// sized for a server would only cost memory here: one request reuses nothing across runs.
pub fn pool_for_one_request(
    pool: crate::model::KvCacheConfig,
    tokens: usize,
) -> crate::model::KvCacheConfig {
    let blocks = tokens.div_ceil(pool.block_size).max(1);
    crate::model::KvCacheConfig {
        num_blocks: blocks.min(pool.num_blocks),
        ..pool
    }
}

/// Scheduling and admission settings of `waypoint serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Most tokens computed in one step, over all sequences.
    #[arg(long, default_value_t = 2048, value_parser = bounded("--max-num-batched-tokens", 1, 1 << 20))]
    pub max_num_batched_tokens: usize,
    /// Most requests running at once.
    #[arg(long, default_value_t = 64, value_parser = bounded("--max-num-seqs", 1, 1 << 16))]
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
    /// Requests allowed to wait; more are refused with 429 (at least 1: with none, every
    /// request would be refused).
    #[arg(long, default_value_t = 1024, value_parser = bounded("--max-waiting-requests", 1, 1 << 20))]
    pub max_waiting_requests: usize,
    /// Longest prompt + output (default: the model's context, or what the KV cache holds
    /// if less; at most 2^20).
    #[arg(long, value_parser = bounded("--max-model-len", 1, 1 << 20))]
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
    /// More blocks than block ids.
    #[error("--num-kv-blocks must be at most {max}, got {given}")]
    TooManyKvBlocks {
        /// `--num-kv-blocks`.
        given: usize,
        /// The most block ids there are.
        max: usize,
    },
    /// `--kv-cache-memory` resolves to more blocks than there are block ids.
    #[error(
        "--kv-cache-memory makes {blocks} blocks, more than the {max} block ids; give less \
         memory or a larger --block-size"
    )]
    PoolBlocksOverflow {
        /// Blocks the memory would hold.
        blocks: usize,
        /// The most block ids there are.
        max: usize,
    },
    /// The pool does not fit in physical memory (the message gives the figures).
    #[error("{0}")]
    PoolTooLarge(String),
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
        dtype: FloatDType,
    ) -> Result<crate::model::KvCacheConfig, ConfigError> {
        if self.block_size == 0 || self.block_size > 1024 {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        let pool = match self.num_kv_blocks {
            Some(0) => return Err(ConfigError::ZeroKvBlocks),
            Some(n) if n > MAX_KV_BLOCKS => {
                return Err(ConfigError::TooManyKvBlocks {
                    given: n,
                    max: MAX_KV_BLOCKS,
                })
            }
            Some(n) => {
                crate::model::KvCacheConfig::with_blocks(self.block_size, n).stored_as(dtype)
            }
            None => {
                let bytes = match self.kv_cache_memory {
                    Memory::Bytes(bytes) => bytes,
                    Memory::Fraction(f) => {
                        let available = available_memory().ok_or(ConfigError::NoMemInfo)?;
                        (available as f64 * f) as usize
                    }
                };
                crate::model::KvCacheConfig::with_bytes(self.block_size, bytes, model, dtype)
            }
        };
        check_fits_in_memory(&pool, model, physical_memory()).map_err(ConfigError::PoolTooLarge)?;
        if pool.num_blocks > MAX_KV_BLOCKS {
            return Err(ConfigError::PoolBlocksOverflow {
                blocks: pool.num_blocks,
                max: MAX_KV_BLOCKS,
            });
        }
        Ok(pool)
    }
}

/// Refuses a KV pool that cannot fit in physical memory (`physical`, when known): the
/// allocation would abort the process, or swap it to a halt, long after the flags were read.
fn check_fits_in_memory(
    pool: &crate::model::KvCacheConfig,
    model: &crate::model::LlamaConfig,
    physical: Option<usize>,
) -> Result<(), String> {
    let bytes = pool
        .num_blocks
        .checked_mul(pool.block_size)
        .and_then(|slots| slots.checked_mul(pool.bytes_per_token(model)));
    let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
    match (bytes, physical) {
        (None, _) => Err(format!(
            "the KV cache of {} blocks of {} tokens at {} bytes per token does not fit in memory \
             (its size overflows); lower --num-kv-blocks or --kv-cache-memory",
            pool.num_blocks,
            pool.block_size,
            pool.bytes_per_token(model)
        )),
        (Some(bytes), Some(physical)) if bytes > physical => Err(format!(
            "the KV cache needs {bytes} bytes ({:.1} GiB: {} blocks of {} tokens at {} bytes per \
             token), more than this machine's {physical} bytes ({:.1} GiB) of physical memory; \
             lower --num-kv-blocks or --kv-cache-memory",
            gib(bytes),
            pool.num_blocks,
            pool.block_size,
            pool.bytes_per_token(model),
            gib(physical)
        )),
        _ => Ok(()),
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
    fn auto_dtype_is_f32_on_the_cpu_and_bf16_on_cuda_and_the_cpu_computes_in_f32() {
        assert_eq!(Dtype::Auto.requested(Device::Cpu), FloatDType::F32);
        assert_eq!(Dtype::Auto.requested(Device::Cuda(1)), FloatDType::BF16);
        assert_eq!(Dtype::F16.requested(Device::Cpu), FloatDType::F16);
        assert_eq!(Dtype::Bf16.requested(Device::Cpu), FloatDType::BF16);
        assert_eq!(Dtype::F32.requested(Device::Cuda(0)), FloatDType::F32);
        for choice in [Dtype::Auto, Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let served =
                model_dtype::<burn::backend::Flex>(choice, Device::Cpu, &Default::default());
            assert_eq!(served, FloatDType::F32, "{choice:?}");
        }
        let half_device = crate::model::dense_half_cpu_device();
        let dense =
            model_dtype::<crate::model::DenseHalfCpu>(Dtype::Bf16, Device::Cpu, &half_device);
        assert_eq!(dense, FloatDType::BF16);
    }

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

#[cfg(test)]
mod bound_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        cache: CacheArgs,
    }

    fn refused(args: &[&str]) -> String {
        let mut argv = vec!["waypoint"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn numeric_flags_out_of_range_are_refused_naming_the_flag_and_the_limit() {
        for (args, flag, limit) in [
            (
                &["--num-kv-blocks", "10000000000"][..],
                "--num-kv-blocks",
                "2147483648",
            ),
            (
                &["--num-kv-blocks", "18446744073709551615"],
                "--num-kv-blocks",
                "2147483648",
            ),
            (&["--num-kv-blocks", "0"], "--num-kv-blocks", "1..="),
            (
                &["--max-waiting-requests", "0"],
                "--max-waiting-requests",
                "1..=",
            ),
            (
                &["--max-num-seqs", "99999999999999999999999"],
                "--max-num-seqs",
                "65536",
            ),
            (
                &["--max-num-batched-tokens=-1"],
                "--max-num-batched-tokens",
                "1..=",
            ),
            (
                &["--max-model-len", "4294967296"],
                "--max-model-len",
                "1048576",
            ),
        ] {
            let message = refused(args);
            assert!(
                message.contains(flag) && message.contains(limit),
                "{args:?}: {message}"
            );
        }
        let ok = Flags::try_parse_from(["waypoint", "--num-kv-blocks", "2147483648"]).unwrap();
        assert_eq!(ok.cache.num_kv_blocks, Some(MAX_KV_BLOCKS));
    }

    #[test]
    fn span_windows_rates_and_body_sizes_are_bounded() {
        assert!(parse_span_window("1e300").unwrap_err().contains("86400"));
        assert!(parse_span_window("NaN").is_err());
        assert!(parse_span_window("-1").is_err());
        assert_eq!(parse_span_window("0.5"), Ok(0.5));
        assert!(parse_request_bytes("2G")
            .unwrap_err()
            .contains("--max-request-bytes"));
        assert_eq!(parse_request_bytes("4M"), Ok(4 << 20));
        assert!(parse_rate("4G").unwrap_err().contains("--body-min-rate"));
        assert!(parse_bytes("18446744073709551615G").is_err());
    }

    #[test]
    fn a_kv_pool_larger_than_physical_memory_is_refused_with_the_figures() {
        let model = crate::loader::tiny::tiny_config(512);
        let per_token = model.kv_bytes_per_token(FloatDType::F32);
        let pool = crate::model::KvCacheConfig::with_blocks(16, 1 << 20);
        let needed = (1usize << 20) * 16 * per_token;
        let err = check_fits_in_memory(&pool, &model, Some(1 << 30)).unwrap_err();
        assert!(err.contains(&needed.to_string()), "{err}");
        assert!(err.contains(&(1usize << 30).to_string()), "{err}");
        assert!(err.contains("--num-kv-blocks"), "{err}");
        assert_eq!(check_fits_in_memory(&pool, &model, Some(needed)), Ok(()));
        // Unknown physical memory: only overflow is refused.
        assert_eq!(check_fits_in_memory(&pool, &model, None), Ok(()));
        let absurd = crate::model::KvCacheConfig::with_blocks(1024, usize::MAX / 2);
        assert!(check_fits_in_memory(&absurd, &model, None)
            .unwrap_err()
            .contains("overflows"));
    }

    #[test]
    fn the_served_context_is_what_the_pool_and_flag_allow_not_the_header() {
        let pool = crate::model::KvCacheConfig::with_blocks(16, 8);
        assert_eq!(served_context(u32::MAX as usize, None, &pool), 128);
        assert_eq!(served_context(100, None, &pool), 100);
        assert_eq!(served_context(u32::MAX as usize, Some(4096), &pool), 4096);
        // Beyond the model: left at the model's, for the engine's check to report.
        assert_eq!(served_context(2048, Some(4096), &pool), 2048);
    }

    #[test]
    fn generate_sizes_its_pool_to_the_request_within_the_flags() {
        let flags = crate::model::KvCacheConfig::with_blocks(16, 1000);
        let sized = |tokens| pool_for_one_request(flags, tokens).num_blocks;
        assert_eq!(sized(0), 1);
        assert_eq!(sized(16), 1);
        assert_eq!(sized(17), 2);
        assert_eq!(sized(5 + 64), 5);
        assert_eq!(sized(1_000_000), 1000);
        assert_eq!(pool_for_one_request(flags, 17).block_size, 16);
    }
}
