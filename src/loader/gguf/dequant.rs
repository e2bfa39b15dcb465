//! Dequantization of ggml tensor data to f32.
//!
//! Bit layouts follow ggml's `dequantize_row_*` reference code. Quantized types are arrays of
//! fixed-size blocks; a block covers 32 consecutive elements (the `Q*_0`/`Q*_1` types) or 256 (the
//! K-quant "super-blocks"), always along the contiguous dimension. f16 scales are little-endian
//! IEEE halves.
//!
//! | type | elems | bytes | block layout                                                   |
//! |------|-------|-------|----------------------------------------------------------------|
//! | Q4_0 | 32    | 18    | d: f16, qs: [u8; 16]                  x = d * (q - 8)          |
//! | Q4_1 | 32    | 20    | d, m: f16, qs: [u8; 16]               x = d * q + m            |
//! | Q5_0 | 32    | 22    | d: f16, qh: u32, qs: [u8; 16]         x = d * (q - 16)         |
//! | Q5_1 | 32    | 24    | d, m: f16, qh: u32, qs: [u8; 16]      x = d * q + m            |
//! | Q8_0 | 32    | 34    | d: f16, qs: [i8; 32]                  x = d * q                |
//! | Q4_K | 256   | 144   | d, dmin: f16, scales: [u8; 12], qs: [u8; 128]                  |
//! | Q5_K | 256   | 176   | d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]    |
//! | Q6_K | 256   | 210   | ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16          |
//!
//! In the 32-element types, byte `j` of `qs` holds element `j` in its low nibble and element
//! `j + 16` in its high nibble; the fifth bits of Q5 come from `qh` bit `j` (resp. `j + 16`).

use half::{bf16, f16};

use super::GgmlType;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type is listed in files but this reader cannot decode it.
    #[error("unsupported tensor type {0}")]
    UnsupportedType(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{n_elements} elements of {ggml_type} are not a whole number of {block_size}-element blocks")]
    NotBlockMultiple {
        /// The type.
        ggml_type: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Elements per block.
        block_size: usize,
    },
    /// The input holds fewer bytes than the element count needs.
    #[error("{n_elements} elements of {ggml_type} need {needed} bytes but only {got} were given")]
    InputTooShort {
        /// The type.
        ggml_type: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Bytes needed (saturated at `usize::MAX`).
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The output buffer is shorter than the element count.
    #[error("output buffer holds {got} floats but {needed} are needed")]
    OutputTooShort {
        /// Floats needed.
        needed: usize,
        /// Floats available.
        got: usize,
    },
}

/// Elements per block of a K-quant super-block.
const QK_K: usize = 256;

/// Decodes the first `n_elements` values of `bytes`, stored as `ggml_type`, into
/// `out[..n_elements]`.
///
/// Extra input bytes and extra output slots are left alone, so callers may pass larger buffers;
/// shorter ones, unsupported types and element counts that are not whole blocks are errors.
pub fn dequantize(
    ggml_type: GgmlType,
    bytes: &[u8],
    n_elements: usize,
    out: &mut [f32],
) -> Result<(), DequantError> {
    let (block_size, block_bytes) = match ggml_type {
        GgmlType::Other(_) => None,
        supported => supported.block_layout(),
    }
    .ok_or(DequantError::UnsupportedType(ggml_type))?;
    if !n_elements.is_multiple_of(block_size) {
        return Err(DequantError::NotBlockMultiple {
            ggml_type,
            n_elements,
            block_size,
        });
    }
    let needed = (n_elements / block_size).checked_mul(block_bytes);
    let src = needed
        .and_then(|needed| bytes.get(..needed))
        .ok_or(DequantError::InputTooShort {
            ggml_type,
            n_elements,
            needed: needed.unwrap_or(usize::MAX),
            got: bytes.len(),
        })?;
    let got = out.len();
    let dst = out
        .get_mut(..n_elements)
        .ok_or(DequantError::OutputTooShort {
            needed: n_elements,
            got,
        })?;

    match ggml_type {
        GgmlType::F32 => f32_rows(src, dst),
        GgmlType::F16 => f16_rows(src, dst),
        GgmlType::BF16 => bf16_rows(src, dst),
        GgmlType::Q4_0 => q4_0(src, dst),
        GgmlType::Q4_1 => q4_1(src, dst),
        GgmlType::Q5_0 => q5_0(src, dst),
        GgmlType::Q5_1 => q5_1(src, dst),
        GgmlType::Q8_0 => q8_0(src, dst),
        GgmlType::Q4_K => q4_k(src, dst),
        GgmlType::Q5_K => q5_k(src, dst),
        GgmlType::Q6_K => q6_k(src, dst),
        GgmlType::Other(_) => return Err(DequantError::UnsupportedType(ggml_type)),
    }
    Ok(())
}

/// Reads a little-endian f16 as f32.
#[inline(always)]
fn half(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

// Each decoder below receives exactly `n_blocks * block_bytes` input bytes and
// `n_blocks * block_size` outputs (checked by `dequantize`), so the fixed-size chunk views line up
// one to one and leave no remainder.

fn f32_rows(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<4>();
    for (b, y) in blocks.iter().zip(dst) {
        *y = f32::from_le_bytes(*b);
    }
}

fn f16_rows(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<2>();
    for (b, y) in blocks.iter().zip(dst) {
        *y = half(b[0], b[1]);
    }
}

fn bf16_rows(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<2>();
    for (b, y) in blocks.iter().zip(dst) {
        *y = bf16::from_bits(u16::from_le_bytes(*b)).to_f32();
    }
}

fn q4_0(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<18>();
    let (outs, _) = dst.as_chunks_mut::<32>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[2 + j];
            lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

fn q4_1(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<20>();
    let (outs, _) = dst.as_chunks_mut::<32>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let m = half(b[2], b[3]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[4 + j];
            lo[j] = (q & 0x0F) as f32 * d + m;
            hi[j] = (q >> 4) as f32 * d + m;
        }
    }
}

fn q5_0(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<22>();
    let (outs, _) = dst.as_chunks_mut::<32>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[6 + j] as u32;
            let x0 = (q & 0x0F) | (((qh >> j) & 1) << 4);
            let x1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            lo[j] = (x0 as i32 - 16) as f32 * d;
            hi[j] = (x1 as i32 - 16) as f32 * d;
        }
    }
}

