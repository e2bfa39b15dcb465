//! `x @ W^T` on the CPU with `W` packed once at load time.
//!
//! Why not flex's matmul: it hands both operands to `gemm`, which re-packs the weight matrix on
//! every call; at the row counts of a decode step that copy costs about as much as the
//! arithmetic. Packing once and running our own register-blocked kernel removes it: 1.1-3.3x
//! flex's speed on the model's shapes (`examples/matmul_bench.rs`, docs/BENCHMARKS.md).
//!
//! Layout: the output columns (the weight's rows) are cut into panels of [`PANEL_WIDTH`]; a
//! panel stores, for each input index `k`, its [`PANEL_WIDTH`] weights side by side, so the
//! kernel streams one panel from front to back while it accumulates a few rows of `x`
//! against it. The last panel is padded with zeros.
//!
//! Summation order differs from a naive dot product only in how partial sums over `k` are
//! grouped ([`K_BLOCK`]), so results agree with f32 reference matmuls to rounding.

use rayon::prelude::*;

use super::{microkernel, SharedOut};

/// Output columns per panel: two 16-lane AVX-512 vectors.
pub const PANEL_WIDTH: usize = 32;
/// Input indices per pass over a panel: a `K_BLOCK x PANEL_WIDTH` slice of a panel (32 KiB)
/// stays in L1 while every row block of `x` runs over it.
const K_BLOCK: usize = 256;
/// Bytes of `x` one pass over the weights may touch: the rows of `x` stay in L2 (1-2 MiB on
/// current x86 cores) while each panel is read once per pass.
const ROW_BLOCK_BYTES: usize = 384 * 1024;
/// Below this many multiply-adds a call runs on the calling thread: splitting costs more.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A 64-byte aligned group of 16 floats, so panel rows never straddle cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lanes([f32; 16]);

/// A weight matrix `[out_features, in_features]`, packed for [`PackedMatrix::matmul`].
pub struct PackedMatrix {
    in_features: usize,
    out_features: usize,
    /// `num_panels * in_features * PANEL_WIDTH` floats.
    panels: Vec<Lanes>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("in_features", &self.in_features)
            .field("out_features", &self.out_features)
            .finish()
    }
}

impl PackedMatrix {
    /// Packs a row-major `[out_features, in_features]` matrix (PyTorch's `Linear.weight`).
    ///
    /// # Panics
    /// If `weight.len() != out_features * in_features`.
    pub fn pack(weight: &[f32], out_features: usize, in_features: usize) -> Self {
        assert_eq!(weight.len(), out_features * in_features, "weight shape");
        let num_panels = out_features.div_ceil(PANEL_WIDTH);
        let lanes_per_panel = in_features * PANEL_WIDTH / 16;
        let mut panels = vec![Lanes([0.0; 16]); num_panels * lanes_per_panel];
        let floats = lanes_as_floats_mut(&mut panels);
        for (p, panel) in floats
            .chunks_exact_mut(in_features * PANEL_WIDTH)
            .enumerate()
        {
            let cols = PANEL_WIDTH.min(out_features - p * PANEL_WIDTH);
            for j in 0..cols {
                let row = &weight[(p * PANEL_WIDTH + j) * in_features..][..in_features];
                for (k, &w) in row.iter().enumerate() {
                    panel[k * PANEL_WIDTH + j] = w;
                }
            }
        }
        Self {
            in_features,
            out_features,
            panels,
        }
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<Lanes>()
    }

    /// `x @ W^T`: `x` is row-major `[rows, in_features]`, the result `[rows, out_features]`.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `in_features`.
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let k = self.in_features;
        assert!(k > 0 && x.len().is_multiple_of(k), "input width");
        let rows = x.len() / k;
        let n = self.out_features;
        let mut out = vec![0.0f32; rows * n];
        let num_panels = n.div_ceil(PANEL_WIDTH);
        let panels = lanes_as_floats(&self.panels);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let run = |first: usize, end: usize| {
            // SAFETY: every task writes only the columns of its own panels, and `out` outlives
            // the parallel section.
            unsafe { self.run_panels(x, rows, panels, first..end, out_ptr) }
        };
        let threads = rayon::current_num_threads();
        if threads <= 1 || rows * n * k < PARALLEL_MIN_MACS || num_panels < 2 {
            run(0, num_panels);
        } else {
            // A few tasks per thread so a thread slowed by a neighbour does not hold the rest.
            let tasks = (threads * 4).min(num_panels);
            let per_task = num_panels.div_ceil(tasks);
            (0..num_panels.div_ceil(per_task))
                .into_par_iter()
                .for_each(|t| run(t * per_task, ((t + 1) * per_task).min(num_panels)));
        }
        out
    }

    /// # Safety
    /// No other thread may write the columns of `panel_range` in `out` meanwhile; `out` holds
    /// `rows * out_features` floats.
    unsafe fn run_panels(
        &self,
        x: &[f32],
        rows: usize,
        panels: &[f32],
        panel_range: std::ops::Range<usize>,
        out: SharedOut,
    ) {
        let (k, n) = (self.in_features, self.out_features);
        let panel_len = k * PANEL_WIDTH;
        let row_block = row_block(k);
        for row0 in (0..rows).step_by(row_block) {
            let row_end = (row0 + row_block).min(rows);
            for p in panel_range.clone() {
                let panel = &panels[p * panel_len..][..panel_len];
                // SAFETY: as this function's contract.
                unsafe { run_panel(x, row0..row_end, panel, p, n, out) };
            }
        }
    }
}

