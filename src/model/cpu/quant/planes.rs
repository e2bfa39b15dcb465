//! Rows of `x` as the integer block kernels read them.
//!
//! Each 32-element block of `x` is written as `step * (2^14 q1 + 2^7 q2 + q3)` with three
//! `i8` planes: `q1` is the block rounded to 127 steps of its largest magnitude, `q2` and `q3`
//! the remainders of each rounding, 128 times finer each. What is left is at most
//! `max|x| / (127 * 2^15)` per element, about four f32 ulps of the block's largest value, so a
//! dot product with the planes is the f32 one up to rounding of the order f32 summation has
//! (unlike llama.cpp's single 8-bit plane, which moves the logits). The kernels multiply the
//! weights' small integers by the planes exactly in `i32` and convert once per block.

/// Planes per block.
pub const PLANES: usize = 3;
/// How much finer each plane is than the one before.
const PLANE_SHIFT: u32 = 7;
/// Largest magnitude of the first plane; the others stay within `±64` by construction.
const FIRST_PLANE_MAX: f32 = 127.0;
/// Largest `|2^14 q1 + 2^7 q2 + q3|`: keeps `q1` within `±127` whatever the step's rounding.
const LARGEST_COMBINED: i32 = 127 << (2 * PLANE_SHIFT);

use super::BLOCK;

/// `rows` rows of `x`, `blocks` blocks each, decomposed into planes.
pub struct Planes {
    blocks: usize,
    /// `[row][block][plane][32]`.
    quants: Vec<i8>,
    /// `[row][block]`: what one unit of the combined integer is worth.
    steps: Vec<f32>,
    /// `[row][block]`: the sums of each 16-element half of the block's values as the planes
    /// hold them.
    half_sums: Vec<[f32; 2]>,
    /// `[row][block]`: the two half sums added, for the formats whose halves share an offset.
    sums: Vec<f32>,
}

/// One block of one row of [`Planes`].
#[derive(Clone, Copy)]
pub struct PlaneBlock<'a> {
    /// `PLANES` runs of 32 quants, coarsest first.
    pub quants: &'a [i8; PLANES * BLOCK],
    /// What one unit of `2^14 q1 + 2^7 q2 + q3` is worth.
    pub step: f32,
    /// The sums of the block's two 16-element halves as the planes hold them.
    pub half_sums: [f32; 2],
}

impl Planes {
    /// Decomposes `x`, rows of `cols` floats (`cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Self {
        let blocks_total = x.len() / BLOCK;
        let mut planes = Planes {
            blocks: cols / BLOCK,
            quants: vec![0; blocks_total * PLANES * BLOCK],
            steps: vec![0.0; blocks_total],
            half_sums: vec![[0.0; 2]; blocks_total],
            sums: vec![0.0; blocks_total],
        };
        let use_avx2 = super::super::has_avx2();
        for (b, values) in x.chunks_exact(BLOCK).enumerate() {
            let quants = &mut planes.quants[b * PLANES * BLOCK..][..PLANES * BLOCK];
            let (step, half_sums) = decompose_with(use_avx2, values, quants);
            planes.steps[b] = step;
            planes.half_sums[b] = half_sums;
            planes.sums[b] = half_sums[0] + half_sums[1];
        }
        planes
    }

    /// Block `block` of row `row`.
    pub fn block(&self, row: usize, block: usize) -> PlaneBlock<'_> {
        let at = row * self.blocks + block;
        PlaneBlock {
            quants: self.quants[at * PLANES * BLOCK..][..PLANES * BLOCK]
                .try_into()
                .expect("a block's planes"),
            step: self.steps[at],
            half_sums: self.half_sums[at],
        }
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.blocks
    }

    /// Rows of `x`.
    pub fn rows(&self) -> usize {
        self.steps.len().checked_div(self.blocks).unwrap_or(0)
    }

    /// Row `row`'s planes, steps and sums.
    #[inline]
    pub fn row(&self, row: usize) -> PlaneRow<'_> {
        let blocks = row * self.blocks..(row + 1) * self.blocks;
        PlaneRow {
            quants: &self.quants[blocks.start * PLANES * BLOCK..blocks.end * PLANES * BLOCK],
            steps: &self.steps[blocks.clone()],
            half_sums: &self.half_sums[blocks.clone()],
            sums: &self.sums[blocks],
        }
    }
}

