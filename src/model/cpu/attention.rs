//! Causal attention that reads keys and values where they lie in the paged cache.
//!
//! Why not burn's attention on flex: it needs dense `[seqs, 1, context, head_dim]` keys and
//! values, so every step first gathered each sequence's whole context out of the pool (the
//! largest copy of a batched decode step: the context is read twice and written once), built
//! a boolean mask, and computed the scores that the causal mask then threw away.
//!
//! Here each work item is (sequence, KV head, a chunk of that sequence's new tokens). It walks
//! the sequence's block table in tiles of up to [`KEY_TILE`] keys and, while the tile is in
//! L1, scores every query row sharing the KV head against it and folds it into the row's
//! running softmax statistics (the online softmax of FlashAttention), so no score matrix is
//! ever materialised and a query never looks at a key after its own position.

use rayon::prelude::*;

use super::{has_avx2, has_avx512, prefetch, SharedOut};
use crate::model::attention::HeadLayout;
use crate::model::batch::SequenceSlice;

/// Keys per tile: one 16-lane vector of scores per query row.
const KEY_TILE: usize = 16;
/// New tokens per work item: long prefills are split across cores by query chunks.
const TOKENS_PER_ITEM: usize = 16;

/// A layer's attention inputs.
pub struct PagedAttention<'a> {
    /// `[num_tokens, query_stride]`, query heads first, RoPE applied.
    pub queries: &'a [f32],
    pub query_stride: usize,
    /// Per KV head, already holding this pass's keys, transposed within each block:
    /// `[num_blocks, head_dim, block_size]` (see [`write_keys_transposed`]). A tile's scores
    /// are then `head_dim` vector multiply-adds, with no horizontal sums.
    pub keys: &'a [&'a [f32]],
    /// Per KV head, `[num_slots, head_dim]`, already holding this pass's values.
    pub values: &'a [&'a [f32]],
    pub heads: HeadLayout,
    pub block_size: usize,
    /// The batch's sequences, whose new tokens are packed in this order.
    pub sequences: &'a [SequenceSlice],
}

/// One work item: a sequence's new tokens `tokens` (indices among its new tokens) for KV head
/// `kv_head`.
#[derive(Clone, Debug)]
struct Item {
    sequence: usize,
    first_row: usize,
    kv_head: usize,
    tokens: std::ops::Range<usize>,
}

/// How a tile is folded into its rows' running softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    /// [`fold_tile`], one row at a time.
    Portable,
    /// [`avx2::fold_tile`]: rows together, a tile's 16 scores in two 8-lane vectors.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// [`avx512::fold_tile`]: rows together, a tile's 16 scores in one vector.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl Fold {
    /// Fastest first.
    const ALL: [Fold; 3] = [Fold::Avx512, Fold::Avx2, Fold::Portable];

    /// Whether this CPU runs this build for heads `head_dim` wide (the vector builds read the
    /// head in whole vectors).
    fn runs(self, head_dim: usize) -> bool {
        match self {
            Fold::Avx512 => has_avx512() && head_dim.is_multiple_of(16),
            Fold::Avx2 => has_avx2() && head_dim.is_multiple_of(8),
            Fold::Portable => true,
        }
    }

    /// The fastest build this CPU runs for heads `head_dim` wide.
    fn best_for(head_dim: usize) -> Fold {
        let runnable = Fold::ALL.into_iter().find(|f| f.runs(head_dim));
        runnable.unwrap_or(Fold::Portable)
    }
}

