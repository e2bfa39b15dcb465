//! `x @ W^T` with `W` kept in GGUF's quantized blocks: each block is dequantized on the fly
//! inside the dot product, with f32 activations and f32 accumulation, so the result is what
//! the f32 expansion of `W` gives up to summation order (issue 16). Decode is bound by reading
//! the weights, and the blocks are 4 to 7 times smaller than their f32 expansion.
//!
//! The model keeps projections this way under `--weights native|auto` (`CpuProjection`). The
//! 32-element block types are here; the K-quants are not.

use half::f16;
use rayon::prelude::*;

use super::packed::{ScratchPanel, PANEL_WIDTH};
use super::SharedOut;

/// Elements per block of the 32-element types.
pub const BLOCK: usize = 32;

/// A GGUF block type this module multiplies by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// `d: f16, qs: [u8; 16]`, `x = d * (q - 8)`.
    Q4_0,
    /// `d, m: f16, qs: [u8; 16]`, `x = d * q + m`.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`, `x = d * q`.
    Q8_0,
}

impl BlockFormat {
    /// Bytes of one block of [`BLOCK`] elements.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }
}

/// Why blocks could not form a matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantMatrixError {
    /// Rows must be whole blocks.
    #[error("{cols} columns is not a multiple of the {BLOCK}-element block")]
    PartialBlock {
        /// Columns asked for.
        cols: usize,
    },
    /// The buffer is not `rows` rows of blocks.
    #[error("{got} bytes of {format:?} blocks, expected {expected} for {rows}x{cols}")]
    Length {
        /// The block type.
        format: BlockFormat,
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
        /// Bytes given.
        got: usize,
        /// Bytes `rows x cols` takes.
        expected: usize,
    },
}