/// One row of [`Planes`], block by block.
#[derive(Clone, Copy)]
pub struct PlaneRow<'a> {
    /// `[block][plane][32]`.
    pub quants: &'a [i8],
    /// Per block, as [`PlaneBlock::step`].
    pub steps: &'a [f32],
    /// Per block, as [`PlaneBlock::half_sums`].
    pub half_sums: &'a [[f32; 2]],
    /// Per block, the two half sums added.
    pub sums: &'a [f32],
}

/// Writes the planes of one block into `quants`; returns its step and the sums of its two
/// 16-element halves as the planes hold them. Each value becomes one integer `c` of at most
/// `127 * 2^14` steps, split exactly into `2^14 q1 + 2^7 q2 + q3` with `q1` rounded and `q2`,
/// `q3` in `±64`.
fn decompose_with(use_avx2: bool, values: &[f32], quants: &mut [i8]) -> (f32, [f32; 2]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: the caller checked the CPU has AVX2.
        return unsafe { decompose_avx2(values, quants) };
    }
    let _ = use_avx2;
    decompose(values, quants)
}

/// [`decompose`] compiled for AVX2: one row of `x` is decomposed per projection, on the calling
/// thread, so its scalar build was a visible share of a one-stream step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decompose_avx2(values: &[f32], quants: &mut [i8]) -> (f32, [f32; 2]) {
    decompose(values, quants)
}

#[inline(always)]
fn decompose(values: &[f32], quants: &mut [i8]) -> (f32, [f32; 2]) {
    quants.fill(0);
    if values.iter().any(|v| !v.is_finite()) {
        // The sums, which every kernel adds, carry the NaN or infinity through, as f32 would.
        let half = |h: usize| values[16 * h..16 * (h + 1)].iter().sum();
        return (0.0, [half(0), half(1)]);
    }
    let largest = values.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let step = largest / FIRST_PLANE_MAX / (1u32 << (2 * PLANE_SHIFT)) as f32;
    if step == 0.0 {
        // All zeros, or too small for an f32 step (below about 1e-38 / 2^21): held as zeros.
        return (0.0, [0.0; 2]);
    }
    // v / step rounded: the planes hold c exactly, so v to half a step. Two loops without
    // branches or saturating casts, so that they vectorize.
    let limit = LARGEST_COMBINED as f64;
    let mut combined = [0i32; BLOCK];
    for (c, &v) in combined.iter_mut().zip(values) {
        let rounded = round(v as f64 / step as f64).clamp(-limit, limit);
        // SAFETY: `rounded` is a whole number within ±LARGEST_COMBINED (v is finite).
        *c = unsafe { rounded.to_int_unchecked::<i32>() };
    }
    let (coarse, fine) = (2 * PLANE_SHIFT, PLANE_SHIFT);
    let (first, rest) = quants.split_at_mut(BLOCK);
    let (second, third) = rest.split_at_mut(BLOCK);
    for (j, &c) in combined.iter().enumerate() {
        let q1 = (c + (1 << (coarse - 1))) >> coarse;
        let rest = c - (q1 << coarse);
        let q2 = (rest + (1 << (fine - 1))) >> fine;
        first[j] = q1 as i8;
        second[j] = q2 as i8;
        third[j] = (rest - (q2 << fine)) as i8;
    }
    // At most 16 * 127 * 2^14 < 2^31 in magnitude: exact in i32.
    let half_sum = |h: usize| combined[16 * h..16 * (h + 1)].iter().sum::<i32>();
    (
        step,
        [0, 1].map(|h| (half_sum(h) as f64 * step as f64) as f32),
    )
}