impl PagedAttention<'_> {
    /// `[num_tokens, num_heads * head_dim]`, packed like the queries.
    pub fn run(&self) -> Vec<f32> {
        self.run_with(Fold::best_for(self.heads.head_dim))
    }

    /// [`Self::run`], folding tiles with `fold` (which the CPU must have).
    fn run_with(&self, fold: Fold) -> Vec<f32> {
        let HeadLayout {
            num_heads,
            num_kv_heads,
            head_dim,
        } = self.heads;
        let num_tokens: usize = self.sequences.iter().map(|s| s.num_new_tokens).sum();
        let out_width = num_heads * head_dim;
        let mut out = vec![0.0f32; num_tokens * out_width];
        let mut items = Vec::new();
        let mut first_row = 0;
        for (sequence, seq) in self.sequences.iter().enumerate() {
            for kv_head in 0..num_kv_heads {
                for start in (0..seq.num_new_tokens).step_by(TOKENS_PER_ITEM) {
                    let end = (start + TOKENS_PER_ITEM).min(seq.num_new_tokens);
                    items.push(Item {
                        sequence,
                        first_row,
                        kv_head,
                        tokens: start..end,
                    });
                }
            }
            first_row += seq.num_new_tokens;
        }
        let out_ptr = SharedOut(out.as_mut_ptr());
        // The most expensive items (the latest tokens of long prompts) first.
        items.par_iter().rev().for_each(|item| {
            // SAFETY: each item writes only its own (row, head) cells of `out`, which holds
            // `num_tokens * out_width` floats and outlives the parallel section.
            unsafe {
                match fold {
                    #[cfg(target_arch = "x86_64")]
                    Fold::Avx2 => self.item_avx2(item, out_ptr),
                    _ => self.item(item, out_ptr, fold),
                }
            }
        });
        out
    }

    /// The portable [`Self::item`] compiled for AVX2 (most x86 CPUs without AVX-512).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`Self::item`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn item_avx2(&self, item: &Item, out: SharedOut) {
        // SAFETY: forwarded.
        unsafe { self.item(item, out, Fold::Avx2) }
    }

    /// # Safety
    /// No other thread writes this item's output cells meanwhile; the CPU has what `fold`
    /// needs and `head_dim` suits it ([`Fold::best_for`]).
    #[inline(always)]
    unsafe fn item(&self, item: &Item, out: SharedOut, fold: Fold) {
        let HeadLayout {
            num_heads,
            num_kv_heads,
            head_dim: hd,
        } = self.heads;
        let per_kv = num_heads / num_kv_heads;
        let seq = &self.sequences[item.sequence];
        let keys = self.keys[item.kv_head];
        let values = self.values[item.kv_head];
        let scale = 1.0 / (hd as f32).sqrt();

        // Rows ordered (token, query head of this KV head).
        let rows = item.tokens.len() * per_kv;
        let token_row = |row: usize| item.first_row + item.tokens.start + row / per_kv;
        let head = |row: usize| item.kv_head * per_kv + row % per_kv;
        let position = |row: usize| seq.num_cached_tokens + item.tokens.start + row / per_kv;
        let out_width = num_heads * hd;
        let mut states: Vec<RowState> = (0..rows)
            .map(|row| RowState {
                query: &self.queries[token_row(row) * self.query_stride + head(row) * hd..][..hd],
                position: position(row),
                max: f32::NEG_INFINITY,
                sum: 0.0,
                // SAFETY: the row accumulates in its own output cell (zeroed by `run`), which
                // belongs to this item alone and is in bounds.
                acc: unsafe {
                    std::slice::from_raw_parts_mut(
                        out.0.add(token_row(row) * out_width + head(row) * hd),
                        hd,
                    )
                },
            })
            .collect();

        let last_position = position(rows - 1);
        let mut key0 = 0;
        while key0 <= last_position {
            // A tile never crosses a block: its slots are then consecutive.
            let block = self.block_size;
            let in_block = key0 % block;
            let len = KEY_TILE.min(block - in_block).min(last_position + 1 - key0);
            let block_id = seq.block_table[key0 / block] as usize;
            let slot0 = block_id * block + in_block;
            let tile = Tile {
                first_key: key0,
                keys_t: &keys[block_id * block * hd..][..block * hd],
                block_size: block,
                in_block,
                values: &values[slot0 * hd..][..len * hd],
                len,
            };
            // Blocks are scattered pages, where the hardware prefetcher starts cold: on
            // entering a block, ask for the next one so it arrives while this one is used.
            let next_block = key0 / block + 1;
            if in_block == 0 && next_block * block <= last_position {
                let next = seq.block_table[next_block] as usize * block * hd;
                prefetch(&keys[next..][..block * hd]);
                prefetch(&values[next..][..block * hd]);
            }
            // Rows whose position precedes the tile see none of it; rows are ordered by
            // position, so those are a prefix.
            let first_seeing = states.partition_point(|s| s.position < key0);
            let seeing = &mut states[first_seeing..];
            match fold {
                #[cfg(target_arch = "x86_64")]
                Fold::Avx512 => {
                    for group in seeing.chunks_mut(avx512::MAX_ROWS) {
                        // SAFETY: the caller checked AVX-512F and the head width.
                        unsafe { avx512::fold_tile(group, &tile, scale) };
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Fold::Avx2 => {
                    for group in seeing.chunks_mut(avx2::MAX_ROWS) {
                        // SAFETY: the caller checked AVX2 and FMA and the head width.
                        unsafe { avx2::fold_tile(group, &tile, scale) };
                    }
                }
                _ => {
                    for state in seeing {
                        fold_tile(state, &tile, scale);
                    }
                }
            }
            key0 += len;
        }

        for state in &mut states {
            let inv = 1.0 / state.sum;
            for a in state.acc.iter_mut() {
                *a *= inv;
            }
        }
    }
}

/// One query row's running softmax: `acc / sum` is its output so far.
struct RowState<'a> {
    query: &'a [f32],
    position: usize,
    max: f32,
    sum: f32,
    /// The row's output cell, `head_dim` floats.
    acc: &'a mut [f32],
}