fn q5_1(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<24>();
    let (outs, _) = dst.as_chunks_mut::<32>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let m = half(b[2], b[3]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[8 + j] as u32;
            let x0 = (q & 0x0F) | (((qh >> j) & 1) << 4);
            let x1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            lo[j] = x0 as f32 * d + m;
            hi[j] = x1 as f32 * d + m;
        }
    }
}

fn q8_0(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<34>();
    let (outs, _) = dst.as_chunks_mut::<32>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        for (j, y) in y.iter_mut().enumerate() {
            *y = b[2 + j] as i8 as f32 * d;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K: sub-blocks 0..4
/// keep their 6 bits in the low bits of bytes `j` (scale) and `j + 4` (min); sub-blocks 4..8 keep
/// their low 4 bits in the nibbles of byte `j + 4` and their top 2 bits in the spare top bits of
/// bytes `j - 4` (scale) and `j` (min).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

fn k_scales(b: &[u8]) -> [u8; 12] {
    let mut scales = [0u8; 12];
    scales.copy_from_slice(&b[4..16]);
    scales
}

fn q4_k(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<144>();
    let (outs, _) = dst.as_chunks_mut::<QK_K>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let dmin = half(b[2], b[3]);
        let scales = k_scales(b);
        let qs = &b[16..144];
        // Each 64-output group uses 32 quant bytes: low nibbles for the first 32 outputs (one
        // sub-block), high nibbles for the next 32 (the next sub-block).
        let (groups, _) = y.as_chunks_mut::<64>();
        for (g, (y, q)) in groups.iter_mut().zip(qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * g, &scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, &scales);
            let (d1, m1) = (d * sc1, dmin * m1);
            let (d2, m2) = (d * sc2, dmin * m2);
            let (lo, hi) = y.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

fn q5_k(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<176>();
    let (outs, _) = dst.as_chunks_mut::<QK_K>();
    for (b, y) in blocks.iter().zip(outs) {
        let d = half(b[0], b[1]);
        let dmin = half(b[2], b[3]);
        let scales = k_scales(b);
        let qh = &b[16..48];
        let qs = &b[48..176];
        // As Q4_K; the fifth bit of output l of sub-block s is bit s of qh[l].
        let (groups, _) = y.as_chunks_mut::<64>();
        for (g, (y, ql)) in groups.iter_mut().zip(qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * g, &scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, &scales);
            let (d1, m1) = (d * sc1, dmin * m1);
            let (d2, m2) = (d * sc2, dmin * m2);
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let (lo, hi) = y.split_at_mut(32);
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                lo[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

fn q6_k(src: &[u8], dst: &mut [f32]) {
    let (blocks, _) = src.as_chunks::<210>();
    let (outs, _) = dst.as_chunks_mut::<QK_K>();
    for (b, y) in blocks.iter().zip(outs) {
        let (ql, rest) = b.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (sc, d) = rest.split_at(16);
        let d = half(d[0], d[1]);
        // Each 128-output half uses 64 ql bytes, 32 qh bytes and 8 scales; output l + 32k takes
        // its low 4 bits from ql (byte l or l + 32, low or high nibble) and bits 2k..2k+2 of
        // qh[l] as its top 2 bits, with one scale per 16 outputs.
        let (halves, _) = y.as_chunks_mut::<128>();
        for (h, y) in halves.iter_mut().enumerate() {
            let ql = &ql[64 * h..64 * h + 64];
            let qh = &qh[32 * h..32 * h + 32];
            let sc = &sc[8 * h..8 * h + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