/// A row-major `[rows, cols]` weight (PyTorch's `Linear.weight`: `rows` outputs) held as
/// quantized blocks, each row a run of `cols / 32` blocks.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    format: BlockFormat,
    blocks: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// Takes `rows` rows of `cols / 32` blocks each, as a GGUF file stores them.
    pub fn new(
        format: BlockFormat,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantMatrixError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantMatrixError::PartialBlock { cols });
        }
        let expected = rows
            .checked_mul(cols / BLOCK)
            .and_then(|b| b.checked_mul(format.block_bytes()));
        if expected != Some(blocks.len()) {
            return Err(QuantMatrixError::Length {
                format,
                rows,
                cols,
                got: blocks.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        Ok(Self {
            format,
            blocks,
            rows,
            cols,
        })
    }

    /// The block type.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Bytes the blocks take.
    pub fn num_bytes(&self) -> usize {
        self.blocks.len()
    }

    /// `parts` stacked by rows, when they share a format and a width; `None` otherwise.
    pub fn concat_rows(parts: Vec<QuantMatrix>) -> Option<QuantMatrix> {
        let first = parts.first()?;
        let (format, cols) = (first.format, first.cols);
        if parts.iter().any(|p| p.format != format || p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let blocks = parts.into_iter().flat_map(|p| p.blocks).collect();
        Some(QuantMatrix {
            format,
            blocks,
            rows,
            cols,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// The f32 expansion, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (row, dst) in self
            .blocks
            .chunks_exact(self.row_bytes())
            .zip(out.chunks_exact_mut(self.cols))
        {
            dequantize_row(self.format, row, dst);
        }
        out
    }

    /// `x @ W^T` for `x` row-major `[n, cols]`; returns `[n, rows]`. One row of `x` is dotted
    /// with each weight row as its blocks are read; more rows run the packed f32 kernel on
    /// panels of weight rows expanded on the fly, where reusing each weight for several rows
    /// of `x` pays for the expansion (`docs/BENCHMARKS.md`, "Quantized projections").
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.cols, 0, "x is not [n, {}]", self.cols);
        if x.len() / self.cols >= EXPAND_FROM_ROWS {
            return self.matmul_expanded(x);
        }
        self.matmul_dots(x)
    }

    /// Output rows split across rayon's threads; each weight row is read once and dotted with
    /// every row of `x`.
    fn matmul_dots(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.cols;
        let row_bytes = self.row_bytes();
        // Enough rows per task to amortize rayon's cost, few enough to balance two cores.
        let rows_per_task = (self.rows / 64).clamp(16, 256);
        let dot = kernel();
        let sums = block_sums(x);
        // Computed as [rows, n] (each task owns whole weight rows), transposed at the end.
        let mut by_row = vec![0.0f32; self.rows * n];
        by_row
            .par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * rows_per_task;
                for (r, out) in out.chunks_exact_mut(n).enumerate() {
                    let row = &self.blocks[(first + r) * row_bytes..][..row_bytes];
                    dot(self.format, row, x, &sums, out);
                }
            });
        if n == 1 {
            return by_row;
        }
        let mut out = vec![0.0f32; n * self.rows];
        for (r, values) in by_row.chunks_exact(n).enumerate() {
            for (i, &v) in values.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
        out
    }

    /// Panels of [`PANEL_WIDTH`] weight rows expanded to f32 and run through the packed
    /// kernel, panels split across rayon's threads.
    fn matmul_expanded(&self, x: &[f32]) -> Vec<f32> {
        let rows_x = x.len() / self.cols;
        let mut out = vec![0.0f32; rows_x * self.rows];
        let out_ptr = SharedOut(out.as_mut_ptr());
        let row_bytes = self.row_bytes();
        let num_panels = self.rows.div_ceil(PANEL_WIDTH);
        let per_task = num_panels.div_ceil(rayon::current_num_threads() * 4);
        (0..num_panels.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                let mut panel = ScratchPanel::new(self.cols);
                let block_bytes = self.format.block_bytes();
                let (dequantize, transpose) = (block_dequantizer(), tile_transposer());
                // One tile's blocks by weight row; rows past a last panel's end keep stale
                // values, whose outputs are never written.
                let mut by_row = [0.0f32; BLOCK * BLOCK];
                for p in task * per_task..((task + 1) * per_task).min(num_panels) {
                    let first = p * PANEL_WIDTH;
                    let columns = PANEL_WIDTH.min(self.rows - first);
                    panel.fill(|t, dst| {
                        for (j, values) in by_row.chunks_exact_mut(BLOCK).take(columns).enumerate()
                        {
                            let row = &self.blocks[(first + j) * row_bytes..];
                            dequantize(self.format, &row[t * block_bytes..][..block_bytes], values);
                        }
                        transpose(&by_row, dst);
                    });
                    // SAFETY: this task alone writes panel p's columns; `out` is
                    // `[rows_x, self.rows]` and outlives the parallel section.
                    unsafe { panel.multiply(x, rows_x, p, self.rows, out_ptr) };
                }
            });
        out
    }
}

/// From this many rows of `x` on, [`QuantMatrix::matmul`] expands panels to f32.
const EXPAND_FROM_ROWS: usize = 3;
const _: () = assert!(PANEL_WIDTH == BLOCK, "a panel tile is one block");

/// Writes one block's 32 values into `out`.
type DequantizeFn = fn(BlockFormat, &[u8], &mut [f32]);

/// The fastest block dequantizer this CPU runs.
fn block_dequantizer() -> DequantizeFn {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() && std::arch::is_x86_feature_detected!("f16c") {
        return avx2::dequantize_block;
    }
    dequantize_row
}

/// Transposes a `BLOCK x BLOCK` tile: `dst[i * BLOCK + j] = src[j * BLOCK + i]`.
type TransposeFn = fn(&[f32], &mut [f32]);

/// The fastest tile transpose this CPU runs.
fn tile_transposer() -> TransposeFn {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        return avx2::transpose_tile;
    }
    transpose_tile_portable
}

