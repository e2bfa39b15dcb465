//! The x86 builds: AVX2 (with FMA and F16C) for every kernel here, and AVX-512 VNNI (on
//! 256-bit vectors) for the integer dot products with [`Planes`].

use std::arch::x86_64::*;

use super::planes::{PlaneRow, Planes, PLANES};
use super::{BlockFormat, PanelRows, BLOCK, INTEGER_FORMATS};

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// A block's `d` and what every element adds beside `d * q` (as the portable `offset`),
/// converted in hardware from the f16s at its start. The four bytes are loaded whole (a
/// zeroing `vmovd`): building the vector from one `u16` let the compiler merge it into a live
/// register, which chained every block to the one before.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_and_offset(format: BlockFormat, block: &[u8]) -> (f32, f32) {
    assert!(block.len() >= 4, "a block starts with two f16s");
    let halves = _mm_cvtph_ps(_mm_loadu_si32(block.as_ptr()));
    let d = _mm_cvtss_f32(halves);
    let offset = match format {
        BlockFormat::Q4_0 => -8.0 * d,
        BlockFormat::Q4_1 => _mm_cvtss_f32(_mm_movehdup_ps(halves)),
        BlockFormat::Q8_0 => 0.0,
        _ => unreachable!("only Q4_0, Q4_1 and Q8_0 come here (group_avx2)"),
    };
    (d, offset)
}

/// One row of half floats (F16 or BF16) as f32 into `out`. The integer formats need no row
/// dequantizer here: the expansion fills its panels from their groups (`fill_tile`).
pub(super) fn dequantize_half_float_row(format: BlockFormat, row: &[u8], out: &mut [f32]) {
    assert!(format.is_float(), "{format:?} is not half floats");
    assert_eq!(row.len(), 2 * out.len(), "a value per element");
    assert!(out.len().is_multiple_of(BLOCK), "whole runs of 32");
    for (block, out) in row.chunks_exact(2 * BLOCK).zip(out.chunks_exact_mut(BLOCK)) {
        for i in 0..4 {
            // SAFETY: chosen by `row_dequantizer` only when the CPU has AVX2, FMA and F16C;
            // the asserts make `block` 32 halves and `out` 32 floats.
            unsafe {
                let v = half_floats(format, block.as_ptr().add(16 * i));
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), v);
            }
        }
    }
}

