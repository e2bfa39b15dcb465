//! `x @ W^T` with `W` kept in GGUF's quantized blocks, never expanded as a whole (issue 16).
//! Decode is bound by reading the weights, and the blocks are 4 to 7 times smaller than their
//! f32 expansion. Two ways, both exact up to f32-sized rounding:
//!
//! - **dots**, for 1-2 rows of `x`: each row of `x` is split once into three `i8` planes per
//!   block ([`planes`], about 22 bits of the block's largest value); each weight block's small
//!   integers are multiplied by them exactly in `i32` (`vpdpbusd` on AVX-512 VNNI,
//!   `vpmaddubsw` on AVX2) and scaled once per block. Unlike llama.cpp's single 8-bit plane,
//!   this gives the f32 expansion's logits (the reference test holds it to f32's tolerance).
//! - **expanded**, from 3 rows: panels of 32 weight rows are dequantized to f32 in cache and
//!   run by the packed f32 microkernel, where reusing each weight pays for the expansion.
//!   With AVX2, a panel's groups are transposed as bytes and widened in the panel's layout
//!   (`avx2::fill_tile`); elsewhere rows are dequantized, then transposed as floats.
//!
//! The model keeps projections this way under `--weights native` (the default) and `auto`
//! (`CpuProjection`). Formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (`groups.rs`
//! reads them all), and F16/BF16 kept as they are (float dots, no planes).

use std::sync::Arc;

use rayon::prelude::*;

use super::packed::{ScratchPanel, PANEL_WIDTH};
use super::{prefetch, SharedOut};
use planes::Planes;

/// Elements per block of the 32-element types, and per group of every type (a K-quant
/// super-block is eight).
pub const BLOCK: usize = 32;

/// A GGUF block type this module multiplies by (named as ggml names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum BlockFormat {
    /// `d: f16, qs: [u8; 16]`, `x = d * (q - 8)`.
    Q4_0,
    /// `d, m: f16, qs: [u8; 16]`, `x = d * q + m`.
    Q4_1,
    /// `d: f16, qh: u32, qs: [u8; 16]`, `x = d * (q - 16)` with 5-bit `q`.
    Q5_0,
    /// `d, m: f16, qh: u32, qs: [u8; 16]`, `x = d * q + m` with 5-bit `q`.
    Q5_1,
    /// `d: f16, qs: [i8; 32]`, `x = d * q`.
    Q8_0,
    /// 256 elements: `d, dmin: f16`, 6-bit scale and min per 32, 4-bit quants.
    Q4_K,
    /// As Q4_K with a fifth bit per quant.
    Q5_K,
    /// 256 elements: 6-bit quants offset by 32, an 8-bit scale per 16, `d: f16`.
    Q6_K,
    /// IEEE half floats, kept as they are (read in runs of 32).
    F16,
    /// bfloat16, kept as it is.
    BF16,
}

/// The formats of scaled small integers (all but F16 and BF16).
pub const INTEGER_FORMATS: [BlockFormat; 8] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q8_0,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q4_K,
    BlockFormat::Q5_K,
    BlockFormat::Q6_K,
];

impl BlockFormat {
    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_K => 144,
            BlockFormat::Q5_K => 176,
            BlockFormat::Q6_K => 210,
            BlockFormat::F16 | BlockFormat::BF16 => 2 * BLOCK,
        }
    }

    /// Elements of one block: 32, or 256 for the K-quants' super-blocks.
    pub fn block_elements(self) -> usize {
        match self {
            BlockFormat::Q4_0
            | BlockFormat::Q4_1
            | BlockFormat::Q5_0
            | BlockFormat::Q5_1
            | BlockFormat::Q8_0
            | BlockFormat::F16
            | BlockFormat::BF16 => BLOCK,
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => 256,
        }
    }

    /// Whether the values are half floats rather than scaled integers: their dots take `x` as
    /// it is, not split into planes.
    fn is_float(self) -> bool {
        matches!(self, BlockFormat::F16 | BlockFormat::BF16)
    }

    /// Whether a weight whose rows hold `cols` values is kept in this format. Half floats
    /// are read in runs of 32, so rows of another length are expanded instead; the integer
    /// formats are stored in whole blocks per row, and a file where they are not is
    /// malformed ([`QuantMatrix::new`] says so).
    pub fn keeps_rows_of(self, cols: usize) -> bool {
        !self.is_float() || cols.is_multiple_of(self.block_elements())
    }

    /// 32-element groups per block.
    fn groups(self) -> usize {
        self.block_elements() / BLOCK
    }
}