/// `v` rounded to the nearest integer (ties to even), for `|v| < 2^51`: adding 1.5 * 2^52
/// leaves no fraction bits. `f64::round` is a libm call on x86-64's baseline.
fn round(v: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    (v + SHIFT) - SHIFT
}

/// `sum(u_j * c_j)` over each 16-element half of one block: `u` the weights' 32 small
/// integers, `c_j` the planes combined (`2^14 q1 + 2^7 q2 + q3`). Exact: what every build's
/// integer kernel computes.
pub fn half_dots(u: &[i32; BLOCK], x: &PlaneBlock<'_>) -> [i64; 2] {
    let q = x.quants;
    let mut halves = [0i64; 2];
    for j in 0..BLOCK {
        let c = ((q[j] as i64) << (2 * PLANE_SHIFT))
            + ((q[BLOCK + j] as i64) << PLANE_SHIFT)
            + q[2 * BLOCK + j] as i64;
        halves[j / 16] += u[j] as i64 * c;
    }
    halves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(x: &PlaneBlock<'_>) -> Vec<f64> {
        let mut ones = [0i32; BLOCK];
        (0..BLOCK)
            .map(|j| {
                ones.fill(0);
                ones[j] = 1;
                half_dots(&ones, x).iter().sum::<i64>() as f64 * x.step as f64
            })
            .collect()
    }

    #[test]
    fn planes_hold_each_value_to_a_few_ulps_of_the_block_maximum() {
        let x: Vec<f32> = crate::model::cpu::test_values(4 * BLOCK, 5)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v * [1.0, 1e-3, 3e4, 1e-30][i / BLOCK])
            .collect();
        let planes = Planes::new(&x, 2 * BLOCK);
        assert_eq!(planes.blocks_per_row(), 2);
        for (b, values) in x.chunks_exact(BLOCK).enumerate() {
            let block = planes.block(b / 2, b % 2);
            let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let got = held(&block);
            for (g, &v) in got.iter().zip(values) {
                assert!(
                    (g - v as f64).abs() <= largest * 2.5e-7,
                    "block {b}: {g} for {v} (max {largest})"
                );
            }
            let sum: f64 = got.iter().sum();
            let [first, second] = block.half_sums.map(|h| h as f64);
            assert!((first + second - sum).abs() <= 1e-6 * sum.abs().max(largest));
            let first_half: f64 = got[..16].iter().sum();
            assert!((first - first_half).abs() <= 1e-6 * largest * 16.0);
            assert!(block.quants[BLOCK..].iter().all(|q| q.abs() <= 64));
        }
    }

    #[test]
    fn zero_blocks_have_no_step_and_nan_carries_through() {
        let mut x = vec![0.0f32; 2 * BLOCK];
        x[BLOCK + 3] = f32::NAN;
        let planes = Planes::new(&x, BLOCK);
        assert_eq!(planes.block(0, 0).step, 0.0);
        assert_eq!(planes.block(0, 0).half_sums, [0.0; 2]);
        assert!(planes.block(1, 0).half_sums[0].is_nan());
    }

    #[test]
    fn every_build_decomposes_alike() {
        let mut x = crate::model::cpu::test_values(8 * BLOCK, 9);
        x[3] = f32::INFINITY;
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[2 * BLOCK] = 1e30; // a block whose other values round to nothing
        let builds = [false, crate::model::cpu::has_avx2()];
        for values in x.chunks_exact(BLOCK) {
            let results: Vec<_> = builds
                .iter()
                .map(|&avx2| {
                    let mut quants = [0i8; PLANES * BLOCK];
                    let (step, sums) = decompose_with(avx2, values, &mut quants);
                    (step.to_bits(), sums.map(f32::to_bits), quants)
                })
                .collect();
            assert!(results.windows(2).all(|w| w[0] == w[1]), "{values:?}");
        }
    }
}
