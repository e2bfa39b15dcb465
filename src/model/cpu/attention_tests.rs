use super::*;
use crate::model::cpu::test_values;

/// Softmax attention of each new token over its sequence's first `position + 1` tokens,
/// computed densely in f64.
fn reference(case: &PagedAttention<'_>) -> Vec<f32> {
    let HeadLayout {
        num_heads,
        num_kv_heads,
        head_dim: hd,
    } = case.heads;
    let per_kv = num_heads / num_kv_heads;
    let mut out = Vec::new();
    let mut row = 0;
    for seq in case.sequences {
        for t in 0..seq.num_new_tokens {
            let position = seq.num_cached_tokens + t;
            for head in 0..num_heads {
                let kv = head / per_kv;
                let q = &case.queries[row * case.query_stride + head * hd..][..hd];
                let slot = |k: usize| {
                    seq.block_table[k / case.block_size] as usize * case.block_size
                        + k % case.block_size
                };
                let scores: Vec<f64> = (0..=position)
                    .map(|k| {
                        let key = &case.keys[kv][slot(k) * hd..][..hd];
                        q.iter()
                            .zip(key)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    let v: f64 = (0..=position)
                        .map(|k| weights[k] * case.values[kv][slot(k) * hd + d] as f64)
                        .sum();
                    out.push((v / total) as f32);
                }
            }
            row += 1;
        }
    }
    out
}

/// A batch mixing a prefill chunk after a cached prefix, a fresh prompt and two decodes, with
/// block tables that are neither contiguous nor ordered.
fn check(heads: HeadLayout, block_size: usize) {
    let sequences = vec![
        SequenceSlice {
            num_cached_tokens: 21,
            num_new_tokens: 19,
            block_table: vec![9, 2, 7, 4, 11, 0, 13, 5, 3, 1],
        },
        SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: 37,
            block_table: vec![6, 8, 10, 12, 14, 15, 16, 17, 18, 19],
        },
        SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: 1,
            block_table: vec![20],
        },
        SequenceSlice {
            num_cached_tokens: 30,
            num_new_tokens: 1,
            block_table: vec![21, 22, 23, 24, 25, 26, 27, 28],
        },
    ];
    let num_slots = 32 * block_size;
    let hd = heads.head_dim;
    let num_tokens: usize = sequences.iter().map(|s| s.num_new_tokens).sum();
    let query_stride = (heads.num_heads + heads.num_kv_heads) * hd;
    // Large values make the softmax peaked, which is where running maxima matter.
    let queries: Vec<f32> = test_values(num_tokens * query_stride, 1)
        .iter()
        .map(|v| v * 4.0)
        .collect();
    let keys: Vec<Vec<f32>> = (0..heads.num_kv_heads)
        .map(|h| test_values(num_slots * hd, 10 + h as u64))
        .collect();
    let vals: Vec<Vec<f32>> = (0..heads.num_kv_heads)
        .map(|h| test_values(num_slots * hd, 20 + h as u64))
        .collect();
    // The kernel reads keys block-transposed; the reference reads the rows.
    let layout = KeyLayout {
        block_size,
        head_dim: hd,
    };
    let every_slot = [crate::model::backend::RowRun {
        dst_slot: 0,
        src_row: 0,
        len: num_slots,
    }];
    let keys_t: Vec<Vec<f32>> = keys
        .iter()
        .map(|rows| {
            let mut pool = vec![0.0; rows.len()];
            write_keys_transposed(&mut pool, layout, &every_slot, rows, hd, 0);
            pool
        })
        .collect();
    let key_refs: Vec<&[f32]> = keys.iter().map(Vec::as_slice).collect();
    let key_t_refs: Vec<&[f32]> = keys_t.iter().map(Vec::as_slice).collect();
    let value_refs: Vec<&[f32]> = vals.iter().map(Vec::as_slice).collect();
    let case = PagedAttention {
        queries: &queries,
        query_stride,
        keys: &key_refs,
        values: &value_refs,
        heads,
        block_size,
        sequences: &sequences,
    };
    let want = reference(&case);
    let case = PagedAttention {
        keys: &key_t_refs,
        ..case
    };
    let mut checked = Vec::new();
    for fold in Fold::ALL.into_iter().filter(|f| f.runs(hd)) {
        let got = case.run_with(fold);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 2e-5,
                "{heads:?} block {block_size} {fold:?}: output {i} is {g}, expected {w}"
            );
        }
        checked.push(fold);
    }
    // Every build this CPU runs is checked, the one `run` picks included.
    assert!(checked.contains(&Fold::best_for(hd)), "{checked:?}");
}

