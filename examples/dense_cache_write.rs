//! Does the dense path (the one `cuda` runs) write the KV cache in place? Issue 15, item 6.
//!
//! `cargo run --release --example dense_cache_write [-- vulkan]`
//!
//! On [`DenseCpu`] (or, built with `--features vulkan` and given `vulkan`, on burn-cubecl over
//! Vulkan: the crate whose `slice_assign` cuda runs), times (1) a one-token decode step of the tiny model and (2) one
//! `write_cache_rows` call of one row, against the size of the pool. A write in place costs
//! the same whatever the pool's size; a write that copies the pool grows with it. The control
//! row holds a second handle on the pool while writing, which forces the copy, to show that
//! this measurement would see one.

use std::time::{Duration, Instant};

use burn::tensor::{Tensor, TensorData};
use waypoint::loader::tiny::{tiny_config, TinyWeights};
use waypoint::model::backend::RowRun;
use waypoint::model::{
    DenseCpu, ForwardBatch, KvCacheConfig, Llama, ModelBackend, PagedKvCache, SequenceSlice,
};

const BLOCK: usize = 16;
const CONTEXT: usize = 32;

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

/// Mean time of one decode step of one sequence, in a pool of `num_blocks` blocks.
fn decode_step<B: ModelBackend>(model: &Llama<B>, num_blocks: usize) -> Duration {
    let config = model.config();
    let mut cache = PagedKvCache::<B>::new(
        KvCacheConfig::with_blocks(BLOCK, num_blocks),
        config,
        model.device(),
    );
    let table: Vec<u32> = (0..(CONTEXT + 64).div_ceil(BLOCK) as u32).collect();
    let prefill = ForwardBatch {
        token_ids: (0..CONTEXT as u32).collect(),
        sequences: vec![SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: CONTEXT,
            block_table: table.clone(),
        }],
        ..Default::default()
    };
    model.forward(&prefill, &mut cache).unwrap();
    let steps = 32;
    let start = Instant::now();
    for step in 0..steps {
        let batch = ForwardBatch {
            token_ids: vec![(step % 200) as u32],
            sequences: vec![SequenceSlice {
                num_cached_tokens: CONTEXT + step,
                num_new_tokens: 1,
                block_table: table.clone(),
            }],
            ..Default::default()
        };
        model.forward(&batch, &mut cache).unwrap();
    }
    start.elapsed() / steps as u32
}

/// One write of one row into a `[num_slots, 64]` pool; with `shared`, while a second handle
/// on the pool is alive.
fn row_write<B: ModelBackend>(num_slots: usize, shared: bool) -> Duration {
    let device = Default::default();
    let mut pool = Tensor::<B, 2>::zeros([num_slots, 64], &device);
    let src = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32; 64], [1, 64]), &device);
    let runs = [RowRun {
        dst_slot: num_slots / 2,
        src_row: 0,
        len: 1,
    }];
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let other = shared.then(|| pool.clone());
        let start = Instant::now();
        pool = B::write_cache_rows(pool, &runs, &src, 0);
        // A GPU backend only queues the write: wait for it.
        B::sync(&device).expect("the device runs the write");
        best = best.min(start.elapsed());
        drop(other);
    }
    best
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        None | Some("ndarray") => measure::<DenseCpu>(1 << 20),
        // lavapipe allocates at most 256 MiB in one buffer.
        #[cfg(feature = "vulkan")]
        Some("vulkan") => measure::<burn::backend::Vulkan>(1 << 18),
        Some(other) => panic!("unknown backend {other:?}: ndarray, or vulkan (--features vulkan)"),
    }
}

/// Runs both tables, with pools of up to `max_rows` rows in the second.
fn measure<B: ModelBackend>(max_rows: usize) {
    println!("backend: {}", B::name(&Default::default()));
    let config = tiny_config(260);
    let model = Llama::<B>::load(
        config.clone(),
        &mut TinyWeights::new(config.clone()),
        &Default::default(),
        burn::tensor::FloatDType::F32,
        waypoint::model::WeightPolicy::F32,
        &mut |_, _| {},
    )
    .expect("tiny model loads");
    println!("| pool blocks (x{BLOCK} slots) | KV pool bytes | decode step, tiny model |");
    println!("|---|---|---|");
    for num_blocks in [64, 1024, 16_384, 65_536] {
        let bytes = KvCacheConfig::with_blocks(BLOCK, num_blocks).bytes(&config);
        let step = best_of(3, || decode_step(&model, num_blocks));
        println!(
            "| {num_blocks} | {:.1} MB | {:.3} ms |",
            bytes as f64 / 1e6,
            step.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "| pool rows x 64 | bytes | one-row write, pool unique | control: pool shared (copies) |"
    );
    println!("|---|---|---|---|");
    for num_slots in [1 << 10, 1 << 14, 1 << 18, 1 << 20] {
        if num_slots > max_rows {
            break;
        }
        println!(
            "| {num_slots} | {:.1} MB | {:.4} ms | {:.4} ms |",
            (num_slots * 64 * 4) as f64 / 1e6,
            row_write::<B>(num_slots, false).as_secs_f64() * 1e3,
            row_write::<B>(num_slots, true).as_secs_f64() * 1e3
        );
    }
}