/// Why blocks could not form a matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantMatrixError {
    /// Rows must be whole blocks.
    #[error("{cols} columns is not a multiple of the {elements}-element block")]
    PartialBlock {
        /// Columns asked for.
        cols: usize,
        /// Elements per block of the format.
        elements: usize,
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
/// quantized blocks, each row a run of `cols / 32` blocks. Clones share the bytes (a tied
/// output head and the embedding are one matrix).
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    format: BlockFormat,
    blocks: Arc<[u8]>,
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
        let elements = format.block_elements();
        if !cols.is_multiple_of(elements) {
            return Err(QuantMatrixError::PartialBlock { cols, elements });
        }
        let expected = rows
            .checked_mul(cols / elements)
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
            blocks: blocks.into(),
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
        let blocks = parts
            .iter()
            .flat_map(|p| p.blocks.iter().copied())
            .collect();
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
        self.cols / self.format.block_elements() * self.format.block_bytes()
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

    /// Rows `ids`, expanded to f32 and laid end to end (an embedding lookup).
    ///
    /// # Panics
    /// When an id is not below [`Self::rows`] (callers validate token ids first).
    pub fn dequantize_rows(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0; ids.len() * self.cols];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let row = &self.blocks[id as usize * self.row_bytes()..][..self.row_bytes()];
            dequantize_row(self.format, row, dst);
        }
        out
    }

    /// `x @ W^T` for `x` row-major `[n, cols]`; returns `[n, rows]`: dots for few rows of `x`,
    /// the expansion for more (the module's doc; `docs/BENCHMARKS.md`, "Quantized
    /// projections").
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.cols, 0, "x is not [n, {}]", self.cols);
        if x.len() / self.cols >= EXPAND_FROM_ROWS {
            return self.matmul_expanded(x, tile_filler(self.format));
        }
        self.matmul_dots(x)
    }

    /// Output rows split across rayon's threads; each weight row is read once and dotted with
    /// every row of `x`, decomposed once into [`Planes`].
    fn matmul_dots(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.cols;
        let row_bytes = self.row_bytes();
        // Enough rows per task to amortize rayon's cost, few enough to balance two cores.
        let rows_per_task = (self.rows / 64).clamp(16, 256);
        let dot = kernel();
        let float_dot = float_kernel();
        let planes = (!self.format.is_float()).then(|| Planes::new(x, self.cols));
        // Computed as [rows, n] (each task owns whole weight rows), transposed at the end.
        let mut by_row = vec![0.0f32; self.rows * n];
        by_row
            .par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let rows = &self.blocks[task * rows_per_task * row_bytes..];
                let rows = &rows[..out.len() / n * row_bytes];
                match &planes {
                    Some(planes) => dot(self.format, rows, planes, out),
                    None => {
                        for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n))
                        {
                            float_dot(self.format, row, x, out)
                        }
                    }
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
    /// kernel, panels split across rayon's threads; each panel filled by `fill` when given,
    /// else its rows dequantized and then transposed.
    fn matmul_expanded(&self, x: &[f32], fill: Option<FillTileFn>) -> Vec<f32> {
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
                // Without `fill`: the panel's weight rows in f32, row-major, each row's
                // blocks read in order (32 rows read a tile at a time were 32 strided
                // streams, which left the loads waiting on memory), then transposed. Rows
                // past a last panel's end keep stale values, whose outputs are never written.
                let mut rows_f32 = Vec::new();
                let (dequantize, transpose) = (row_dequantizer(self.format), tile_transposer());
                for p in task * per_task..((task + 1) * per_task).min(num_panels) {
                    let first = p * PANEL_WIDTH;
                    let columns = PANEL_WIDTH.min(self.rows - first);
                    let rows = &self.blocks[first * row_bytes..];
                    if let Some(fill) = fill {
                        // The panel's rows are read a group at a time, 32 strided streams that
                        // leave the loads waiting on memory: ask for the next panel's bytes
                        // meanwhile, a share per tile.
                        let next = self.blocks.get((first + PANEL_WIDTH) * row_bytes..);
                        let next = next.unwrap_or_default();
                        let next = &next[..next.len().min(PANEL_WIDTH * row_bytes)];
                        let share = next.len().div_ceil((self.cols / BLOCK).max(1));
                        let panel_rows = PanelRows {
                            format: self.format,
                            blocks: rows,
                            row_bytes,
                            count: columns,
                        };
                        panel.fill(|t, dst| {
                            let part = next.get(t * share..).unwrap_or_default();
                            prefetch(&part[..share.min(part.len())]);
                            fill(&panel_rows, t, dst)
                        });
                    } else {
                        rows_f32.resize(PANEL_WIDTH * self.cols, 0.0);
                        for (row, dst) in rows
                            .chunks_exact(row_bytes)
                            .zip(rows_f32.chunks_exact_mut(self.cols))
                            .take(columns)
                        {
                            dequantize(self.format, row, dst);
                        }
                        panel.fill(|t, dst| transpose(&rows_f32[t * BLOCK..], self.cols, dst));
                    }
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

/// Writes one row of blocks as f32 into `out`.
type DequantizeFn = fn(BlockFormat, &[u8], &mut [f32]);

/// The fastest row dequantizer this CPU runs for `format`.
fn row_dequantizer(format: BlockFormat) -> DequantizeFn {
    #[cfg(target_arch = "x86_64")]
    if format.is_float() && has_avx2_f16c() {
        return avx2::dequantize_half_float_row;
    }
    let _ = format;
    dequantize_row
}

/// A panel's weight rows, as a tile filler reads them.
#[derive(Clone, Copy, Debug)]
struct PanelRows<'a> {
    format: BlockFormat,
    /// The panel's first row's blocks onwards, rows `row_bytes` apart.
    blocks: &'a [u8],
    row_bytes: usize,
    /// Rows in the panel: [`PANEL_WIDTH`], or fewer in a matrix's last panel.
    count: usize,
}

/// Writes tile `t` of a panel in the layout of [`ScratchPanel::fill`].
type FillTileFn = fn(&PanelRows<'_>, usize, &mut [f32]);

/// A tile filler straight from the blocks, where this CPU and `format` have one (else the
/// rows are dequantized, then transposed).
fn tile_filler(format: BlockFormat) -> Option<FillTileFn> {
    #[cfg(target_arch = "x86_64")]
    if !format.is_float() && has_avx2_f16c() {
        return Some(avx2::fill_tile);
    }
    let _ = format;
    None
}

/// The x86 builds that decode blocks need AVX2, FMA and F16C (for the blocks' f16 scales).
#[cfg(target_arch = "x86_64")]
fn has_avx2_f16c() -> bool {
    super::has_avx2() && std::arch::is_x86_feature_detected!("f16c")
}

/// Transposes a `BLOCK x BLOCK` tile whose rows are `stride` apart in `src`:
/// `dst[i * BLOCK + j] = src[j * stride + i]`.
type TransposeFn = fn(&[f32], usize, &mut [f32]);

/// The fastest tile transpose this CPU runs.
fn tile_transposer() -> TransposeFn {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        return avx2::transpose_tile;
    }
    transpose_tile_portable
}

fn transpose_tile_portable(src: &[f32], stride: usize, dst: &mut [f32]) {
    for (i, dst) in dst[..BLOCK * BLOCK].chunks_exact_mut(BLOCK).enumerate() {
        for (j, dst) in dst.iter_mut().enumerate() {
            *dst = src[j * stride + i];
        }
    }
}

/// The dot products of consecutive rows of blocks with every row of `x` (as [`Planes`]),
/// into `out` (`[weight rows, rows of x]`).
type DotFn = fn(BlockFormat, &[u8], &Planes, &mut [f32]);

/// The fastest dot product this CPU runs.
fn kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    match avx2::IntegerDot::detect() {
        Some(avx2::IntegerDot::Vnni) => {
            return |f, row, x, out| avx2::dot_rows_with(avx2::IntegerDot::Vnni, f, row, x, out)
        }
        Some(avx2::IntegerDot::Avx2) => {
            return |f, row, x, out| avx2::dot_rows_with(avx2::IntegerDot::Avx2, f, row, x, out)
        }
        None => {}
    }
    dot_rows_portable
}

