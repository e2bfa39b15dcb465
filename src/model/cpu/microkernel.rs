//! The register-blocked inner kernel: up to [`MAX_ROWS`] rows of `x` against one panel.
//!
//! AVX-512 when the CPU has it, else AVX2 with FMA (both checked once at run time), otherwise
//! a portable version the compiler vectorizes for whatever the build targets.

use super::packed::PANEL_WIDTH;

/// Rows per kernel call: 12 rows x 2 vectors = 24 accumulators of the 32 AVX-512 registers,
/// enough independent FMA chains to hide their latency on two FMA pipes.
pub const MAX_ROWS: usize = 12;

/// One kernel call's operands.
pub struct Tile<'a> {
    /// Row 0 of the tile, at the tile's first input index; row `i` starts at `i * x_stride`.
    pub x: &'a [f32],
    pub x_stride: usize,
    /// `depth * PANEL_WIDTH` packed weights.
    pub panel: &'a [f32],
    pub depth: usize,
    /// Output row 0 at the panel's first column; row `i` at `i * out_stride`.
    pub out: *mut f32,
    pub out_stride: usize,
    /// `1..=MAX_ROWS`.
    pub rows: usize,
    /// Output columns that exist (`1..=PANEL_WIDTH`); the rest of the panel is padding.
    pub cols: usize,
    /// Add to `out` instead of overwriting it.
    pub accumulate: bool,
}

/// Computes the tile.
///
/// # Safety
/// `out` must be valid for `rows` rows of `cols` floats at `out_stride`, and not be read or
/// written by anyone else meanwhile; `x` must hold `(rows - 1) * x_stride + depth` floats.
pub unsafe fn run(tile: &Tile<'_>) {
    debug_assert!((1..=MAX_ROWS).contains(&tile.rows));
    debug_assert!(tile.x.len() >= (tile.rows - 1) * tile.x_stride + tile.depth);
    debug_assert!(tile.panel.len() >= tile.depth * PANEL_WIDTH);
    // SAFETY: `chosen` only returns a build the CPU supports; the caller upholds the rest.
    unsafe { chosen()(tile) }
}

/// A build of the kernel.
type Kernel = for<'a, 'b> unsafe fn(&'a Tile<'b>);

/// The best build this CPU runs, decided once: `run` is called per tile, tens of thousands of
/// times a step, and a feature check each time would be that many wasted lookups.
fn chosen() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx512() {
                return avx512::dispatch as Kernel;
            }
            if super::has_avx2() {
                return avx2::dispatch as Kernel;
            }
        }
        portable as Kernel
    })
}