fn transpose_tile_portable(src: &[f32], dst: &mut [f32]) {
    for (i, dst) in dst[..BLOCK * BLOCK].chunks_exact_mut(BLOCK).enumerate() {
        for (j, dst) in dst.iter_mut().enumerate() {
            *dst = src[j * BLOCK + i];
        }
    }
}

/// The dot products of one row of blocks with every row of `x` (rows of `cols` floats, whose
/// [`block_sums`] are `sums`), into `out` (one per row of `x`).
type DotFn = fn(BlockFormat, &[u8], &[f32], &[f32], &mut [f32]);

/// The fastest dot product this CPU runs.
fn kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() && std::arch::is_x86_feature_detected!("f16c") {
        return avx2::dot_rows;
    }
    dot_rows_portable
}

fn scale(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// The element values of one block before its scale and offset: what `d` multiplies (the raw
/// nibbles for the 4-bit types; Q4_0's `- 8` is in its offset).
fn quants(format: BlockFormat, block: &[u8]) -> [f32; BLOCK] {
    let mut q = [0.0f32; BLOCK];
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let qs = match format {
                BlockFormat::Q4_0 => &block[2..18],
                _ => &block[4..20],
            };
            for j in 0..16 {
                q[j] = (qs[j] & 0x0F) as f32;
                q[j + 16] = (qs[j] >> 4) as f32;
            }
        }
        BlockFormat::Q8_0 => {
            for (q, &b) in q.iter_mut().zip(&block[2..34]) {
                *q = b as i8 as f32;
            }
        }
    }
    q
}

fn dequantize_row(format: BlockFormat, row: &[u8], dst: &mut [f32]) {
    for (block, dst) in row
        .chunks_exact(format.block_bytes())
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let (d, m) = (scale(block, 0), offset(format, block));
        for (y, q) in dst.iter_mut().zip(quants(format, block)) {
            *y = q * d + m;
        }
    }
}

/// What every element of a block adds beside `d * q`: Q4_1's `m`, Q4_0's `-8 d`, Q8_0's 0.
fn offset(format: BlockFormat, block: &[u8]) -> f32 {
    match format {
        BlockFormat::Q4_0 => -8.0 * scale(block, 0),
        BlockFormat::Q4_1 => scale(block, 2),
        BlockFormat::Q8_0 => 0.0,
    }
}

/// Each block's sum of `x` (`cols / 32` of them per row of `x`), which the offsets multiply:
/// computed once per input row, not once per weight row.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
}

fn dot_rows_portable(format: BlockFormat, row: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
    let (cols, blocks) = (x.len() / out.len(), sums.len() / out.len());
    for (i, out) in out.iter_mut().enumerate() {
        let x = &x[i * cols..][..cols];
        *out = dot_row_portable(format, row, x, &sums[i * blocks..][..blocks]);
    }
}