/// The dot products of one row of half floats with every row of `x` (rows as long as the
/// weight row), into `out` (one per row of `x`).
type FloatDotFn = fn(BlockFormat, &[u8], &[f32], &mut [f32]);

/// The fastest half-float dot product this CPU runs.
fn float_kernel() -> FloatDotFn {
    #[cfg(target_arch = "x86_64")]
    if avx2::IntegerDot::detect().is_some() {
        return avx2::float_dot_rows;
    }
    float_dot_rows_portable
}

fn float_dot_rows_portable(format: BlockFormat, row: &[u8], x: &[f32], out: &mut [f32]) {
    let cols = x.len() / out.len();
    let weights: Vec<f32> = row
        .chunks_exact(2)
        .map(|b| groups::half_float(format, [b[0], b[1]]))
        .collect();
    for (out, x) in out.iter_mut().zip(x.chunks_exact(cols)) {
        *out = weights.iter().zip(x).map(|(w, x)| w * x).sum();
    }
}

fn dequantize_row(format: BlockFormat, row: &[u8], dst: &mut [f32]) {
    for (t, dst) in dst.chunks_exact_mut(BLOCK).enumerate() {
        let block = &row[t / format.groups() * format.block_bytes()..][..format.block_bytes()];
        groups::dequantize_group(format, block, t % format.groups(), dst);
    }
}

fn dot_rows_portable(format: BlockFormat, rows: &[u8], x: &Planes, out: &mut [f32]) {
    let row_bytes = rows.len() / (out.len() / x.rows());
    for (row, out) in rows
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(x.rows()))
    {
        for (i, out) in out.iter_mut().enumerate() {
            *out = dot_row_portable(format, row, x, i);
        }
    }
}

/// Per group and half `scale * step * (u . planes) + offset * sum`: what the vector builds
/// compute.
fn dot_row_portable(format: BlockFormat, row: &[u8], x: &Planes, i: usize) -> f32 {
    let mut total = 0.0f32;
    for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
        for g in 0..format.groups() {
            let x = x.block(i, b * format.groups() + g);
            let group = groups::group(format, block, g);
            let halves = planes::half_dots(&group.u, &x);
            let terms = group.scales.iter().zip(group.offsets);
            for ((scale, offset), (dot, sum)) in terms.zip(halves.iter().zip(x.half_sums)) {
                total += scale * x.step * *dot as f32 + offset * sum;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod groups;
mod planes;
#[cfg(test)]
mod tests;
