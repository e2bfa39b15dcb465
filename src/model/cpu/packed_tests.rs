use super::*;
use crate::model::cpu::{naive_matmul, test_values};

fn check(rows: usize, out_features: usize, k: usize) {
    let w = test_values(out_features * k, 1 + rows as u64);
    let x = test_values(rows * k, 7 + k as u64);
    let packed = PackedMatrix::pack(&w, out_features, k);
    let got = packed.matmul(&x);
    let want = naive_matmul(&x, &w, out_features, k);
    assert_eq!(got.len(), want.len());
    let tolerance = 1e-5 * (k as f32).sqrt() * 4.0;
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - e).abs() <= tolerance,
            "rows {rows} out {out_features} k {k}: element {i} is {g}, expected {e}"
        );
    }
}

#[test]
fn matches_a_naive_matmul_on_whole_panels_and_blocks() {
    check(1, 64, 16);
    check(MAX_ROWS_FOR_TESTS, 96, 256);
    check(24, 192, 576);
}

#[test]
fn handles_partial_panels_row_tails_and_k_tails() {
    // 45 columns: one full panel and a padded one; 13 and 7 rows: a full kernel block plus a
    // tail; k of 300: one full k block and a partial one, so accumulation is exercised.
    check(13, 45, 300);
    check(7, 5, 3);
    check(1, 1, 1);
    check(MAX_ROWS_FOR_TESTS + 1, 33, 257);
}

#[test]
fn splits_across_row_blocks_and_threads() {
    // More rows than one row block, enough work to go parallel.
    let k = 1536;
    check(row_block(k) + 5, 130, k);
}

#[test]
fn zero_rows_give_an_empty_result() {
    let packed = PackedMatrix::pack(&test_values(8, 3), 2, 4);
    assert!(packed.matmul(&[]).is_empty());
}

#[test]
fn size_counts_the_padded_panels() {
    let packed = PackedMatrix::pack(&test_values(33 * 4, 3), 33, 4);
    assert_eq!(packed.size_bytes(), 2 * PANEL_WIDTH * 4 * 4);
}

const MAX_ROWS_FOR_TESTS: usize = microkernel::MAX_ROWS;
