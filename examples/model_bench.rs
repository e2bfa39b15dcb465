//! Model-level CPU benchmark for `docs/BENCHMARKS.md`: single-stream decode against the time
//! to read the weights once, 32-stream decode, 512-token prefill, resident memory.
//!
//! `cargo run --release --example model_bench -- [--device cpu|cuda|cuda:N]
//! [--dtype auto|f32|f16|bf16] [--weights native|auto|f32] [MODEL]` (defaults as in `serve`:
//! cpu, `--dtype auto`, `--weights native`; and SmolLM2
//! from the cache, fetched with `scripts/fetch-smollm2.sh`). On cuda (built with
//! `--features cuda`), the weight read is timed as a sum over the weights' size in GPU memory.

use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::tensor::Tensor;
use waypoint::cli::{Device, Dtype, Weights};
use waypoint::model::{
    ForwardBatch, KvCacheConfig, Llama, ModelBackend, PagedKvCache, SequenceSlice,
    DEFAULT_BLOCK_SIZE,
};

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Time to stream `bytes` from memory once, summing with every core (best of 5). The sum
/// keeps 64 independent lanes so it is limited by memory bandwidth, not by add latency.
fn memory_read_time(bytes: usize) -> Duration {
    const LANES: usize = 64;
    let buffer: Vec<f32> = (0..bytes / 4).map(|i| (i % 7) as f32).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = buffer.len().div_ceil(threads).next_multiple_of(LANES);
    let sum = |part: &[f32]| -> f32 {
        let mut lanes = [0.0f32; LANES];
        for block in part.chunks_exact(LANES) {
            for (acc, v) in lanes.iter_mut().zip(block) {
                *acc += v;
            }
        }
        lanes.iter().sum::<f32>() + part.chunks_exact(LANES).remainder().iter().sum::<f32>()
    };
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let total: f32 = std::thread::scope(|s| {
                let handles: Vec<_> = buffer
                    .chunks(chunk)
                    .map(|part| s.spawn(move || sum(part)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            std::hint::black_box(total);
            start.elapsed()
        })
        .min()
        .unwrap()
}

/// Time to read `bytes` once from the device's memory: a sum over that many bytes on the
/// device, read back (best of 5, after a warm-up).
fn device_read_time<B: ModelBackend>(bytes: usize, device: &B::Device) -> Duration {
    let buffer = Tensor::<B, 1>::ones([bytes / 4], device);
    std::hint::black_box(buffer.clone().sum().into_scalar());
    (0..5)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(buffer.clone().sum().into_scalar());
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn prompt(seed: u32, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 7919 + i * 104_729) % vocab as u32)
        .collect()
}

/// Prefills `streams` sequences of `prompt_len` tokens, then decodes `steps` tokens for all
/// of them together, `passes` times over (each pass rewrites the same positions, so every
/// pass sees the same contexts); returns the mean decode step time.
fn decode<B: ModelBackend>(
    model: &Llama<B>,
    streams: usize,
    prompt_len: usize,
    steps: usize,
    passes: usize,
) -> Duration {
    let blocks_per_seq = (prompt_len + steps).div_ceil(DEFAULT_BLOCK_SIZE);
    let pool = KvCacheConfig::with_blocks(DEFAULT_BLOCK_SIZE, streams * blocks_per_seq)
        .stored_as(model.dtype());
    let mut cache = PagedKvCache::<B>::new(pool, model.config(), model.device());
    let vocab = model.config().vocab_size;
    let table = |s: usize| -> Vec<u32> {
        // Interleaved block ids: no sequence's blocks are contiguous.
        (0..blocks_per_seq)
            .map(|b| (b * streams + s) as u32)
            .collect()
    };
    for s in 0..streams {
        let batch = ForwardBatch {
            token_ids: prompt(s as u32, prompt_len, vocab),
            sequences: vec![SequenceSlice {
                num_cached_tokens: 0,
                num_new_tokens: prompt_len,
                block_table: table(s),
            }],
            ..Default::default()
        };
        model.forward(&batch, &mut cache).unwrap();
    }
    let start = Instant::now();
    for step in (0..passes).flat_map(|_| 0..steps) {
        let batch = ForwardBatch {
            token_ids: (0..streams)
                .map(|s| ((s * 31 + step * 17) % vocab) as u32)
                .collect(),
            sequences: (0..streams)
                .map(|s| SequenceSlice {
                    num_cached_tokens: prompt_len + step,
                    num_new_tokens: 1,
                    block_table: table(s),
                })
                .collect(),
            ..Default::default()
        };
        model.forward(&batch, &mut cache).unwrap();
    }
    start.elapsed() / (steps * passes) as u32
}

fn prefill<B: ModelBackend>(model: &Llama<B>, len: usize) -> Duration {
    let pool = KvCacheConfig::with_blocks(DEFAULT_BLOCK_SIZE, len.div_ceil(DEFAULT_BLOCK_SIZE))
        .stored_as(model.dtype());
    let mut cache = PagedKvCache::<B>::new(pool, model.config(), model.device());
    let batch = ForwardBatch {
        token_ids: prompt(1, len, model.config().vocab_size),
        sequences: vec![SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: len,
            block_table: (0..pool.num_blocks as u32).collect(),
        }],
        ..Default::default()
    };
    let start = Instant::now();
    model.forward(&batch, &mut cache).unwrap();
    start.elapsed()
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let device = take_flag(&mut args, "--device", "cpu, cuda or cuda:N", |v| {
        v.parse().ok()
    })?
    .unwrap_or(Device::Cpu);
    let dtype = take_flag(&mut args, "--dtype", "auto, f32, f16 or bf16", |v| {
        clap::ValueEnum::from_str(v, false).ok()
    })?
    .unwrap_or(Dtype::Auto);
    let weights = take_flag(&mut args, "--weights", "native, auto or f32", |v| {
        clap::ValueEnum::from_str(v, false).ok()
    })?
    .unwrap_or(Weights::Native);
    let model_path = match args.first().cloned() {
        Some(path) => path,
        None => {
            let out = std::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/scripts/fetch-smollm2.sh"
                ))
                .output()?;
            anyhow::ensure!(out.status.success(), "fetching SmolLM2 failed");
            String::from_utf8(out.stdout)?.trim().to_string()
        }
    };
    match device {
        Device::Cpu => run::<Flex>(&model_path, &Default::default(), dtype, weights, device),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => run::<burn::backend::Cuda>(
            &model_path,
            &burn::backend::cuda::CudaDevice::new(index),
            dtype,
            weights,
            device,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => anyhow::bail!("built without CUDA support; add `--features cuda`"),
    }
}