/// Tile `t` of `panel` as [`super::ScratchPanel::fill`] wants it: `dst[i * BLOCK + j]` is
/// element `t * BLOCK + i` of the panel's row `j` (columns past its rows are zeros). The
/// rows' groups are transposed as bytes, before they are widened: a quarter of the data an
/// f32 transpose moves.
///
/// # Panics
/// If the panel's format is F16/BF16, it holds no rows or more than `BLOCK`, or its rows are
/// shorter than tile `t`'s group.
pub(super) fn fill_tile(panel: &PanelRows<'_>, t: usize, dst: &mut [f32]) {
    let PanelRows {
        format,
        blocks,
        row_bytes,
        count,
    } = *panel;
    assert!((1..=BLOCK).contains(&count) && blocks.len() >= count * row_bytes);
    assert!((t + 1) * BLOCK <= row_bytes / format.block_bytes() * format.block_elements());
    let dst = &mut dst[..BLOCK * BLOCK];
    macro_rules! run {
        ($($f:literal)*) => {
            match format_index(format) {
                // SAFETY: chosen by `tile_filler` only when the CPU has AVX2, FMA and F16C;
                // the asserts keep every row's group `t` inside `blocks` and `dst` a whole
                // tile.
                $($f => unsafe { fill_tile_groups::<$f>(blocks, row_bytes, count, t, dst) },)*
                _ => panic!("{format:?} has no integer groups"),
            }
        };
    }
    run!(0 1 2 3 4 5 6 7)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill_tile_groups<const F: u8>(
    rows: &[u8],
    row_bytes: usize,
    count: usize,
    t: usize,
    dst: &mut [f32],
) {
    // Row j's group as 32 small integers, with its scales and offsets per half.
    let mut ints = [_mm256_setzero_si256(); BLOCK];
    let mut scales = [[0.0f32; BLOCK]; 2];
    let mut offsets = [[0.0f32; BLOCK]; 2];
    for j in 0..count {
        let group = group_avx2::<F>(&rows[j * row_bytes..][..row_bytes], t);
        ints[j] = group.u;
        for h in 0..2 {
            scales[h][j] = group.scales[h];
            offsets[h][j] = group.offsets[h];
        }
    }
    let (top, bottom) = ints.split_at_mut(BLOCK / 2);
    transpose16_in_lanes(top.try_into().unwrap());
    transpose16_in_lanes(bottom.try_into().unwrap());
    for i in 0..BLOCK / 2 {
        // Element i (low lanes) and i + 16 (high lanes) of rows 0-15 and of rows 16-31.
        let first_half = _mm256_permute2x128_si256::<0x20>(top[i], bottom[i]);
        let second_half = _mm256_permute2x128_si256::<0x31>(top[i], bottom[i]);
        widen::<F>(
            first_half,
            &scales[0],
            &offsets[0],
            dst.as_mut_ptr().add(i * BLOCK),
        );
        let second = dst.as_mut_ptr().add((i + BLOCK / 2) * BLOCK);
        widen::<F>(second_half, &scales[1], &offsets[1], second);
    }
}

/// Transposes each 128-bit lane of sixteen registers as a 16x16 byte matrix: four rounds of
/// interleaving register `i` with register `i + 8` (a perfect shuffle; four undo the index's
/// four bits).
#[target_feature(enable = "avx2")]
fn transpose16_in_lanes(r: &mut [__m256i; 16]) {
    for _ in 0..4 {
        let old = *r;
        for i in 0..8 {
            r[2 * i] = _mm256_unpacklo_epi8(old[i], old[i + 8]);
            r[2 * i + 1] = _mm256_unpackhi_epi8(old[i], old[i + 8]);
        }
    }
}

/// Row j's byte of `ints` as `scales[j] * u + offsets[j]`, 32 floats into `dst`.
#[target_feature(enable = "avx2,fma")]
unsafe fn widen<const F: u8>(
    ints: __m256i,
    scales: &[f32; BLOCK],
    offsets: &[f32; BLOCK],
    dst: *mut f32,
) {
    let quarters = [ints, _mm256_srli_si256::<8>(ints)];
    for (q, bytes) in [
        _mm256_castsi256_si128(quarters[0]),
        _mm256_castsi256_si128(quarters[1]),
        _mm256_extracti128_si256::<1>(quarters[0]),
        _mm256_extracti128_si256::<1>(quarters[1]),
    ]
    .into_iter()
    .enumerate()
    {
        // Q8_0's bytes are signed (the AVX2 group keeps them so); the others unsigned.
        let ints = if F == Q8_0 {
            _mm256_cvtepi8_epi32(bytes)
        } else {
            _mm256_cvtepu8_epi32(bytes)
        };
        let scale = _mm256_loadu_ps(scales.as_ptr().add(8 * q));
        let offset = _mm256_loadu_ps(offsets.as_ptr().add(8 * q));
        let values = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), scale, offset);
        _mm256_storeu_ps(dst.add(8 * q), values);
    }
}

pub(super) fn transpose_tile(src: &[f32], stride: usize, dst: &mut [f32]) {
    assert!(stride >= BLOCK && src.len() > (BLOCK - 1) * stride + BLOCK - 1);
    let dst = &mut dst[..BLOCK * BLOCK];
    for jb in (0..BLOCK).step_by(8) {
        for ib in (0..BLOCK).step_by(8) {
            // SAFETY: chosen by `tile_transposer` only when the CPU has AVX2; the assert puts
            // the 8x8 square at (jb, ib) of `src` and at (ib, jb) of `dst` inside them.
            unsafe {
                transpose8(
                    src.as_ptr().add(jb * stride + ib),
                    stride,
                    dst.as_mut_ptr().add(ib * BLOCK + jb),
                )
            }
        }
    }
}

/// An 8x8 square of floats, rows `stride` apart in `src` and `BLOCK` apart in `dst`.
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(src: *const f32, stride: usize, dst: *mut f32) {
    let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * stride)));
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

/// Rows of `x` taken together: each block is unpacked once for all of them.
const ROWS: usize = 4;

/// [`BlockFormat`] as a const parameter (`F`, an index here), so each kernel is compiled per
/// format.
const FORMATS: [BlockFormat; 8] = INTEGER_FORMATS;
const Q8_0: u8 = 2;
const Q6_K: u8 = 7;
const _: () = assert!(matches!(FORMATS[Q8_0 as usize], BlockFormat::Q8_0));
const _: () = assert!(matches!(FORMATS[Q6_K as usize], BlockFormat::Q6_K));

/// `format`'s index in [`FORMATS`] (a const parameter `F`); past its end for F16 and BF16.
fn format_index(format: BlockFormat) -> u8 {
    FORMATS
        .iter()
        .position(|&f| f == format)
        .unwrap_or(FORMATS.len()) as u8
}

