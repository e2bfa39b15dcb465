//! The model's projection shapes through flex's matmul and through our prepacked kernel,
//! in GFLOP/s, for `docs/BENCHMARKS.md`.
//!
//! `cargo run --release --example matmul_bench`

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use waypoint::model::cpu::PackedMatrix;

/// SmolLM2-135M's projections as the model packs them: `(name, out_features, in_features)`.
const SHAPES: [(&str, usize, usize); 5] = [
    ("q+k", 768, 576),
    ("v", 192, 576),
    ("gate+up", 3072, 576),
    ("down", 576, 1536),
    ("head", 49152, 576),
];

fn gflops(rows: usize, n: usize, k: usize, seconds: f64) -> f64 {
    2.0 * (rows * n * k) as f64 / seconds / 1e9
}

/// Best of a few timed runs of `f`, each repeated so it lasts long enough to time.
fn best_seconds(mut f: impl FnMut()) -> f64 {
    f();
    let reps = 5;
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let device = Default::default();
    println!("| shape | rows | flex GFLOP/s | packed GFLOP/s | packed / flex |");
    println!("|---|---|---|---|---|");
    for (name, n, k) in SHAPES {
        let weight: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let packed = PackedMatrix::pack(&weight, n, k);
        // flex's layout in the model before packing: `[in, out]`, contiguous.
        let mut transposed = vec![0.0f32; n * k];
        for j in 0..n {
            for i in 0..k {
                transposed[i * n + j] = weight[j * k + i];
            }
        }
        let w = Tensor::<Flex, 2>::from_data(TensorData::new(transposed, [k, n]), &device);
        for rows in [1, 32, 64, 512] {
            if name == "head" && rows > 64 {
                continue;
            }
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
                .collect();
            let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [rows, k]), &device);
            let flex = best_seconds(|| {
                std::hint::black_box(xt.clone().matmul(w.clone()).into_data());
            });
            let ours = best_seconds(|| {
                std::hint::black_box(packed.matmul(&x));
            });
            let (f, o) = (gflops(rows, n, k, flex), gflops(rows, n, k, ours));
            println!(
                "| {name} {n}x{k} | {rows} | {f:.1} | {o:.1} | {:.2}x |",
                o / f
            );
        }
    }
}
