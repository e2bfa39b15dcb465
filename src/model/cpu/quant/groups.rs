//! Every block format read as 32-element groups of small integers with a scale and an offset
//! per 16-element half: `w_j = scales[j / 16] * u_j + offsets[j / 16]`. The 32-element types
//! are one group per block with equal halves; the K-quants' 256-element super-blocks are
//! eight, with 6-bit (Q4_K, Q5_K) or 8-bit (Q6_K, per half) sub-block scales. This is the
//! portable decoding that the dequantizer, the portable kernel and the tests share; the vector
//! builds decode the same layouts in registers.
//!
//! Layouts as ggml writes them (`ggml-common.h`), little-endian f16 scales.

use half::f16;

use super::{BlockFormat, BLOCK};

/// One 32-element group of a block.
pub struct Group {
    /// The small integers `scales` multiply (unsigned, except Q8_0's signed bytes).
    pub u: [i32; BLOCK],
    /// Per half (elements 0-15, 16-31).
    pub scales: [f32; 2],
    /// What every element of a half adds beside `scale * u`.
    pub offsets: [f32; 2],
}

fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// One F16 or BF16 value.
pub fn half_float(format: BlockFormat, bytes: [u8; 2]) -> f32 {
    match format {
        BlockFormat::BF16 => half::bf16::from_le_bytes(bytes).to_f32(),
        _ => f16::from_le_bytes(bytes).to_f32(),
    }
}

/// Group `g` of `block` (one block of an integer `format`; F16 and BF16 have no integers).
pub fn group(format: BlockFormat, block: &[u8], g: usize) -> Group {
    let mut u = [0i32; BLOCK];
    let both = |s: f32, o: f32| ([s, s], [o, o]);
    let (scales, offsets) = match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let start = if format == BlockFormat::Q4_0 { 2 } else { 4 };
            let qs = &block[start..start + 16];
            for j in 0..16 {
                u[j] = (qs[j] & 0x0F) as i32;
                u[j + 16] = (qs[j] >> 4) as i32;
            }
            let d = half_at(block, 0);
            let offset = match format {
                BlockFormat::Q4_0 => -8.0 * d,
                _ => half_at(block, 2),
            };
            both(d, offset)
        }
        BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
            // As Q4_0/Q4_1, with the fifth bit of element j at bit j of the u32 `qh`.
            let qh_at = if format == BlockFormat::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes(block[qh_at..qh_at + 4].try_into().expect("4 bytes"));
            let qs = &block[qh_at + 4..qh_at + 20];
            for j in 0..16 {
                u[j] = ((qs[j] & 0x0F) as u32 | ((qh >> j) & 1) << 4) as i32;
                u[j + 16] = ((qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
            }
            let d = half_at(block, 0);
            let offset = match format {
                BlockFormat::Q5_0 => -16.0 * d,
                _ => half_at(block, 2),
            };
            both(d, offset)
        }
        BlockFormat::Q8_0 => {
            for (u, &b) in u.iter_mut().zip(&block[2..34]) {
                *u = b as i8 as i32;
            }
            both(half_at(block, 0), 0.0)
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            // d, dmin, 12 bytes of 6-bit scales and mins, [Q5_K: 32 bytes of fifth bits],
            // then 128 bytes of nibbles: each 32 bytes hold two groups, low nibbles first.
            let qs_start = if format == BlockFormat::Q4_K { 16 } else { 48 };
            let qs = &block[qs_start + 32 * (g / 2)..][..32];
            let shift = 4 * (g % 2);
            for (l, u) in u.iter_mut().enumerate() {
                *u = ((qs[l] >> shift) & 0x0F) as i32;
                if format == BlockFormat::Q5_K {
                    *u |= (((block[16 + l] >> g) & 1) as i32) << 4;
                }
            }
            let (sc, m) = scale_min_k4(g, &block[4..16]);
            both(half_at(block, 0) * sc, -half_at(block, 2) * m)
        }
        BlockFormat::Q6_K => {
            // ql[128], qh[64], scales: [i8; 16], d. Each 128 elements take 64 bytes of ql
            // (low nibbles, then high), 32 of qh (two bits per group) and 8 scales (one per
            // 16 elements).
            let (n, k) = (g / 4, g % 4);
            let ql = &block[64 * n + 32 * (k % 2)..][..32];
            let qh = &block[128 + 32 * n..][..32];
            let low_shift = 4 * (k / 2);
            for (l, u) in u.iter_mut().enumerate() {
                let low = (ql[l] >> low_shift) & 0x0F;
                let high = (qh[l] >> (2 * k)) & 3;
                *u = (low | (high << 4)) as i32;
            }
            let d = half_at(block, 208);
            let scale = |h: usize| d * (block[192 + 8 * n + 2 * k + h] as i8) as f32;
            let scales = [scale(0), scale(1)];
            (scales, scales.map(|s| -32.0 * s))
        }
        BlockFormat::F16 | BlockFormat::BF16 => {
            unreachable!("half floats are read by half_float, not as integers")
        }
    };
    Group { u, scales, offsets }
}

/// Sub-block `j`'s 6-bit scale and min from a K-quant's 12 packed bytes.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
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

/// Writes group `g` of `block` as f32 into `dst` (32 values).
pub fn dequantize_group(format: BlockFormat, block: &[u8], g: usize, dst: &mut [f32]) {
    if matches!(format, BlockFormat::F16 | BlockFormat::BF16) {
        for (y, b) in dst[..BLOCK].iter_mut().zip(block.chunks_exact(2)) {
            *y = half_float(format, [b[0], b[1]]);
        }
        return;
    }
    let Group { u, scales, offsets } = group(format, block, g);
    for (j, (y, q)) in dst[..BLOCK].iter_mut().zip(u).enumerate() {
        *y = q as f32 * scales[j / 16] + offsets[j / 16];
    }
}