/// Rows `rows` of `x` (`[_, k]`, `k = panel.len() / PANEL_WIDTH`) against panel `p` of a
/// matrix with `n` output features, into those rows and the panel's columns of `out`.
///
/// # Safety
/// No other thread may write those cells of `out` meanwhile; `out` holds `rows.end * n`
/// floats.
unsafe fn run_panel(
    x: &[f32],
    rows: std::ops::Range<usize>,
    panel: &[f32],
    p: usize,
    n: usize,
    out: SharedOut,
) {
    let k = panel.len() / PANEL_WIDTH;
    let cols = PANEL_WIDTH.min(n - p * PANEL_WIDTH);
    // The output tiles of this panel stay in L1/L2 across the k blocks.
    for k0 in (0..k).step_by(K_BLOCK) {
        let depth = K_BLOCK.min(k - k0);
        let panel = &panel[k0 * PANEL_WIDTH..][..depth * PANEL_WIDTH];
        let mut r = rows.start;
        while r < rows.end {
            let block = microkernel::MAX_ROWS.min(rows.end - r);
            let tile = microkernel::Tile {
                x: &x[r * k + k0..],
                x_stride: k,
                panel,
                depth,
                // SAFETY: in bounds (row r, column p * PANEL_WIDTH); the caller owns those
                // cells.
                out: unsafe { out.0.add(r * n + p * PANEL_WIDTH) },
                out_stride: n,
                rows: block,
                cols,
                accumulate: k0 > 0,
            };
            // SAFETY: `tile` describes memory inside `x`, `panel` and `out`.
            unsafe { microkernel::run(&tile) };
            r += block;
        }
    }
}

/// One panel of a matrix filled on the fly (from quantized blocks), multiplied like a panel of
/// a [`PackedMatrix`]: the same kernel and summation order.
pub(super) struct ScratchPanel {
    in_features: usize,
    lanes: Vec<Lanes>,
}

impl ScratchPanel {
    /// An empty panel for rows of `in_features`.
    pub(super) fn new(in_features: usize) -> Self {
        Self {
            in_features,
            lanes: vec![Lanes([0.0; 16]); in_features * PANEL_WIDTH / 16],
        }
    }

    /// Fills the panel one tile of [`PANEL_WIDTH`] inputs at a time, front to back:
    /// `tile(t, dst)` writes inputs `t * PANEL_WIDTH..` of every column into `dst`, input-major
    /// (`dst[i * PANEL_WIDTH + j]` is input `t * PANEL_WIDTH + i` of column `j`).
    ///
    /// # Panics
    /// If `in_features` is not a multiple of [`PANEL_WIDTH`].
    pub(super) fn fill(&mut self, mut tile: impl FnMut(usize, &mut [f32])) {
        assert!(self.in_features.is_multiple_of(PANEL_WIDTH), "partial tile");
        let panel = lanes_as_floats_mut(&mut self.lanes);
        for (t, dst) in panel
            .chunks_exact_mut(PANEL_WIDTH * PANEL_WIDTH)
            .enumerate()
        {
            tile(t, dst);
        }
    }

    /// Every row of `x` (`[rows, in_features]`) against this panel, as panel `p` of a matrix
    /// with `n` output features, into `out` (`[rows, n]`). Columns past the matrix's last
    /// output feature may hold stale weights; their outputs are not written.
    ///
    /// # Safety
    /// No other thread may write this panel's columns of `out` meanwhile; `out` holds
    /// `rows * n` floats.
    pub(super) unsafe fn multiply(
        &self,
        x: &[f32],
        rows: usize,
        p: usize,
        n: usize,
        out: SharedOut,
    ) {
        let panel = lanes_as_floats(&self.lanes);
        let row_block = row_block(self.in_features);
        for row0 in (0..rows).step_by(row_block) {
            // SAFETY: as this function's contract.
            unsafe { run_panel(x, row0..(row0 + row_block).min(rows), panel, p, n, out) };
        }
    }
}

/// Rows of `x` per pass over the weights: as many whole kernel blocks as fit
/// [`ROW_BLOCK_BYTES`], at least one.
fn row_block(in_features: usize) -> usize {
    let rows = ROW_BLOCK_BYTES / (in_features * 4);
    (rows / microkernel::MAX_ROWS).max(1) * microkernel::MAX_ROWS
}

fn lanes_as_floats(lanes: &[Lanes]) -> &[f32] {
    // SAFETY: `Lanes` is `repr(C)` over `[f32; 16]` with no padding (64 bytes, align 64).
    unsafe { std::slice::from_raw_parts(lanes.as_ptr().cast(), lanes.len() * 16) }
}

fn lanes_as_floats_mut(lanes: &mut [Lanes]) -> &mut [f32] {
    // SAFETY: as in `lanes_as_floats`.
    unsafe { std::slice::from_raw_parts_mut(lanes.as_mut_ptr().cast(), lanes.len() * 16) }
}

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
