use half::f16;

use super::*;
use crate::model::cpu::naive_matmul;

/// Every format.
fn all_formats() -> impl Iterator<Item = BlockFormat> {
    [BlockFormat::F16, BlockFormat::BF16]
        .into_iter()
        .chain(INTEGER_FORMATS)
}

/// Random blocks with finite scales in a realistic range (half floats: values in [-1, 1)).
fn random_blocks(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    if format.is_float() {
        let values = crate::model::cpu::test_values(rows * cols, seed);
        return values
            .iter()
            .flat_map(|&v| match format {
                BlockFormat::BF16 => half::bf16::from_f32(v).to_le_bytes(),
                _ => f16::from_f32(v).to_le_bytes(),
            })
            .collect();
    }
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let bytes = format.block_bytes();
    let mut out = Vec::with_capacity(rows * cols / format.block_elements() * bytes);
    for _ in 0..rows * cols / format.block_elements() {
        let mut block = vec![0u8; bytes];
        block.iter_mut().for_each(|b| *b = next() as u8);
        let d = f16::from_f32((next() % 1000) as f32 / 1e5 + 1e-4).to_le_bytes();
        let m = f16::from_f32(-((next() % 1000) as f32) / 1e4).to_le_bytes();
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => {
                block[..2].copy_from_slice(&d)
            }
            // Q4_1's and Q5_1's min, the K-quants' dmin.
            BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4_K | BlockFormat::Q5_K => {
                block[..2].copy_from_slice(&d);
                block[2..4].copy_from_slice(&m);
            }
            BlockFormat::Q6_K => block[208..].copy_from_slice(&d),
            BlockFormat::F16 | BlockFormat::BF16 => unreachable!("returned above"),
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
    let (rows, cols, n) = (37, 768, 7);
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
        .collect();
    for format in INTEGER_FORMATS {
        let m = QuantMatrix::new(format, random_blocks(format, rows, cols, 7), rows, cols).unwrap();
        let want = naive_matmul(&x, &m.dequantize(), rows, cols);
        close(&m.matmul(&x), &want, &format!("{format:?} dispatched"));
        let expanded = m.matmul_expanded(&x, None);
        close(&expanded, &want, &format!("{format:?} expanded by rows"));
        if let Some(fill) = tile_filler(format) {
            // The same values in the same order: equal to the bit.
            assert_eq!(
                m.matmul_expanded(&x, Some(fill)),
                expanded,
                "{format:?} filled"
            );
        }
        close(
            &m.matmul(&x[..cols]),
            &want[..rows],
            &format!("{format:?} one row"),
        );
        let planes = Planes::new(&x, cols);
        for (name, dot) in builds() {
            // Every weight row in one call, as `[weight rows, rows of x]`.
            let mut got = vec![0.0; rows * n];
            dot(format, &m.blocks, &planes, &mut got);
            for (r, got) in got.chunks_exact(n).enumerate() {
                let want: Vec<f32> = (0..n).map(|i| want[i * rows + r]).collect();
                close(got, &want, &format!("{format:?} {name} row {r}"));
            }
        }
    }
}

/// Every build of the dot products this CPU runs, by name.
fn builds() -> Vec<(&'static str, DotFn)> {
    let mut builds: Vec<(&str, DotFn)> = vec![("portable", dot_rows_portable)];
    #[cfg(target_arch = "x86_64")]
    {
        use avx2::IntegerDot;
        let detected = IntegerDot::detect();
        if detected.is_some() {
            builds.push(("avx2", |f, row, x, out| {
                avx2::dot_rows_with(IntegerDot::Avx2, f, row, x, out)
            }));
        }
        if let Some(IntegerDot::Vnni) = detected {
            builds.push(("avx512-vnni", |f, row, x, out| {
                avx2::dot_rows_with(IntegerDot::Vnni, f, row, x, out)
            }));
        }
    }
    builds
}

#[test]
fn half_floats_kept_as_they_are_match_their_expansion_in_every_build() {
    let (rows, cols) = (21, 96);
    let x = crate::model::cpu::test_values(7 * cols, 3);
    for format in [BlockFormat::F16, BlockFormat::BF16] {
        let m = QuantMatrix::new(format, random_blocks(format, rows, cols, 9), rows, cols).unwrap();
        let want = naive_matmul(&x, &m.dequantize(), rows, cols);
        for n in [1, 2, 7] {
            let got = m.matmul(&x[..n * cols]);
            close(&got, &want[..n * rows], &format!("{format:?} {n} rows"));
        }
        let mut builds: Vec<(&str, FloatDotFn)> = vec![("portable", float_dot_rows_portable)];
        #[cfg(target_arch = "x86_64")]
        if avx2::IntegerDot::detect().is_some() {
            builds.push(("avx2", avx2::float_dot_rows));
        }
        let row_bytes = m.row_bytes();
        for (name, dot) in builds {
            for r in 0..rows {
                let mut got = vec![0.0; 7];
                dot(
                    format,
                    &m.blocks[r * row_bytes..][..row_bytes],
                    &x,
                    &mut got,
                );
                let want: Vec<f32> = (0..7).map(|i| want[i * rows + r]).collect();
                close(&got, &want, &format!("{format:?} {name} row {r}"));
            }
        }
    }
}

#[test]
fn the_extremes_of_every_format_stay_exact_in_every_build() {
    // Largest quants against an x whose planes are at their limits: the i16 pairs of the AVX2
    // build and the i32 lanes of the VNNI one at their worst.
    let cols = 2 * BLOCK;
    let x: Vec<f32> = (0..cols)
        .map(|j| if j % 2 == 0 { 1.0 } else { -0.999_996 })
        .collect();
    let planes = Planes::new(&x, cols);
    for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        for fill in [0x00u8, 0x7F, 0x80, 0xFF] {
            let mut block = vec![fill; format.block_bytes()];
            block[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
            if format == BlockFormat::Q4_1 {
                block[2..4].copy_from_slice(&f16::from_f32(0.0).to_le_bytes());
            }
            let row = [block.clone(), block].concat();
            let m = QuantMatrix::new(format, row.clone(), 1, cols).unwrap();
            let w = m.dequantize();
            let want = naive_matmul(&x, &w, 1, cols)[0];
            // The sum cancels to almost nothing, so the planes' rounding is held against the
            // size of the terms, as f32's own would be; a wrapped integer would be off by ~2^32
            // steps.
            let magnitude: f32 = w.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
            for (name, dot) in builds() {
                let mut got = [0.0];
                dot(format, &row, &planes, &mut got);
                assert!(
                    (got[0] - want).abs() <= 1e-6 * magnitude,
                    "{format:?} {fill:#x} {name}: {} vs {want}",
                    got[0]
                );
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
    // A tile out of rows 40 floats apart (the panel's rows are `cols` apart).
    let stride = 40;
    let src: Vec<f32> = (0..BLOCK * stride).map(|i| i as f32).collect();
    let mut want = vec![0.0; BLOCK * BLOCK];
    transpose_tile_portable(&src, stride, &mut want);
    assert_eq!(want[BLOCK + 2], src[2 * stride + 1]);
    let mut got = vec![0.0; BLOCK * BLOCK];
    tile_transposer()(&src, stride, &mut got);
    assert_eq!(got, want, "the dispatched transpose");
    for format in all_formats() {
        let (rows, cols) = (3, 512);
        let m =
            QuantMatrix::new(format, random_blocks(format, rows, cols, 11), rows, cols).unwrap();
        let want = m.dequantize();
        let mut got = vec![0.0f32; rows * cols];
        for (row, dst) in m
            .blocks
            .chunks_exact(m.row_bytes())
            .zip(got.chunks_exact_mut(cols))
        {
            row_dequantizer(format)(format, row, dst);
        }
        close(
            &got,
            &want,
            &format!("{format:?} dispatched row dequantizer"),
        );
    }
}

#[test]
fn a_filled_tile_is_the_transposed_dequantized_rows() {
    let Some(fill) = tile_filler(BlockFormat::Q4_0) else {
        return; // no filler on this CPU: the expansion dequantizes, then transposes
    };
    assert!(
        tile_filler(BlockFormat::F16).is_none(),
        "half floats have no groups"
    );
    let cols = 512;
    for format in INTEGER_FORMATS {
        let m = QuantMatrix::new(format, random_blocks(format, 32, cols, 5), 32, cols).unwrap();
        let rows_f32 = m.dequantize();
        for count in [32, 5] {
            for t in [0, 7, cols / BLOCK - 1] {
                let mut got = vec![f32::NAN; BLOCK * BLOCK];
                let panel = PanelRows {
                    format,
                    blocks: &m.blocks,
                    row_bytes: m.row_bytes(),
                    count,
                };
                fill(&panel, t, &mut got);
                let mut want = vec![0.0; BLOCK * BLOCK];
                transpose_tile_portable(&rows_f32[t * BLOCK..], cols, &mut want);
                for (i, want) in want.chunks_exact_mut(BLOCK).enumerate() {
                    want[count..].fill(0.0);
                    let got = &got[i * BLOCK..][..BLOCK];
                    assert_eq!(got, want, "{format:?} {count} rows, tile {t}, element {i}");
                }
            }
        }
    }
}

#[test]
fn an_embedding_lookup_expands_just_the_rows_asked_for() {
    use crate::model::cpu::CpuEmbedding;
    use crate::model::HostTensor;
    let (rows, cols) = (9, 64);
    let format = BlockFormat::Q8_0;
    let m = QuantMatrix::new(format, random_blocks(format, rows, cols, 5), rows, cols).unwrap();
    let table = m.dequantize();
    let ids = [8, 0, 3, 3];
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * cols..][..cols].to_vec())
        .collect();
    assert_eq!(m.dequantize_rows(&ids), want);
    assert_eq!(CpuEmbedding::Blocks(m.clone()).lookup(&ids), want);
    let f32_table = CpuEmbedding::F32(HostTensor {
        shape: vec![rows, cols],
        data: table,
    });
    assert_eq!(f32_table.lookup(&ids), want);
    assert!(m.dequantize_rows(&[]).is_empty());
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
    let (rows, cols) = (5, 512);
    for (format, ggml) in [
        (BlockFormat::Q4_0, GgmlType::Q4_0),
        (BlockFormat::Q4_1, GgmlType::Q4_1),
        (BlockFormat::Q5_0, GgmlType::Q5_0),
        (BlockFormat::Q5_1, GgmlType::Q5_1),
        (BlockFormat::Q8_0, GgmlType::Q8_0),
        (BlockFormat::Q4_K, GgmlType::Q4_K),
        (BlockFormat::Q5_K, GgmlType::Q5_K),
        (BlockFormat::Q6_K, GgmlType::Q6_K),
        (BlockFormat::F16, GgmlType::F16),
        (BlockFormat::BF16, GgmlType::BF16),
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
        QuantMatrixError::PartialBlock {
            cols: 30,
            elements: 32
        }
    );
    assert!(matches!(
        QuantMatrix::new(BlockFormat::Q4_0, vec![0; 35], 2, 32),
        Err(QuantMatrixError::Length { expected: 36, .. })
    ));
    assert!(QuantMatrix::new(BlockFormat::Q4_0, vec![], usize::MAX, 64).is_err());
}

#[test]
fn half_float_rows_are_kept_only_in_whole_runs_of_32() {
    for format in [BlockFormat::F16, BlockFormat::BF16] {
        assert!(format.keeps_rows_of(576), "{format:?}: 18 runs");
        assert!(
            !format.keeps_rows_of(100),
            "{format:?}: a partial run is expanded"
        );
    }
    // Integer formats are whole blocks per row by construction: the check is `new`'s.
    assert!(BlockFormat::Q4_K.keeps_rows_of(576));
    assert!(QuantMatrix::new(BlockFormat::Q4_K, vec![0; 144], 1, 576).is_err());
}
