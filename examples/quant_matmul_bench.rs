//! `x @ W^T` for SmolLM2's shapes and 1 to 16 rows of `x`: Q4_1 and Q8_0 blocks read in place
//! (`model::cpu::quant`) against the packed f32 expansion (`PackedMatrix`), both on rayon's
//! threads. Each matrix is timed alone, so it stays in cache where the model's 30 layers do not:
//! this favours f32, which makes the row count where blocks stop winning a safe threshold.
//!
//! `cargo run --release --example quant_matmul_bench`

use std::time::{Duration, Instant};

use waypoint::model::cpu::quant::{BlockFormat, QuantMatrix, BLOCK};
use waypoint::model::cpu::PackedMatrix;

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn blocks(format: BlockFormat, rows: usize, cols: usize) -> Vec<u8> {
    let bytes = format.block_bytes();
    let mut out = vec![0x5Au8; rows * cols / BLOCK * bytes];
    for block in out.chunks_exact_mut(bytes) {
        block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    out
}

fn main() {
    println!(
        "| shape (out x in) | rows of x | format | quantized | f32 packed | f32 / quantized |"
    );
    println!("|---|---|---|---|---|---|");
    for ((rows, cols), n, format) in [(1536, 576), (576, 1536), (49152, 576)]
        .into_iter()
        .flat_map(|shape| [1, 2, 4, 8, 16].map(move |n| (shape, n)))
        .flat_map(|(shape, n)| [BlockFormat::Q4_1, BlockFormat::Q8_0].map(move |f| (shape, n, f)))
    {
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 13) as f32 / 13.0).collect();
        {
            let quant = QuantMatrix::new(format, blocks(format, rows, cols), rows, cols).unwrap();
            let packed = PackedMatrix::pack(&quant.dequantize(), rows, cols);
            let q = best_of(50, || {
                std::hint::black_box(quant.matmul(&x));
            });
            let f = best_of(50, || {
                std::hint::black_box(packed.matmul(&x));
            });
            println!(
                "| {rows} x {cols} | {n} | {format:?} | {:.1} us | {:.1} us | {:.2} |",
                q.as_secs_f64() * 1e6,
                f.as_secs_f64() * 1e6,
                f.as_secs_f64() / q.as_secs_f64()
            );
        }
    }
}