/// Removes `flag` and its value from `args` and parses the value; `None` when `flag` is absent.
fn take_flag<T>(
    args: &mut Vec<String>,
    flag: &str,
    values: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    let Some(i) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    let value = args.get(i + 1).and_then(|v| parse(v));
    let value = value.ok_or_else(|| anyhow::anyhow!("{flag} takes {values}"))?;
    args.drain(i..i + 2);
    Ok(Some(value))
}

/// On the CPU the weight read is timed with every core over host memory, not on the device.
fn run<B: ModelBackend>(
    model_path: &str,
    device: &B::Device,
    dtype: Dtype,
    weights: Weights,
    which: Device,
) -> anyhow::Result<()> {
    let on_cpu = which == Device::Cpu;
    let rss_before = rss_bytes();
    let mut files = waypoint::loader::open(model_path)?;
    files.weight_policy = weights.into();
    let dtype = waypoint::cli::model_dtype::<B>(dtype, which, device);
    let (model, _tokenizer, name) = files.load::<B>(device, dtype)?;
    let config = model.config().clone();
    let weight_bytes = model.weight_bytes();
    println!("dtype: {dtype:?}, weights: {weights:?}");

    // Resident memory with the weights and a KV pool of 32 x 256 tokens.
    let pool = KvCacheConfig::with_blocks(DEFAULT_BLOCK_SIZE, 32 * 256 / DEFAULT_BLOCK_SIZE)
        .stored_as(dtype);
    let cache = PagedKvCache::<B>::new(pool, &config, device);
    let rss = rss_bytes().saturating_sub(rss_before);
    drop(cache);

    // For profilers: `MODEL_BENCH_ONLY=STREAMS` runs the decode below (16 steps from a
    // 128-token context) 20 passes over with that many streams, `MODEL_BENCH_ONLY=prefill` a
    // few 2048-token prefills.
    match std::env::var("MODEL_BENCH_ONLY").ok().as_deref() {
        Some("prefill") => {
            for _ in 0..5 {
                prefill(&model, 2048);
            }
            return Ok(());
        }
        Some(streams) => {
            decode(&model, streams.parse()?, 128, 16, 20);
            return Ok(());
        }
        None => {}
    }
    let read = if on_cpu {
        memory_read_time(weight_bytes)
    } else {
        device_read_time::<B>(weight_bytes, device)
    };
    // Best of three, like the memory read: neighbours on a shared machine only add time.
    let single = (0..3).map(|_| decode(&model, 1, 128, 32, 1)).min().unwrap();
    let batched = (0..3)
        .map(|_| decode(&model, 32, 128, 16, 1))
        .min()
        .unwrap();
    let prefill_512 = (0..3).map(|_| prefill(&model, 512)).min().unwrap();

    let single_tps = 1.0 / single.as_secs_f64();
    let batched_tps = 32.0 / batched.as_secs_f64();
    println!(
        "model: {name} ({} parameters, weights as held {:.0} MB)",
        config.num_parameters(),
        weight_bytes as f64 / 1e6
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| read weights once ({}) | {:.2} ms | |",
        if on_cpu {
            "memory sum, all cores"
        } else {
            "sum on the device"
        },
        read.as_secs_f64() * 1e3
    );
    println!(
        "| decode step, 1 stream (ctx 128) | {:.2} ms = {:.2}x weight read ({single_tps:.1} tok/s) | <= 1.3x |",
        single.as_secs_f64() * 1e3,
        single.as_secs_f64() / read.as_secs_f64()
    );
    println!(
        "| decode, 32 streams (ctx 128) | {batched_tps:.1} tok/s = {:.2}x single stream | >= 10x |",
        batched_tps / single_tps
    );
    println!(
        "| prefill, 512 tokens | {:.1} tok/s | > 600 tok/s |",
        512.0 / prefill_512.as_secs_f64()
    );
    println!(
        "| resident memory (weights + {:.0} MB KV pool) | {:.0} MB = {:.2}x (weights + pool) | <= 1.5x |",
        pool.bytes(&config) as f64 / 1e6,
        rss as f64 / 1e6,
        rss as f64 / (weight_bytes + pool.bytes(&config)) as f64
    );
    Ok(())
}