/// Which integer dot product the kernels use.
#[derive(Clone, Copy)]
pub(super) enum IntegerDot {
    /// `vpmaddubsw` + `vpmaddwd` (AVX2).
    Avx2,
    /// `vpdpbusd` (AVX-512 VNNI with VL, on 256-bit vectors).
    Vnni,
}

impl IntegerDot {
    /// The best this CPU runs, if any (F16C is needed for the scales either way).
    pub(super) fn detect() -> Option<Self> {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            return None;
        }
        if has!("avx512vnni") && has!("avx512vl") {
            return Some(IntegerDot::Vnni);
        }
        Some(IntegerDot::Avx2)
    }
}

/// Dots consecutive rows of blocks (`rows`) with every row of `x`, into `out`
/// (`[weight rows, x's rows]`): four rows of `x` per pass over a row's blocks while four are
/// left, then one. Checked and dispatched once per call, not per row.
pub(super) fn dot_rows_with(
    with: IntegerDot,
    format: BlockFormat,
    rows: &[u8],
    x: &Planes,
    out: &mut [f32],
) {
    let n = x.rows();
    let cols = x.blocks_per_row() * BLOCK;
    assert!(
        n > 0 && out.len().is_multiple_of(n),
        "one output per row of x, per weight row"
    );
    assert!(
        cols.is_multiple_of(format.block_elements()),
        "rows of whole blocks"
    );
    let row_bytes = cols / format.block_elements() * format.block_bytes();
    assert_eq!(
        rows.len(),
        out.len() / n * row_bytes,
        "rows as long as x's rows"
    );
    let f = format_index(format);
    assert!(
        (f as usize) < FORMATS.len(),
        "{format:?} has no integer groups"
    );
    // Sliced once per call: per weight row it was 2% of a one-stream step.
    let x_rows: Vec<PlaneRow<'_>> = (0..n).map(|r| x.row(r)).collect();
    // SAFETY: `IntegerDot::detect` chose `with` for this CPU; the asserts above make each row
    // one group per group of `x`'s rows, and every `first + take <= n`.
    unsafe {
        macro_rules! run {
            ($kernel:ident, $($f:literal)*) => {
                match f {
                    $($f => for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
                        let mut first = 0;
                        while first < n {
                            let take = if n - first >= ROWS { ROWS } else { 1 };
                            let (x, out) = (&x_rows[first..first + take], &mut out[first..first + take]);
                            if take == ROWS {
                                $kernel::<ROWS, $f>(row, x.try_into().unwrap(), out);
                            } else {
                                $kernel::<1, $f>(row, x.try_into().unwrap(), out);
                            }
                            first += take;
                        }
                    },)*
                    _ => unreachable!("FORMATS has eight formats"),
                }
            };
        }
        match with {
            IntegerDot::Avx2 => run!(planes_avx2, 0 1 2 3 4 5 6 7),
            IntegerDot::Vnni => run!(planes_vnni, 0 1 2 3 4 5 6 7),
        }
    }
}

/// A 4-bit block's 32 quants, one per byte, in element order (low nibbles are elements 0-15).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let qs = _mm_loadu_si128(qs as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Bit `j` of the little-endian `u32` at `bits` as byte `j`: 16 where set, 0 where not (the
/// fifth bits of Q5_0 and Q5_1).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(bits: *const u8) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(*(bits as *const [u8; 4])));
    // Byte j takes byte j / 8 of the word, then keeps only bit j % 8.
    let spread = _mm256_shuffle_epi8(
        word,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// 32 bytes at `at`, each shifted right by `shift` and masked to `mask` (bits never cross
/// bytes: the mask keeps only what came from the byte itself).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_bits(at: *const u8, shift: i32, mask: i8) -> __m256i {
    let v = _mm256_loadu_si256(at as *const __m256i);
    let shifted = _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift));
    _mm256_and_si256(shifted, _mm256_set1_epi8(mask))
}

/// The f16 at `at`, in hardware, loading just its two bytes (a block's last field).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_at(at: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_loadu_si16(at)))
}

/// One 32-element group, as the kernels take it: its small integers and, per 16-element half,
/// the scale and what every element adds (equal halves except in Q6_K).
struct Group {
    u: __m256i,
    scales: [f32; 2],
    offsets: [f32; 2],
}