/// # Safety
/// As [`run`].
unsafe fn portable(tile: &Tile<'_>) {
    let mut acc = [[0.0f32; PANEL_WIDTH]; MAX_ROWS];
    for (kk, w) in tile
        .panel
        .chunks_exact(PANEL_WIDTH)
        .take(tile.depth)
        .enumerate()
    {
        for (i, acc_row) in acc.iter_mut().enumerate().take(tile.rows) {
            let xi = tile.x[i * tile.x_stride + kk];
            for (a, &wj) in acc_row.iter_mut().zip(w) {
                *a += xi * wj;
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate().take(tile.rows) {
        // SAFETY: row `i` of the output, `cols` floats, owned by this call.
        let out =
            unsafe { std::slice::from_raw_parts_mut(tile.out.add(i * tile.out_stride), tile.cols) };
        for (o, &a) in out.iter_mut().zip(acc_row) {
            *o = if tile.accumulate { *o + a } else { a };
        }
    }
}

/// The AVX2 build (most x86 CPUs without AVX-512). AVX2 has 16 vector registers of 8 floats,
/// too few to hold [`MAX_ROWS`] rows of a 32-column panel: the portable loop, compiled for
/// AVX2, kept its accumulators in memory, so its cost grew with every row and a batched
/// decode step with the batch (measured: 5 streams decoded at 1.2x one stream's rate). This
/// one takes the panel in two halves of 16 columns and the rows 6 at a time: 12
/// accumulators, 2 panel vectors and 1 broadcast, all in registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, PANEL_WIDTH};
    use std::arch::x86_64::*;

    /// Rows per pass over a half panel.
    const ROWS_PER_PASS: usize = 6;
    /// Columns per half panel: two vectors.
    const HALF: usize = 16;
    /// Floats ahead of the current panel position to prefetch (4 KiB), as in the AVX-512
    /// build.
    const PREFETCH_AHEAD: usize = 1024;

    /// # Safety
    /// AVX2 and FMA present; memory contract of [`super::run`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dispatch(tile: &Tile<'_>) {
        for half in 0..PANEL_WIDTH / HALF {
            let cols = tile.cols.saturating_sub(half * HALF).min(HALF);
            if cols == 0 {
                continue;
            }
            let mut row = 0;
            while row < tile.rows {
                let rows = (tile.rows - row).min(ROWS_PER_PASS);
                let pass = Pass {
                    row,
                    column: half * HALF,
                    cols,
                };
                // SAFETY: forwarded; `row + rows <= tile.rows` and the columns are inside
                // the panel.
                unsafe {
                    match rows {
                        1 => rows_of::<1>(tile, &pass),
                        2 => rows_of::<2>(tile, &pass),
                        3 => rows_of::<3>(tile, &pass),
                        4 => rows_of::<4>(tile, &pass),
                        5 => rows_of::<5>(tile, &pass),
                        _ => rows_of::<ROWS_PER_PASS>(tile, &pass),
                    }
                }
                row += rows;
            }
        }
    }

    /// Which part of the tile one pass computes.
    struct Pass {
        /// Its first row.
        row: usize,
        /// Its first column in the panel.
        column: usize,
        /// Output columns that exist from `column` on (`1..=HALF`).
        cols: usize,
    }

    /// `R` rows of half a panel: fixed at compile time so the accumulators live in registers.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_of<const R: usize>(tile: &Tile<'_>, pass: &Pass) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        // SAFETY (for every access below): the caller's contract sizes `x` for the tile's
        // rows and `depth`, and the panel for `depth * PANEL_WIDTH` floats; `pass.column +
        // HALF <= PANEL_WIDTH`. A prefetch past the end is a hint, never a fault.
        unsafe {
            let x = tile.x.as_ptr().add(pass.row * tile.x_stride);
            let mut w = tile.panel.as_ptr().add(pass.column);
            for kk in 0..tile.depth {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH_AHEAD).cast());
                let w_lo = _mm256_loadu_ps(w);
                let w_hi = _mm256_loadu_ps(w.add(8));
                for i in 0..R {
                    let xi = _mm256_broadcast_ss(&*x.add(i * tile.x_stride + kk));
                    lo[i] = _mm256_fmadd_ps(xi, w_lo, lo[i]);
                    hi[i] = _mm256_fmadd_ps(xi, w_hi, hi[i]);
                }
                w = w.add(PANEL_WIDTH);
            }
            for i in 0..R {
                let mut sums = [0.0f32; HALF];
                _mm256_storeu_ps(sums.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), hi[i]);
                // Row `pass.row + i` of the output, `cols` floats from `pass.column`, owned
                // by this call.
                let out = std::slice::from_raw_parts_mut(
                    tile.out.add((pass.row + i) * tile.out_stride + pass.column),
                    pass.cols,
                );
                for (o, &sum) in out.iter_mut().zip(&sums) {
                    *o = if tile.accumulate { *o + sum } else { sum };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, MAX_ROWS, PANEL_WIDTH};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F present; memory contract of [`super::run`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dispatch(tile: &Tile<'_>) {
        // SAFETY: forwarded.
        unsafe {
            match tile.rows {
                1 => rows::<1>(tile),
                2 => rows::<2>(tile),
                3 => rows::<3>(tile),
                4 => rows::<4>(tile),
                5 => rows::<5>(tile),
                6 => rows::<6>(tile),
                7 => rows::<7>(tile),
                8 => rows::<8>(tile),
                9 => rows::<9>(tile),
                10 => rows::<10>(tile),
                11 => rows::<11>(tile),
                _ => rows::<MAX_ROWS>(tile),
            }
        }
    }

    /// Floats ahead of the current panel position to prefetch (4 KiB).
    const PREFETCH_AHEAD: usize = 1024;

    /// `R` rows: fixed at compile time so the accumulators live in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(tile: &Tile<'_>) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let x = tile.x.as_ptr();
        let mut w = tile.panel.as_ptr();
        for kk in 0..tile.depth {
            // SAFETY: `kk < depth`; the panel holds `depth * PANEL_WIDTH` floats and each
            // row of `x` holds `depth` floats from its start (the caller's contract).
            unsafe {
                // The panel streams from memory when few rows share it (decode): ask for
                // it well ahead, beyond what the hardware prefetcher ramps up to. A prefetch
                // past the end of the panel is a hint, never a fault.
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH_AHEAD).cast());
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH_AHEAD + 16).cast());
                let w_lo = _mm512_loadu_ps(w);
                let w_hi = _mm512_loadu_ps(w.add(16));
                for i in 0..R {
                    let xi = _mm512_set1_ps(*x.add(i * tile.x_stride + kk));
                    lo[i] = _mm512_fmadd_ps(xi, w_lo, lo[i]);
                    hi[i] = _mm512_fmadd_ps(xi, w_hi, hi[i]);
                }
                w = w.add(PANEL_WIDTH);
            }
        }
        for i in 0..R {
            // SAFETY: row `i` of the output, owned by this call; masked to `cols`.
            unsafe {
                let out = tile.out.add(i * tile.out_stride);
                let cols_lo = tile.cols.min(16);
                let cols_hi = tile.cols.saturating_sub(16);
                let mask_lo: __mmask16 = mask(cols_lo);
                let mask_hi: __mmask16 = mask(cols_hi);
                let (mut v_lo, mut v_hi) = (lo[i], hi[i]);
                if tile.accumulate {
                    v_lo = _mm512_add_ps(v_lo, _mm512_maskz_loadu_ps(mask_lo, out));
                    v_hi = _mm512_add_ps(v_hi, _mm512_maskz_loadu_ps(mask_hi, out.add(16)));
                }
                _mm512_mask_storeu_ps(out, mask_lo, v_lo);
                _mm512_mask_storeu_ps(out.add(16), mask_hi, v_hi);
            }
        }
        debug_assert!(R <= MAX_ROWS);
    }

    fn mask(cols: usize) -> __mmask16 {
        if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as __mmask16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build where the CPU has it, else the portable one.
    unsafe fn avx2_if_present(tile: &Tile<'_>) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::cpu::has_avx2() {
            // SAFETY: checked just above; the caller upholds the memory contract.
            unsafe { avx2::dispatch(tile) };
            return;
        }
        // SAFETY: the caller upholds the memory contract.
        unsafe { portable(tile) }
    }

    /// Every build computes the same tile (the values are exact in `f32`, so fused and
    /// unfused multiply-adds agree to the bit).
    #[test]
    fn every_kernel_build_agrees() {
        for (rows, cols, depth) in [
            (1, 32, 5),
            (MAX_ROWS, 17, 40),
            (5, 1, 9),
            (7, 16, 3),
            (11, 32, 64),
            (6, 31, 2),
        ] {
            let x: Vec<f32> = (0..rows * depth).map(|i| (i % 7) as f32 - 3.0).collect();
            let panel: Vec<f32> = (0..depth * PANEL_WIDTH)
                .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let mut fast = vec![1.0f32; rows * PANEL_WIDTH];
            let mut slow = fast.clone();
            let mut avx2 = fast.clone();
            for (out, variant) in [(&mut fast, 0), (&mut slow, 1), (&mut avx2, 2)] {
                let tile = Tile {
                    x: &x,
                    x_stride: depth,
                    panel: &panel,
                    depth,
                    out: out.as_mut_ptr(),
                    out_stride: PANEL_WIDTH,
                    rows,
                    cols,
                    accumulate: true,
                };
                // SAFETY: `out` holds `rows * PANEL_WIDTH` floats; `x` and `panel` are sized
                // for the tile.
                unsafe {
                    match variant {
                        0 => run(&tile),
                        1 => portable(&tile),
                        _ => avx2_if_present(&tile),
                    }
                };
            }
            assert_eq!(fast, slow, "rows {rows} cols {cols} depth {depth}");
            assert_eq!(
                avx2, slow,
                "AVX2 build: rows {rows} cols {cols} depth {depth}"
            );
            // Columns past `cols` are untouched.
            assert!(slow
                .chunks(PANEL_WIDTH)
                .all(|r| r[cols..].iter().all(|&v| v == 1.0)));
        }
    }
}
