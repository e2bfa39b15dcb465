//! Attention over the paged cache for a batch of sequences at different stages.
//!
//! [`AttentionPlan`] holds what every layer shares; [`ModelBackend::attend`] runs it. Its
//! default, below, is built from burn's dense ops and serves any backend (cuda); flex
//! overrides it with a kernel that reads the cache in place (`super::cpu::PagedAttention`).
//!
//! The dense path: sequences are grouped so that padding stays small: all single-token decodes form one
//! group; each prefill chunk is a group of its own. A group's queries and its sequences'
//! cached keys are gathered into padded dense tensors and masked.
//!
//! Grouped-query attention folds the query heads that share a KV head into extra query rows
//! (`[seqs, kv_heads, group * q_len, head_dim]`), so keys and values are never repeated.

use std::cell::OnceCell;
use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::backend::{ModelBackend, RowRun};
use super::batch::SequenceSlice;
use super::kv_cache::LayerPools;

/// One padded group of sequences.
#[derive(Debug, Clone)]
struct AttentionGroup<B: Backend> {
    num_seqs: usize,
    /// Padded query length.
    q_len: usize,
    /// Padded context length.
    kv_len: usize,
    /// `[num_seqs * q_len]`: packed row of each (sequence, query) slot; padding repeats a real row.
    q_rows: Tensor<B, 1, Int>,
    /// `[num_seqs * kv_len]`: cache slot of each (sequence, key) position; padding reads slot 0.
    kv_slots: Tensor<B, 1, Int>,
    /// `[num_seqs, 1, q_len * heads_per_kv, kv_len]`, `true` where attention is forbidden;
    /// rows ordered (token, query head of the KV head), shared by every KV head.
    mask: Tensor<B, 4, Bool>,
}

/// Everything about a batch's attention that is the same in every layer.
#[derive(Debug)]
pub struct AttentionPlan<B: Backend> {
    sequences: Vec<SequenceSlice>,
    /// Packed row of each sequence's first new token.
    first_rows: Vec<usize>,
    block_size: usize,
    heads: HeadLayout,
    device: B::Device,
    /// Where this pass's new keys and values go.
    pub write_runs: Vec<RowRun>,
    /// The dense path's gathered indices and masks, built by the first layer that needs them.
    dense: OnceCell<DensePlan<B>>,
}

/// The dense path's per-batch tensors.
#[derive(Debug)]
struct DensePlan<B: Backend> {
    groups: Vec<AttentionGroup<B>>,
    /// `[num_tokens]`: where each packed token's output sits in the concatenated group
    /// outputs; `None` when that is already the packed order.
    output_rows: Option<Tensor<B, 1, Int>>,
    /// Threads to split a group's sequences over.
    workers: usize,
}