/// Group `g` of `row` in format `F` (group `g % groups` of block `g / groups`), the layouts of
/// `groups.rs` decoded in registers. Q8_0 stays signed for the AVX2 dot, which moves the signs
/// onto `x`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and `row` holds group `g`'s whole block: its callers check
/// their rows' lengths once per call, not here once per group (two bounds checks per group
/// in the dots' innermost loop).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const F: u8>(row: &[u8], g: usize) -> Group {
    let format = FORMATS[F as usize];
    let groups = format.block_elements() / BLOCK;
    let start = g / groups * format.block_bytes();
    debug_assert!(start + format.block_bytes() <= row.len());
    let block = row.get_unchecked(start..start + format.block_bytes());
    let (sub, at) = (g % groups, block.as_ptr());
    let same = |scale: f32, offset: f32, u| Group {
        u,
        scales: [scale; 2],
        offsets: [offset; 2],
    };
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q8_0 => {
            let (d, offset) = scale_and_offset(format, block);
            let u = match format {
                BlockFormat::Q4_0 => nibbles(at.add(2)),
                BlockFormat::Q4_1 => nibbles(at.add(4)),
                _ => _mm256_loadu_si256(at.add(2) as *const __m256i),
            };
            same(d, offset, u)
        }
        BlockFormat::Q5_0 => {
            let d = half_at(at);
            let u = _mm256_or_si256(nibbles(at.add(6)), fifth_bits(at.add(2)));
            same(d, -16.0 * d, u)
        }
        BlockFormat::Q5_1 => {
            let u = _mm256_or_si256(nibbles(at.add(8)), fifth_bits(at.add(4)));
            same(half_at(at), half_at(at.add(2)), u)
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let qs = if format == BlockFormat::Q4_K { 16 } else { 48 };
            let mut u = bytes_bits(at.add(qs + 32 * (sub / 2)), 4 * (sub % 2) as i32, 0x0F);
            if format == BlockFormat::Q5_K {
                let high = bytes_bits(at.add(16), sub as i32, 0x01);
                u = _mm256_or_si256(u, _mm256_slli_epi16::<4>(high));
            }
            let (sc, m) = super::groups::scale_min_k4(sub, &block[4..16]);
            same(half_at(at) * sc, -half_at(at.add(2)) * m, u)
        }
        BlockFormat::Q6_K => {
            let (n, k) = (sub / 4, sub % 4);
            let low = bytes_bits(at.add(64 * n + 32 * (k % 2)), 4 * (k / 2) as i32, 0x0F);
            let high = bytes_bits(at.add(128 + 32 * n), 2 * k as i32, 0x03);
            let u = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high));
            let d = half_at(at.add(208));
            let scales = [0, 1].map(|h| d * block[192 + 8 * n + 2 * k + h] as i8 as f32);
            Group {
                u,
                scales,
                offsets: scales.map(|s| -32.0 * s),
            }
        }
        BlockFormat::F16 | BlockFormat::BF16 => {
            unreachable!("half floats take float_dot_rows, not the integer dots")
        }
    }
}

/// As [`group_avx2`], but Q8_0's quants are made unsigned (`+ 128`, one xor), which its
/// offset takes back out: `vpdpbusd` multiplies unsigned by signed bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_vnni<const F: u8>(row: &[u8], g: usize) -> Group {
    let group = group_avx2::<F>(row, g);
    if F == Q8_0 {
        let d = group.scales[0];
        return Group {
            u: _mm256_xor_si256(group.u, _mm256_set1_epi8(-128)),
            scales: [d; 2],
            offsets: [-128.0 * d; 2],
        };
    }
    group
}

/// Eight F16 or BF16 values at `at`, widened to f32 (bf16 is f32's top half).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_floats(format: BlockFormat, at: *const u8) -> __m256 {
    let bits = _mm_loadu_si128(at as *const __m128i);
    match format {
        BlockFormat::BF16 => {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        }
        _ => _mm256_cvtph_ps(bits),
    }
}