/// Up to [`KEY_TILE`] consecutive keys of one sequence (all in one block), with their values.
struct Tile<'a> {
    first_key: usize,
    /// The whole block's keys, `[head_dim, block_size]`; the tile's are columns
    /// `in_block..in_block + len`.
    keys_t: &'a [f32],
    block_size: usize,
    in_block: usize,
    /// `len * head_dim`, row-major.
    values: &'a [f32],
    len: usize,
}

impl Tile<'_> {
    /// Keys of the tile at or before `position`.
    fn visible_to(&self, position: usize) -> usize {
        (position + 1).saturating_sub(self.first_key).min(self.len)
    }
}

/// Folds `tile` into `state` (the online softmax update), portable version.
#[inline(always)]
fn fold_tile(state: &mut RowState<'_>, tile: &Tile<'_>, scale: f32) {
    let hd = state.query.len();
    let visible = tile.visible_to(state.position);
    let mut scores = [0.0f32; KEY_TILE];
    for (&q, keys) in state
        .query
        .iter()
        .zip(tile.keys_t.chunks_exact(tile.block_size))
    {
        for (s, &k) in scores.iter_mut().zip(&keys[tile.in_block..][..visible]) {
            *s += q * k;
        }
    }
    for s in &mut scores[..visible] {
        *s *= scale;
    }
    let tile_max = scores[..visible]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let new_max = state.max.max(tile_max);
    let correction = exp_nonpositive(state.max - new_max);
    let mut tile_sum = 0.0;
    for s in &mut scores[..visible] {
        *s = exp_nonpositive(*s - new_max);
        tile_sum += *s;
    }
    state.max = new_max;
    state.sum = state.sum * correction + tile_sum;
    for a in state.acc.iter_mut() {
        *a *= correction;
    }
    for (p, value) in scores[..visible].iter().zip(tile.values.chunks_exact(hd)) {
        for (a, &v) in state.acc.iter_mut().zip(value) {
            *a += p * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{RowState, Tile, KEY_TILE};
    use std::arch::x86_64::*;

    /// Rows folded together: each key and value vector loaded is used by this many rows.
    pub const MAX_ROWS: usize = 4;

    /// [`super::fold_tile`] for up to [`MAX_ROWS`] rows at once, with the tile's 16 scores of
    /// a row in one vector and the head in 16-lane vectors.
    ///
    /// # Safety
    /// AVX-512F present; `head_dim` a multiple of 16; `1 <= rows.len() <= MAX_ROWS`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fold_tile(rows: &mut [RowState<'_>], tile: &Tile<'_>, scale: f32) {
        // SAFETY: forwarded.
        unsafe {
            match rows.len() {
                1 => fold_rows::<1>(rows, tile, scale),
                2 => fold_rows::<2>(rows, tile, scale),
                3 => fold_rows::<3>(rows, tile, scale),
                _ => fold_rows::<MAX_ROWS>(rows, tile, scale),
            }
        }
    }

    /// # Safety
    /// As [`fold_tile`], with `rows.len() == R`.
    // Indices walk several parallel arrays (rows, lanes, weights, value rows) at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn fold_rows<const R: usize>(rows: &mut [RowState<'_>], tile: &Tile<'_>, scale: f32) {
        let hd = rows[0].query.len();
        let mut lanes = [0 as __mmask16; R];
        let mut visible = [0usize; R];
        for r in 0..R {
            visible[r] = tile.visible_to(rows[r].position);
            lanes[r] = ((1u32 << visible[r]) - 1) as __mmask16;
        }
        let tile_lanes = ((1u32 << tile.len) - 1) as __mmask16;
        let mut weights = [[0.0f32; KEY_TILE]; R];
        // SAFETY: every pointer below stays inside a row's `query` (hd floats), `tile.keys_t`
        // (`hd * block_size` floats, loads masked to the tile's `len` columns from
        // `in_block`), `tile.values` (`len * hd` floats) or a row's `acc` (hd floats).
        unsafe {
            let keys = tile.keys_t.as_ptr().add(tile.in_block);
            let mut scores = [_mm512_setzero_ps(); R];
            for d in 0..hd {
                let k = _mm512_maskz_loadu_ps(tile_lanes, keys.add(d * tile.block_size));
                for r in 0..R {
                    let q = _mm512_set1_ps(*rows[r].query.get_unchecked(d));
                    scores[r] = _mm512_fmadd_ps(q, k, scores[r]);
                }
            }
            // Each row's softmax update; the rows' rescale factors `e^(old max - new max)`
            // are gathered in one vector so they cost one vector exponential, not R scalar
            // ones (a scalar exp per row and tile was a fifth of this function's time).
            let mut shifts = [0.0f32; 16];
            let mut tile_sums = [0.0f32; R];
            for r in 0..R {
                let state = &mut rows[r];
                let s = _mm512_mul_ps(scores[r], _mm512_set1_ps(scale));
                let tile_max = _mm512_mask_reduce_max_ps(lanes[r], s);
                let new_max = state.max.max(tile_max);
                // -inf on a row's first tile, whose rescale factor is then 0.
                shifts[r] = state.max - new_max;
                state.max = new_max;
                let p = _mm512_maskz_mov_ps(
                    lanes[r],
                    exp512(_mm512_sub_ps(s, _mm512_set1_ps(new_max))),
                );
                tile_sums[r] = _mm512_reduce_add_ps(p);
                _mm512_storeu_ps(weights[r].as_mut_ptr(), p);
            }
            let mut rescale = [0.0f32; 16];
            _mm512_storeu_ps(
                rescale.as_mut_ptr(),
                exp512(_mm512_loadu_ps(shifts.as_ptr())),
            );
            let mut correction = [_mm512_setzero_ps(); R];
            for r in 0..R {
                rows[r].sum = rows[r].sum * rescale[r] + tile_sums[r];
                correction[r] = _mm512_set1_ps(rescale[r]);
            }
            let values = tile.values.as_ptr();
            let max_visible = visible.iter().copied().max().unwrap_or(0);
            for c in (0..hd).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    acc[r] =
                        _mm512_mul_ps(_mm512_loadu_ps(rows[r].acc.as_ptr().add(c)), correction[r]);
                }
                // Invisible keys have weight 0, so rows can share the loop to `max_visible`.
                for i in 0..max_visible {
                    let v = _mm512_loadu_ps(values.add(i * hd + c));
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(weights[r][i]), v, acc[r]);
                    }
                }
                for r in 0..R {
                    _mm512_storeu_ps(rows[r].acc.as_mut_ptr().add(c), acc[r]);
                }
            }
        }
    }

    /// [`exp512`] on an array, for tests.
    ///
    /// # Safety
    /// AVX-512F present.
    #[cfg(test)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_lanes(x: [f32; 16]) -> [f32; 16] {
        let mut out = [0.0f32; 16];
        // SAFETY: both arrays hold 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// `e^x` per lane for `x <= 0` (0 below -87, -inf included), as
    /// [`super::exp_nonpositive`], with `vscalefps` applying `2^n`.
    #[target_feature(enable = "avx512f")]
    fn exp512(x: __m512) -> __m512 {
        let in_range = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-87.0));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for coefficient in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficient));
        }
        _mm512_maskz_mov_ps(in_range, _mm512_scalef_ps(p, n))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{RowState, Tile, KEY_TILE};
    use std::arch::x86_64::*;

    /// Rows folded together: each key and value vector loaded is used by this many rows.
    pub const MAX_ROWS: usize = 4;

    /// [`super::fold_tile`] for up to [`MAX_ROWS`] rows at once: as `avx512::fold_tile`, with
    /// a row's 16 scores in two 8-lane vectors and masks as vectors. Before it, AVX2 CPUs ran
    /// the portable fold one row at a time, whose variable-length loops did not vectorize:
    /// attention was about 8% of a one-stream step on two cores (`docs/BENCHMARKS.md`).
    ///
    /// # Safety
    /// AVX2 and FMA present; `head_dim` a multiple of 8; `1 <= rows.len() <= MAX_ROWS`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fold_tile(rows: &mut [RowState<'_>], tile: &Tile<'_>, scale: f32) {
        // SAFETY: forwarded.
        unsafe {
            match rows.len() {
                1 => fold_rows::<1>(rows, tile, scale),
                2 => fold_rows::<2>(rows, tile, scale),
                3 => fold_rows::<3>(rows, tile, scale),
                _ => fold_rows::<MAX_ROWS>(rows, tile, scale),
            }
        }
    }

    /// Lanes `0..n` of a 16-key tile as two 8-lane masks (all bits set where inside).
    #[target_feature(enable = "avx2,fma")]
    fn lanes_below(n: usize) -> [__m256i; 2] {
        let n = _mm256_set1_epi32(n.min(KEY_TILE) as i32);
        let first = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let second = _mm256_add_epi32(first, _mm256_set1_epi32(8));
        [_mm256_cmpgt_epi32(n, first), _mm256_cmpgt_epi32(n, second)]
    }

    /// # Safety
    /// As [`fold_tile`], with `rows.len() == R`.
    // Indices walk several parallel arrays (rows, halves, weights, value rows) at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fold_rows<const R: usize>(rows: &mut [RowState<'_>], tile: &Tile<'_>, scale: f32) {
        let hd = rows[0].query.len();
        let tile_lanes = lanes_below(tile.len);
        let mut visible = [0usize; R];
        let mut weights = [[0.0f32; KEY_TILE]; R];
        // SAFETY: every pointer below stays inside a row's `query` (hd floats), `tile.keys_t`
        // (`hd * block_size` floats, loads masked to the tile's `len` columns from
        // `in_block`), `tile.values` (`len * hd` floats) or a row's `acc` (hd floats).
        unsafe {
            let keys = tile.keys_t.as_ptr().add(tile.in_block);
            let mut scores = [[_mm256_setzero_ps(); 2]; R];
            for d in 0..hd {
                let at = keys.add(d * tile.block_size);
                let k = [
                    _mm256_maskload_ps(at, tile_lanes[0]),
                    _mm256_maskload_ps(at.add(8), tile_lanes[1]),
                ];
                for r in 0..R {
                    let q = _mm256_set1_ps(*rows[r].query.get_unchecked(d));
                    for h in 0..2 {
                        scores[r][h] = _mm256_fmadd_ps(q, k[h], scores[r][h]);
                    }
                }
            }
            // Each row's softmax update; the rows' rescale factors in one vector exponential.
            let mut shifts = [0.0f32; 8];
            let mut tile_sums = [0.0f32; R];
            for r in 0..R {
                let state = &mut rows[r];
                visible[r] = tile.visible_to(state.position);
                let lanes = lanes_below(visible[r]);
                // Keys a row does not see score -inf, so they weigh e^-inf = 0.
                let s = [0, 1].map(|h| {
                    _mm256_blendv_ps(
                        _mm256_set1_ps(f32::NEG_INFINITY),
                        _mm256_mul_ps(scores[r][h], _mm256_set1_ps(scale)),
                        _mm256_castsi256_ps(lanes[h]),
                    )
                });
                let new_max = state.max.max(hmax(_mm256_max_ps(s[0], s[1])));
                // -inf on a row's first tile, whose rescale factor is then 0.
                shifts[r] = state.max - new_max;
                state.max = new_max;
                let mut sum = _mm256_setzero_ps();
                for h in 0..2 {
                    let p = exp256(_mm256_sub_ps(s[h], _mm256_set1_ps(new_max)));
                    sum = _mm256_add_ps(sum, p);
                    _mm256_storeu_ps(weights[r].as_mut_ptr().add(8 * h), p);
                }
                tile_sums[r] = hsum(sum);
            }
            let mut rescale = [0.0f32; 8];
            _mm256_storeu_ps(
                rescale.as_mut_ptr(),
                exp256(_mm256_loadu_ps(shifts.as_ptr())),
            );
            let mut correction = [_mm256_setzero_ps(); R];
            for r in 0..R {
                rows[r].sum = rows[r].sum * rescale[r] + tile_sums[r];
                correction[r] = _mm256_set1_ps(rescale[r]);
            }
            let values = tile.values.as_ptr();
            let max_visible = visible.iter().copied().max().unwrap_or(0);
            for c in (0..hd).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    acc[r] =
                        _mm256_mul_ps(_mm256_loadu_ps(rows[r].acc.as_ptr().add(c)), correction[r]);
                }
                // Invisible keys have weight 0, so rows can share the loop to `max_visible`.
                for i in 0..max_visible {
                    let v = _mm256_loadu_ps(values.add(i * hd + c));
                    for r in 0..R {
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(weights[r][i]), v, acc[r]);
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(rows[r].acc.as_mut_ptr().add(c), acc[r]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// [`exp256`] on an array, for tests.
    ///
    /// # Safety
    /// AVX2 and FMA present.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_lanes(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: both arrays hold 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp256(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    /// `e^x` per lane for `x <= 0` (0 below -87, -inf included), as
    /// [`super::exp_nonpositive`]: `2^n` is built in the exponent bits, which stay normal
    /// because `x` is clamped to -87 first.
    #[target_feature(enable = "avx2,fma")]
    fn exp256(x: __m256) -> __m256 {
        let in_range = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.0));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for coefficient in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coefficient));
        }
        let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased));
        _mm256_and_ps(_mm256_mul_ps(p, two_n), in_range)
    }
}

