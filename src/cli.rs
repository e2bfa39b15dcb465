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
    /// KV cache size in bytes (suffixes K, M, G accepted, e.g. 512M).
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub kv_cache_memory: usize,
}

impl CacheArgs {
    /// The pool these arguments describe for `model`.
    pub fn pool(
        &self,
        model: &crate::model::LlamaConfig,
    ) -> Result<crate::model::KvCacheConfig, String> {
        if self.block_size == 0 || self.block_size > 1024 {
            return Err(format!(
                "--block-size {} must be in 1..=1024",
                self.block_size
            ));
        }
        Ok(match self.num_kv_blocks {
            Some(0) => return Err("--num-kv-blocks must be positive".to_string()),
            Some(n) => crate::model::KvCacheConfig::with_blocks(self.block_size, n),
            None => crate::model::KvCacheConfig::with_bytes(
                self.block_size,
                self.kv_cache_memory,
                model,
            ),
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
    }
}