/// `0..n` cut into at most `parts` contiguous, non-empty ranges of near-equal length.
fn split_evenly(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts)..((i + 1) * n / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Head layout the plan needs.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl HeadLayout {
    fn heads_per_kv(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

fn slot_of(seq: &SequenceSlice, token: usize, block_size: usize) -> usize {
    seq.block_table[token / block_size] as usize * block_size + token % block_size
}

fn int_tensor<B: Backend>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

impl<B: ModelBackend> AttentionPlan<B> {
    /// Plans a batch whose sequences have already been validated against the pool.
    pub fn new(
        sequences: &[SequenceSlice],
        block_size: usize,
        heads: HeadLayout,
        device: &B::Device,
    ) -> Self {
        let first_rows = first_rows(sequences);
        Self {
            write_runs: write_runs(sequences, &first_rows, block_size),
            first_rows,
            sequences: sequences.to_vec(),
            block_size,
            heads,
            device: device.clone(),
            dense: OnceCell::new(),
        }
    }

    /// The batch's sequences, in packed order.
    pub fn sequences(&self) -> &[SequenceSlice] {
        &self.sequences
    }

    /// Tokens per cache block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The model's heads.
    pub fn heads(&self) -> HeadLayout {
        self.heads
    }

    /// Attention of every packed query over its sequence's cached context, through
    /// [`ModelBackend::attend`].
    ///
    /// # Shapes
    /// - `queries`: `[num_tokens, >= num_heads * head_dim]`, query heads first (RoPE applied)
    /// - `pools`: the layer's per-KV-head pools, each `[num_slots, head_dim]`
    /// - returns `[num_tokens, num_heads * head_dim]`
    pub fn attend(&self, queries: &Tensor<B, 2>, pools: &LayerPools<B>) -> Tensor<B, 2> {
        B::attend(self, queries, pools)
    }

    /// The dense path: [`ModelBackend::attend`]'s default.
    ///
    /// The cache must already hold this pass's keys and values. Attention runs once per KV
    /// head and group; the query heads sharing that KV head are folded into the query rows,
    /// ordered (token, head), which is how a column slice of `queries` already lies in memory.
    pub fn attend_dense(&self, queries: &Tensor<B, 2>, pools: &LayerPools<B>) -> Tensor<B, 2> {
        let dense = self.dense.get_or_init(|| DensePlan::new(self));
        dense.attend(queries, pools, self.heads)
    }
}

fn first_rows(sequences: &[SequenceSlice]) -> Vec<usize> {
    let mut first_row = Vec::with_capacity(sequences.len());
    let mut row = 0;
    for seq in sequences {
        first_row.push(row);
        row += seq.num_new_tokens;
    }
    first_row
}

impl<B: ModelBackend> DensePlan<B> {
    fn new(plan: &AttentionPlan<B>) -> Self {
        let AttentionPlan {
            sequences,
            first_rows: first_row,
            block_size,
            heads,
            device,
            ..
        } = plan;
        let (block_size, heads) = (*block_size, *heads);
        let num_tokens: usize = sequences.iter().map(|s| s.num_new_tokens).sum();
        let decodes: Vec<usize> = (0..sequences.len())
            .filter(|&i| sequences[i].num_new_tokens == 1)
            .collect();
        let mut group_members: Vec<Vec<usize>> = Vec::new();
        if !decodes.is_empty() {
            group_members.push(decodes);
        }
        group_members.extend(
            (0..sequences.len())
                .filter(|&i| sequences[i].num_new_tokens > 1)
                .map(|i| vec![i]),
        );

        let mut output_rows = vec![0i64; num_tokens];
        let mut out_offset = 0;
        let mut groups = Vec::with_capacity(group_members.len());
        for members in &group_members {
            let group = build_group::<B>(sequences, members, first_row, block_size, heads, device);
            for (slot, &i) in members.iter().enumerate() {
                for t in 0..sequences[i].num_new_tokens {
                    output_rows[first_row[i] + t] = (out_offset + slot * group.q_len + t) as i64;
                }
            }
            out_offset += group.num_seqs * group.q_len;
            groups.push(group);
        }

        let identity =
            out_offset == num_tokens && output_rows.iter().enumerate().all(|(i, &r)| r == i as i64);
        Self {
            groups,
            output_rows: (!identity).then(|| int_tensor(output_rows, device)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn attend(
        &self,
        queries: &Tensor<B, 2>,
        pools: &LayerPools<B>,
        heads: HeadLayout,
    ) -> Tensor<B, 2> {
        let HeadLayout {
            num_kv_heads,
            head_dim,
            ..
        } = heads;
        let per_kv = heads.heads_per_kv();
        let group_width = per_kv * head_dim;
        let outputs: Vec<Tensor<B, 2>> = self
            .groups
            .iter()
            .map(|g| {
                let (s, lq, lk) = (g.num_seqs, g.q_len, g.kv_len);
                let q_rows = queries.clone().select(0, g.q_rows.clone());
                // One attention call per KV head, for sequences `seqs` and, within them,
                // query tokens `tokens`.
                let attend_part = |seqs: Range<usize>, tokens: Range<usize>| -> Tensor<B, 2> {
                    let (n, nq) = (seqs.len(), tokens.len());
                    let q_rows = if nq == lq {
                        q_rows.clone().narrow(0, seqs.start * lq, n * lq)
                    } else {
                        // Only ever a single sequence (see below): its rows are contiguous.
                        q_rows.clone().narrow(0, tokens.start, nq)
                    };
                    let slots = g.kv_slots.clone().narrow(0, seqs.start * lk, n * lk);
                    let mask = g.mask.clone().narrow(0, seqs.start, n).narrow(
                        2,
                        tokens.start * per_kv,
                        nq * per_kv,
                    );
                    let per_head: Vec<Tensor<B, 2>> = (0..num_kv_heads)
                        .map(|h| {
                            let q = q_rows
                                .clone()
                                .narrow(1, h * group_width, group_width)
                                .reshape([n, 1, nq * per_kv, head_dim]);
                            let gather = |pool: &Tensor<B, 2>| {
                                pool.clone()
                                    .select(0, slots.clone())
                                    .reshape([n, 1, lk, head_dim])
                            };
                            attention(
                                q,
                                gather(&pools.keys[h]),
                                gather(&pools.values[h]),
                                Some(mask.clone()),
                                None,
                                AttentionModuleOptions::default(),
                            )
                            .reshape([n * nq, group_width])
                        })
                        .collect();
                    Tensor::cat(per_head, 1)
                };
                // flex runs attention on one core. Sequences, and the query rows of one
                // sequence, are independent, so split them across cores.
                let parts: Vec<(Range<usize>, Range<usize>)> = if s > 1 {
                    split_evenly(s, self.workers)
                        .into_iter()
                        .map(|seqs| (seqs, 0..lq))
                        .collect()
                } else {
                    split_evenly(lq, self.workers)
                        .into_iter()
                        .map(|tokens| (0..1, tokens))
                        .collect()
                };
                if parts.len() == 1 {
                    attend_part(0..s, 0..lq)
                } else {
                    let outputs: Vec<Tensor<B, 2>> = std::thread::scope(|scope| {
                        let handles: Vec<_> = parts[1..]
                            .iter()
                            .map(|(seqs, tokens)| {
                                let (seqs, tokens) = (seqs.clone(), tokens.clone());
                                let attend_part = &attend_part;
                                scope.spawn(move || attend_part(seqs, tokens))
                            })
                            .collect();
                        let (seqs, tokens) = parts[0].clone();
                        let mut outputs = vec![attend_part(seqs, tokens)];
                        outputs.extend(
                            handles
                                .into_iter()
                                .map(|h| h.join().expect("attention worker panicked")),
                        );
                        outputs
                    });
                    Tensor::cat(outputs, 0)
                }
            })
            .collect();
        let stacked = if outputs.len() == 1 {
            outputs.into_iter().next().expect("one group")
        } else {
            Tensor::cat(outputs, 0)
        };
        match &self.output_rows {
            Some(rows) => stacked.select(0, rows.clone()),
            None => stacked,
        }
    }
}

fn write_runs(sequences: &[SequenceSlice], first_row: &[usize], block_size: usize) -> Vec<RowRun> {
    let mut runs: Vec<RowRun> = Vec::new();
    for (seq, &row) in sequences.iter().zip(first_row) {
        for t in 0..seq.num_new_tokens {
            let slot = slot_of(seq, seq.num_cached_tokens + t, block_size);
            match runs.last_mut() {
                Some(run) if run.dst_slot + run.len == slot && run.src_row + run.len == row + t => {
                    run.len += 1
                }
                _ => runs.push(RowRun {
                    dst_slot: slot,
                    src_row: row + t,
                    len: 1,
                }),
            }
        }
    }
    runs
}

fn build_group<B: Backend>(
    sequences: &[SequenceSlice],
    members: &[usize],
    first_row: &[usize],
    block_size: usize,
    heads: HeadLayout,
    device: &B::Device,
) -> AttentionGroup<B> {
    let s = members.len();
    let lq = members
        .iter()
        .map(|&i| sequences[i].num_new_tokens)
        .max()
        .unwrap_or(1);
    let lk = members
        .iter()
        .map(|&i| sequences[i].context_len())
        .max()
        .unwrap_or(1);
    let per_kv = heads.heads_per_kv();

    let mut q_rows = Vec::with_capacity(s * lq);
    let mut kv_slots = Vec::with_capacity(s * lk);
    let mut mask = Vec::with_capacity(s * lq * per_kv * lk);
    for &i in members {
        let seq = &sequences[i];
        for t in 0..lq {
            let real = t.min(seq.num_new_tokens - 1);
            q_rows.push((first_row[i] + real) as i64);
        }
        for k in 0..lk {
            let slot = if k < seq.context_len() {
                slot_of(seq, k, block_size)
            } else {
                0
            };
            kv_slots.push(slot as i64);
        }
        for t in 0..lq {
            let is_padding = t >= seq.num_new_tokens;
            let position = seq.num_cached_tokens + t;
            for _ in 0..per_kv {
                // A padded query row attends to key 0 only, so its softmax stays finite;
                // its output is discarded.
                mask.extend((0..lk).map(|k| if is_padding { k != 0 } else { k > position }));
            }
        }
    }
    let mask_shape = [s, 1, lq * per_kv, lk];
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, mask_shape), device);
    AttentionGroup {
        num_seqs: s,
        q_len: lq,
        kv_len: lk,
        q_rows: int_tensor(q_rows, device),
        kv_slots: int_tensor(kv_slots, device),
        mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// The dense path is what backends without their own kernel (cuda) run; flex runs
    /// `cpu::PagedAttention`. Both must give the same attention for a mixed batch.
    #[test]
    fn dense_path_agrees_with_the_flex_kernel() {
        let heads = HeadLayout {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
        };
        let block_size = 4;
        let sequences = vec![
            SequenceSlice {
                num_cached_tokens: 5,
                num_new_tokens: 6,
                block_table: vec![7, 1, 4],
            },
            SequenceSlice {
                num_cached_tokens: 9,
                num_new_tokens: 1,
                block_table: vec![0, 6, 3],
            },
            SequenceSlice {
                num_cached_tokens: 2,
                num_new_tokens: 1,
                block_table: vec![5],
            },
        ];
        let device = Default::default();
        let num_slots = 8 * block_size;
        let wave = |len: usize, phase: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.37 + phase).sin()).collect()
        };
        let pool = |phase: f32| {
            Tensor::<Flex, 2>::from_data(
                TensorData::new(wave(num_slots * 16, phase), [num_slots, 16]),
                &device,
            )
        };
        let dense_pools = LayerPools {
            keys: vec![pool(0.1), pool(0.2)],
            values: vec![pool(0.3), pool(0.4)],
        };
        // flex's kernel reads its own key layout: write the same rows through it.
        let every_slot = [RowRun {
            dst_slot: 0,
            src_row: 0,
            len: num_slots,
        }];
        let layout = crate::model::cpu::KeyLayout {
            block_size,
            head_dim: 16,
        };
        let flex_keys = |phase: f32| {
            let empty = Tensor::<Flex, 2>::zeros([num_slots, 16], &device);
            Flex::write_cache_keys(empty, &every_slot, &pool(phase), 0, layout)
        };
        let kernel_pools = LayerPools {
            keys: vec![flex_keys(0.1), flex_keys(0.2)],
            values: vec![pool(0.3), pool(0.4)],
        };
        let width = (heads.num_heads + heads.num_kv_heads) * heads.head_dim;
        let queries = Tensor::<Flex, 2>::from_data(
            TensorData::new(wave(8 * width, 0.5), [8, width]),
            &device,
        );
        let plan = AttentionPlan::<Flex>::new(&sequences, block_size, heads, &device);
        let dense = plan.attend_dense(&queries, &dense_pools).into_data();
        let kernel = plan.attend(&queries, &kernel_pools).into_data();
        dense.assert_approx_eq::<f32>(&kernel, burn::tensor::Tolerance::absolute(1e-5));
    }
}