/// Writes key rows into a pool laid out `[num_blocks, head_dim, block_size]`: slot `s` of
/// the cache is column `s % block_size` of block `s / block_size`.
///
/// # Panics
/// If a run writes past the pool or reads past `src`.
pub fn write_keys_transposed(
    pool: &mut [f32],
    layout: KeyLayout,
    runs: &[crate::model::backend::RowRun],
    src: &[f32],
    src_width: usize,
    src_col: usize,
) {
    let KeyLayout {
        block_size,
        head_dim,
    } = layout;
    for run in runs {
        for i in 0..run.len {
            let slot = run.dst_slot + i;
            let block_start = slot / block_size * block_size * head_dim;
            let block = &mut pool[block_start..][..block_size * head_dim];
            let column = slot % block_size;
            let row = &src[(run.src_row + i) * src_width + src_col..][..head_dim];
            for (d, &k) in row.iter().enumerate() {
                block[d * block_size + column] = k;
            }
        }
    }
}

/// The shape of a block-transposed key pool.
#[derive(Clone, Copy, Debug)]
pub struct KeyLayout {
    /// Tokens per block.
    pub block_size: usize,
    /// Width of a head.
    pub head_dim: usize,
}

/// ln 2 split in two so `n * LN2_HI` is exact for the `n` an exponent can have.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` for `x <= 0` (0 for -inf), to about 2 ulp, in plain arithmetic that vectorizes
/// (libm's `expf` is a call per lane).
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Below this e^x is under f32's normal range; clamping keeps 2^n representable.
    let clamped = x.max(-87.0);
    let n = (clamped * LOG2_E).round_ties_even();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Taylor to degree 6 on |r| <= ln2 / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * two_n
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