/// `sum(d * q * x + m * x)` per block: `d * (q . x) + m * sum(x)`.
fn dot_row_portable(format: BlockFormat, row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut total = 0.0f32;
    for ((block, x), sum_x) in row
        .chunks_exact(format.block_bytes())
        .zip(x.chunks_exact(BLOCK))
        .zip(sums)
    {
        let q = quants(format, block);
        let qx: f32 = q.iter().zip(x).map(|(q, x)| q * x).sum();
        total += scale(block, 0) * qx + offset(format, block) * sum_x;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockFormat, BLOCK};

    /// Rows of `x` taken together: each block is unpacked once for all of them.
    const ROWS: usize = 4;

    pub(super) fn dot_rows(
        format: BlockFormat,
        row: &[u8],
        x: &[f32],
        sums: &[f32],
        out: &mut [f32],
    ) {
        let n = out.len();
        let (cols, blocks) = (x.len() / n, sums.len() / n);
        let mut i = 0;
        while i < n {
            let take = if n - i >= ROWS { ROWS } else { 1 };
            let x = &x[i * cols..][..take * cols];
            let sums = &sums[i * blocks..][..take * blocks];
            let out = &mut out[i..i + take];
            // SAFETY: chosen by `kernel` only when the CPU has AVX2, FMA and F16C; the slices
            // hold `take` rows of `cols` floats and `blocks` sums, `row` `blocks` blocks.
            unsafe {
                if take == ROWS {
                    dot_avx2::<ROWS>(format, row, x, sums, out)
                } else {
                    dot_avx2::<1>(format, row, x, sums, out)
                }
            }
            i += take;
        }
    }

    /// Eight quants starting at byte 0 of `bytes`, widened to f32: unsigned nibbles or signed
    /// bytes, already unpacked to one per byte.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen_u8(bytes: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen_i8(bytes: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The f16 at `at` in `block`, in hardware (the `half` crate's conversion is a call).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half_at(block: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([block[at], block[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// A block's `d` and what every element adds beside `d * q` (as the portable `offset`),
    /// converted in hardware.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_and_offset(format: BlockFormat, block: &[u8]) -> (f32, f32) {
        let d = half_at(block, 0);
        let offset = match format {
            BlockFormat::Q4_0 => -8.0 * d,
            BlockFormat::Q4_1 => half_at(block, 2),
            BlockFormat::Q8_0 => 0.0,
        };
        (d, offset)
    }

    /// A block's 32 quants as four vectors of f32, before scale and offset.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn unpack(format: BlockFormat, block: &[u8]) -> [__m256; 4] {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let start = if format == BlockFormat::Q4_0 { 2 } else { 4 };
                let qs = _mm_loadu_si128(block.as_ptr().add(start) as *const __m128i);
                let low_nibbles = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(qs, low_nibbles);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low_nibbles);
                [
                    widen_u8(lo),
                    widen_u8(_mm_srli_si128(lo, 8)),
                    widen_u8(hi),
                    widen_u8(_mm_srli_si128(hi, 8)),
                ]
            }
            BlockFormat::Q8_0 => {
                let a = _mm_loadu_si128(block.as_ptr().add(2) as *const __m128i);
                let b = _mm_loadu_si128(block.as_ptr().add(18) as *const __m128i);
                [
                    widen_i8(a),
                    widen_i8(_mm_srli_si128(a, 8)),
                    widen_i8(b),
                    widen_i8(_mm_srli_si128(b, 8)),
                ]
            }
        }
    }

    pub(super) fn dequantize_block(format: BlockFormat, block: &[u8], out: &mut [f32]) {
        // SAFETY: chosen by `block_dequantizer` only when the CPU has AVX2, FMA and F16C;
        // `block` is one block and `out` holds its 32 values.
        unsafe { dequantize_block_avx2(format, &block[..format.block_bytes()], &mut out[..BLOCK]) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequantize_block_avx2(format: BlockFormat, block: &[u8], out: &mut [f32]) {
        let q = unpack(format, block);
        let (d, offset) = scale_and_offset(format, block);
        let (d, offset) = (_mm256_set1_ps(d), _mm256_set1_ps(offset));
        for (i, q) in q.into_iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), _mm256_fmadd_ps(q, d, offset));
        }
    }

    pub(super) fn transpose_tile(src: &[f32], dst: &mut [f32]) {
        let (src, dst) = (&src[..BLOCK * BLOCK], &mut dst[..BLOCK * BLOCK]);
        for jb in (0..BLOCK).step_by(8) {
            for ib in (0..BLOCK).step_by(8) {
                // SAFETY: chosen by `tile_transposer` only when the CPU has AVX2; the 8x8
                // squares at (jb, ib) and (ib, jb) lie inside the 32x32 tiles.
                unsafe {
                    transpose8(
                        src.as_ptr().add(jb * BLOCK + ib),
                        dst.as_mut_ptr().add(ib * BLOCK + jb),
                    )
                }
            }
        }
    }

    /// An 8x8 square of floats, rows `BLOCK` apart in both.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose8(src: *const f32, dst: *mut f32) {
        let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * BLOCK)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for k in 0..4 {
            _mm256_storeu_ps(
                dst.add(k * BLOCK),
                _mm256_permute2f128_ps::<0x20>(u[k], u[k + 4]),
            );
            _mm256_storeu_ps(
                dst.add((k + 4) * BLOCK),
                _mm256_permute2f128_ps::<0x31>(u[k], u[k + 4]),
            );
        }
    }

    /// `R` rows of `x` against one row of blocks: per block `d * (q . x) + offset * sum(x)`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_avx2<const R: usize>(
        format: BlockFormat,
        row: &[u8],
        x: &[f32],
        sums: &[f32],
        out: &mut [f32],
    ) {
        let (cols, blocks) = (x.len() / R, sums.len() / R);
        let mut totals = [_mm256_setzero_ps(); R];
        let mut offsets = [0.0f32; R];
        for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
            let q = unpack(format, block);
            let (d, offset) = scale_and_offset(format, block);
            let d = _mm256_set1_ps(d);
            for r in 0..R {
                let xp = x.as_ptr().add(r * cols + b * BLOCK);
                let mut qx = _mm256_mul_ps(q[0], _mm256_loadu_ps(xp));
                qx = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xp.add(8)), qx);
                qx = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xp.add(16)), qx);
                qx = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xp.add(24)), qx);
                totals[r] = _mm256_fmadd_ps(d, qx, totals[r]);
                offsets[r] += offset * sums[r * blocks + b];
            }
        }
        for r in 0..R {
            out[r] = hsum(totals[r]) + offsets[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::naive_matmul;

    /// Random blocks with finite scales in a realistic range.
    fn random_blocks(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bytes = format.block_bytes();
        let mut out = Vec::with_capacity(rows * cols / BLOCK * bytes);
        for _ in 0..rows * cols / BLOCK {
            let mut block = vec![0u8; bytes];
            block.iter_mut().for_each(|b| *b = next() as u8);
            let d = f16::from_f32((next() % 1000) as f32 / 1e5 + 1e-4).to_le_bytes();
            block[..2].copy_from_slice(&d);
            if format == BlockFormat::Q4_1 {
                let m = f16::from_f32(-((next() % 1000) as f32) / 1e4).to_le_bytes();
                block[2..4].copy_from_slice(&m);
            }
            out.extend(block);
        }
        out
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_build_matches_dequantize_then_f32_matmul() {
        // 7 rows of x: one group of four and three taken singly.
        let (rows, cols, n) = (37, 576, 7);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
            .collect();
        for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let m =
                QuantMatrix::new(format, random_blocks(format, rows, cols, 7), rows, cols).unwrap();
            let want = naive_matmul(&x, &m.dequantize(), rows, cols);
            close(&m.matmul(&x), &want, &format!("{format:?} dispatched"));
            close(
                &m.matmul(&x[..cols]),
                &want[..rows],
                &format!("{format:?} one row"),
            );
            let row_bytes = m.row_bytes();
            let mut builds: Vec<(&str, DotFn)> = vec![("portable", dot_rows_portable)];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                builds.push(("avx2", avx2::dot_rows));
            }
            let sums = block_sums(&x);
            for (name, dot) in builds {
                for r in 0..rows {
                    let row = &m.blocks[r * row_bytes..][..row_bytes];
                    let mut got = vec![0.0; n];
                    dot(format, row, &x, &sums, &mut got);
                    let want: Vec<f32> = (0..n).map(|i| want[i * rows + r]).collect();
                    close(&got, &want, &format!("{format:?} {name} row {r}"));
                }
            }
        }
    }

    #[test]
    fn a_projection_with_both_serves_one_row_from_blocks_and_more_from_f32() {
        use crate::model::cpu::{CpuProjection, PackedMatrix};
        let (rows, cols) = (40, 64);
        let format = BlockFormat::Q4_1;
        let blocks =
            QuantMatrix::new(format, random_blocks(format, rows, cols, 3), rows, cols).unwrap();
        let packed = PackedMatrix::pack(&blocks.dequantize(), rows, cols);
        let x: Vec<f32> = (0..3 * cols).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        let (one_row, three_rows) = (blocks.matmul(&x[..cols]), packed.matmul(&x));
        let both = CpuProjection::Blocks {
            blocks: blocks.clone(),
            packed: Some(packed),
        };
        assert_eq!(
            both.matmul(&x[..cols]),
            one_row,
            "one row: the blocks' kernel"
        );
        assert_eq!(both.matmul(&x), three_rows, "three rows: packed f32");
        let only_blocks = CpuProjection::Blocks {
            blocks: blocks.clone(),
            packed: None,
        };
        assert_eq!(only_blocks.matmul(&x), blocks.matmul(&x));
        let want = naive_matmul(&x, &blocks.dequantize(), rows, cols);
        close(&three_rows, &want, "packed f32");
        close(&only_blocks.matmul(&x), &want, "blocks");
    }

    #[test]
    fn every_build_of_the_expansion_helpers_matches_the_portable_one() {
        let src: Vec<f32> = (0..BLOCK * BLOCK).map(|i| i as f32).collect();
        let mut want = vec![0.0; BLOCK * BLOCK];
        transpose_tile_portable(&src, &mut want);
        assert_eq!(want[BLOCK + 2], src[2 * BLOCK + 1]);
        let mut got = vec![0.0; BLOCK * BLOCK];
        tile_transposer()(&src, &mut got);
        assert_eq!(got, want, "the dispatched transpose");
        for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let blocks = random_blocks(format, 1, 4 * BLOCK, 11);
            for block in blocks.chunks_exact(format.block_bytes()) {
                let (mut want, mut got) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
                dequantize_row(format, block, &mut want);
                block_dequantizer()(format, block, &mut got);
                close(&got, &want, &format!("{format:?} dispatched dequantizer"));
            }
        }
    }

    #[test]
    fn dequantize_follows_the_gguf_layout() {
        // Q4_1, d = 0.5, m = -1: byte j holds element j (low nibble) and j + 16 (high).
        let mut block = vec![0u8; 20];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block[4] = 0x3A;
        let m = QuantMatrix::new(BlockFormat::Q4_1, block, 1, 32).unwrap();
        let w = m.dequantize();
        assert_eq!(w[0], 0xA as f32 * 0.5 - 1.0);
        assert_eq!(w[16], 0x3 as f32 * 0.5 - 1.0);
        assert_eq!(w[1], -1.0);
    }

    #[test]
    fn dequantize_agrees_with_the_gguf_reader() {
        use crate::loader::gguf::{dequantize, GgmlType};
        let (rows, cols) = (5, 96);
        for (format, ggml) in [
            (BlockFormat::Q4_0, GgmlType::Q4_0),
            (BlockFormat::Q4_1, GgmlType::Q4_1),
            (BlockFormat::Q8_0, GgmlType::Q8_0),
        ] {
            let blocks = random_blocks(format, rows, cols, 11);
            let mut want = vec![0.0f32; rows * cols];
            dequantize(ggml, &blocks, rows * cols, &mut want).unwrap();
            let m = QuantMatrix::new(format, blocks, rows, cols).unwrap();
            assert_eq!(m.dequantize(), want, "{format:?}");
        }
    }

    #[test]
    fn malformed_shapes_are_errors() {
        assert_eq!(
            QuantMatrix::new(BlockFormat::Q8_0, vec![0; 34], 1, 30).unwrap_err(),
            QuantMatrixError::PartialBlock { cols: 30 }
        );
        assert!(matches!(
            QuantMatrix::new(BlockFormat::Q4_0, vec![0; 35], 2, 32),
            Err(QuantMatrixError::Length { expected: 36, .. })
        ));
        assert!(QuantMatrix::new(BlockFormat::Q4_0, vec![], usize::MAX, 64).is_err());
    }
}