#[test]
fn grouped_query_heads_over_paged_blocks_match_dense_attention() {
    let heads = HeadLayout {
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
    };
    check(heads, 16);
}

#[test]
fn blocks_smaller_and_larger_than_a_key_tile() {
    let heads = HeadLayout {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    check(heads, 4);
    check(heads, 32);
    check(heads, 5);
}

#[test]
fn one_query_head_per_kv_head() {
    let heads = HeadLayout {
        num_heads: 2,
        num_kv_heads: 2,
        head_dim: 12,
    };
    check(heads, 16);
    // A head width the vector path takes, with tiles cut by small blocks.
    let heads = HeadLayout {
        num_heads: 2,
        num_kv_heads: 2,
        head_dim: 32,
    };
    check(heads, 5);
}

#[test]
fn exp_is_accurate_over_the_range_softmax_uses() {
    let mut x = -100.0f32;
    while x <= 0.0 {
        let want = (x as f64).exp();
        let got = exp_nonpositive(x) as f64;
        // Below e^-87 the result may flush to 0, an error no softmax weight can notice.
        let tolerance = want * 4e-7 + f64::from(f32::MIN_POSITIVE) * 16.0;
        assert!(
            (got - want).abs() <= tolerance,
            "exp({x}) = {got}, expected {want}"
        );
        x += 0.0137;
    }
    assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_nonpositive(0.0), 1.0);
}

#[test]
fn keys_are_written_as_columns_of_their_block() {
    // Two blocks of 2 slots, head width 3; rows 0 and 1 of `src` go to slots 3 and 0.
    let layout = KeyLayout {
        block_size: 2,
        head_dim: 3,
    };
    let src = [1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0, 9.0];
    let runs = [
        crate::model::backend::RowRun {
            dst_slot: 3,
            src_row: 0,
            len: 1,
        },
        crate::model::backend::RowRun {
            dst_slot: 0,
            src_row: 1,
            len: 1,
        },
    ];
    let mut pool = vec![0.0; 12];
    write_keys_transposed(&mut pool, layout, &runs, &src, 4, 0);
    #[rustfmt::skip]
    let want = [
        4.0, 0.0, 5.0, 0.0, 6.0, 0.0, // block 0: slot 0 holds row 1
        0.0, 1.0, 0.0, 2.0, 0.0, 3.0, // block 1: slot 3 (column 1) holds row 0
    ];
    assert_eq!(pool, want);
}

/// Inputs over the range a softmax uses, the clamp's edge and -inf, for the vector exps.
#[cfg(target_arch = "x86_64")]
fn exp_inputs() -> Vec<f32> {
    (0..7300)
        .map(|i| -100.0 + i as f32 * 0.0137)
        .chain([f32::NEG_INFINITY, -87.5, 0.0])
        .collect()
}

/// `exp(x)` within 4e-7 relative, and exactly 0 below -87, as the scalar exp.
#[cfg(target_arch = "x86_64")]
fn check_exp(x: f32, got: f32) {
    let want = (x as f64).exp();
    let tolerance = want * 4e-7 + f64::from(f32::MIN_POSITIVE) * 16.0;
    assert!(
        (got as f64 - want).abs() <= tolerance,
        "exp({x}) = {got}, expected {want}"
    );
    if x < -87.0 {
        assert_eq!(got, 0.0, "exp({x})");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn vector_exp_is_accurate_and_zero_below_the_range() {
    if !has_avx512() {
        return;
    }
    for chunk in exp_inputs().chunks(16) {
        let mut lanes = [0.0f32; 16];
        lanes[..chunk.len()].copy_from_slice(chunk);
        // SAFETY: AVX-512F checked above.
        let got = unsafe { avx512::exp_lanes(lanes) };
        chunk
            .iter()
            .zip(&got)
            .for_each(|(&x, &got)| check_exp(x, got));
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_exp_is_accurate_and_zero_below_the_range() {
    if !has_avx2() {
        return;
    }
    for chunk in exp_inputs().chunks(8) {
        let mut lanes = [0.0f32; 8];
        lanes[..chunk.len()].copy_from_slice(chunk);
        // SAFETY: AVX2 and FMA checked above.
        let got = unsafe { avx2::exp_lanes(lanes) };
        chunk
            .iter()
            .zip(&got)
            .for_each(|(&x, &got)| check_exp(x, got));
    }
}