/// The dots of one row of half floats with every row of `x`, widening eight at a time.
pub(super) fn float_dot_rows(format: BlockFormat, row: &[u8], x: &[f32], out: &mut [f32]) {
    let cols = row.len() / 2;
    assert!(cols.is_multiple_of(BLOCK) && x.len() == cols * out.len());
    for (out, x) in out.iter_mut().zip(x.chunks_exact(cols)) {
        // SAFETY: chosen by `float_kernel` only when the CPU has AVX2, FMA and F16C; `row`
        // holds `cols` halves and `x` `cols` floats, `cols` a multiple of 32.
        *out = unsafe { float_dot_avx2(format, row, x) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_dot_avx2(format: BlockFormat, row: &[u8], x: &[f32]) -> f32 {
    let mut sums = [_mm256_setzero_ps(); 4];
    for (k, x) in x.chunks_exact(BLOCK).enumerate() {
        for (i, sum) in sums.iter_mut().enumerate() {
            let w = half_floats(format, row.as_ptr().add(2 * (k * BLOCK + 8 * i)));
            *sum = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(8 * i)), *sum);
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(sums[0], sums[1]),
        _mm256_add_ps(sums[2], sums[3]),
    ))
}

/// One of a block's planes, 32 signed bytes.
#[target_feature(enable = "avx2")]
unsafe fn plane(quants: *const i8, k: usize) -> __m256i {
    _mm256_loadu_si256(quants.add(k * BLOCK) as *const __m256i)
}

/// `u . (2^14 q1 + 2^7 q2 + q3)` in eight `i32` lanes of four products each. Every pair
/// `maddubs` sums fits `i16`: at most 2 * 63 * 127 for the unsigned formats (Q6_K's 6 bits),
/// 2 * 128 * 127 for Q8_0's magnitudes (its signs moved onto the planes).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const F: u8>(u: __m256i, quants: *const i8) -> __m256i {
    let (u, signs) = if F == Q8_0 {
        (_mm256_abs_epi8(u), Some(u))
    } else {
        (u, None)
    };
    let mut total = _mm256_setzero_si256();
    for (k, weight) in [1i16 << 14, 1 << 7, 1].into_iter().enumerate() {
        let mut q = plane(quants, k);
        if let Some(signs) = signs {
            q = _mm256_sign_epi8(q, signs);
        }
        let pairs = _mm256_maddubs_epi16(u, q);
        total = _mm256_add_epi32(total, _mm256_madd_epi16(pairs, _mm256_set1_epi16(weight)));
    }
    total
}

/// As [`dot_avx2`] with `vpdpbusd`, by Horner's rule over the planes. A lane stays below
/// 4 * 255 * (127 * 2^14 + 64 * 2^7 + 64) < 2^31 (255: Q8_0 made unsigned).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const F: u8>(u: __m256i, quants: *const i8) -> __m256i {
    let mut total = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, plane(quants, 0));
    total = _mm256_slli_epi32::<7>(total);
    total = _mm256_dpbusd_epi32(total, u, plane(quants, 1));
    total = _mm256_slli_epi32::<7>(total);
    _mm256_dpbusd_epi32(total, u, plane(quants, 2))
}

/// `R` rows of `x` against one row of blocks of format `F`: per 32-element
/// group `scale * step * (u . planes) + offset * sum`, summed in f32 (Q6_K: per half). Even
/// and odd groups go to separate sums, so that one group's additions need not wait for the
/// last one's.
macro_rules! planes_kernel {
    ($name:ident, $features:literal, $group:ident, $dot:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const F: u8>(
            row: &[u8],
            rows: &[PlaneRow<'_>; R],
            out: &mut [f32],
        ) {
            let mut even = [_mm256_setzero_ps(); R];
            let mut odd = [_mm256_setzero_ps(); R];
            let mut offsets = [[0.0f32; 2]; R];
            let groups = rows[0].steps.len();
            let mut add = |g: usize, sums: &mut [__m256; R], parity: usize| {
                let group = $group::<F>(row, g);
                for r in 0..R {
                    let quants = rows[r].quants.as_ptr().add(g * PLANES * BLOCK);
                    let step = *rows[r].steps.get_unchecked(g);
                    let products = _mm256_cvtepi32_ps($dot::<F>(group.u, quants));
                    let scale = if F == Q6_K {
                        // Lanes 0-3 hold elements 0-15.
                        _mm256_set_m128(
                            _mm_set1_ps(group.scales[1] * step),
                            _mm_set1_ps(group.scales[0] * step),
                        )
                    } else {
                        _mm256_set1_ps(group.scales[0] * step)
                    };
                    sums[r] = _mm256_fmadd_ps(products, scale, sums[r]);
                    let offset = &mut offsets[r][parity];
                    if F == Q6_K {
                        let [h0, h1] = *rows[r].half_sums.get_unchecked(g);
                        *offset += group.offsets[0] * h0 + group.offsets[1] * h1;
                    } else {
                        // Both halves add the same offset: one multiply-add on the sum.
                        *offset = group.offsets[0].mul_add(*rows[r].sums.get_unchecked(g), *offset);
                    }
                }
            };
            for g in (0..groups).step_by(2) {
                add(g, &mut even, 0);
                if g + 1 < groups {
                    add(g + 1, &mut odd, 1);
                }
            }
            for r in 0..R {
                let [a, b] = offsets[r];
                out[r] = hsum(_mm256_add_ps(even[r], odd[r])) + (a + b);
            }
        }
    };
}

planes_kernel!(planes_avx2, "avx2,fma,f16c", group_avx2, dot_avx2);
planes_kernel!(
    planes_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    group_vnni,
    dot_vnni
);
