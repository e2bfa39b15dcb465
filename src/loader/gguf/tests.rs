use std::path::{Path, PathBuf};

use super::writer::{GgufWriter, TensorSpec};
use super::*;

// ggml type ids used below.
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;
const Q5_K: u32 = 13;
const Q6_K: u32 = 14;
const IQ4_NL: u32 = 20;
const BF16: u32 = 30;

// f16 bit patterns.
const H_0_25: [u8; 2] = 0x3400u16.to_le_bytes();
const H_0_5: [u8; 2] = 0x3800u16.to_le_bytes();
const H_1: [u8; 2] = 0x3C00u16.to_le_bytes();
const H_2: [u8; 2] = 0x4000u16.to_le_bytes();
const H_MINUS_1: [u8; 2] = 0xBC00u16.to_le_bytes();

fn test_path() -> PathBuf {
    PathBuf::from("/test/model.gguf")
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(test_path(), bytes)
}

fn parse_ok(bytes: Vec<u8>) -> GgufFile {
    parse(bytes).unwrap_or_else(|e| panic!("expected a valid file: {e}"))
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    let err = parse(bytes).expect_err("expected a parse error");
    assert!(
        err.to_string().contains("/test/model.gguf"),
        "error does not name the file: {err}"
    );
    err
}

/// Dequantizes a one-tensor file holding `data` as `type_id` with `dims`.
fn dequant_one(type_id: u32, dims: &[u64], data: Vec<u8>) -> Vec<f32> {
    let file = parse_ok(GgufWriter::new(3).tensor("t", dims, type_id, data).build());
    let values = file.dequantize("t").expect("dequantize");
    assert_eq!(values.len() as u64, dims.iter().product::<u64>());
    values
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "element {i}: got {g}, want {w}"
        );
    }
}

/// A deterministic byte pattern that exercises every bit position.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) ^ (i >> 3) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metadata

fn every_meta_type() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60_000)),
        ("t.i16", MetaValue::I16(-30_000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.u64", MetaValue::U64(u64::MAX - 1)),
        ("t.i64", MetaValue::I64(i64::MIN + 1)),
        ("t.f32", MetaValue::F32(1.0e-5)),
        ("t.f64", MetaValue::F64(-2.5e300)),
        ("t.bool_true", MetaValue::Bool(true)),
        ("t.bool_false", MetaValue::Bool(false)),
        ("t.string", MetaValue::String("héllo → wörld".into())),
        ("t.empty_string", MetaValue::String(String::new())),
        (
            "t.str_array",
            MetaValue::Array(vec![
                MetaValue::String("<s>".into()),
                MetaValue::String("".into()),
                MetaValue::String("Ġthe".into()),
            ]),
        ),
        (
            "t.i32_array",
            MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-3)]),
        ),
        (
            "t.f32_array",
            MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(-1.5)]),
        ),
        ("t.empty_array", MetaValue::Array(vec![])),
        (
            "t.nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)]),
                MetaValue::Array(vec![MetaValue::U8(3)]),
            ]),
        ),
        (
            "t.nested_strings",
            MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::String("a".into())])]),
        ),
    ]
}

#[test]
fn metadata_of_every_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let mut w = GgufWriter::new(version);
        for (k, v) in every_meta_type() {
            w = w.kv(k, v);
        }
        let file = parse_ok(w.build());
        assert_eq!(file.version(), version);
        assert!(file.tensors().is_empty());
        let expected = every_meta_type();
        assert_eq!(file.metadata().len(), expected.len());
        for (k, v) in expected {
            assert_eq!(file.get(k), Some(&v), "key {k}");
        }
    }
}

#[test]
fn typed_getters_accept_compatible_types_and_name_the_problem_otherwise() {
    let file = parse_ok(
        GgufWriter::new(3)
            .kv("u8", MetaValue::U8(7))
            .kv("i32", MetaValue::I32(30))
            .kv("u64_small", MetaValue::U64(576))
            .kv("u64_big", MetaValue::U64(1 << 40))
            .kv("neg", MetaValue::I64(-1))
            .kv("f32", MetaValue::F32(1e-5))
            .kv("f64", MetaValue::F64(10000.0))
            .kv("s", MetaValue::String("llama".into()))
            .kv("b", MetaValue::Bool(true))
            .kv(
                "toks",
                MetaValue::Array(vec![
                    MetaValue::String("a".into()),
                    MetaValue::String("b".into()),
                ]),
            )
            .kv(
                "types",
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-6)]),
            )
            .kv(
                "small_ints",
                MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(255)]),
            )
            .kv(
                "big_ints",
                MetaValue::Array(vec![MetaValue::I64(1), MetaValue::I64(1 << 40)]),
            )
            .kv(
                "mixed_nested",
                MetaValue::Array(vec![MetaValue::Array(vec![])]),
            )
            .build(),
    );
    assert_eq!(file.get_u32("u8").unwrap(), 7);
    assert_eq!(file.get_u32("i32").unwrap(), 30);
    assert_eq!(file.get_u32("u64_small").unwrap(), 576);
    assert_eq!(file.get_u64("u64_big").unwrap(), 1 << 40);
    assert_eq!(file.get_u32_opt("absent").unwrap(), None);
    assert_eq!(file.get_u32_opt("u8").unwrap(), Some(7));
    assert_eq!(file.get_f32("f32").unwrap(), 1e-5);
    assert_eq!(file.get_f32("f64").unwrap(), 10000.0);
    assert_eq!(file.get_f32_opt("absent").unwrap(), None);
    assert_eq!(file.get_str("s").unwrap(), "llama");
    assert!(file.get_bool("b").unwrap());
    assert_eq!(file.get_str_array("toks").unwrap(), vec!["a", "b"]);
    assert_eq!(file.get_i32_array("types").unwrap(), vec![1, -6]);
    assert_eq!(file.get_i32_array("small_ints").unwrap(), vec![1, 255]);

    let err = file.get_u32("u64_big").unwrap_err();
    assert!(
        matches!(&err, GgufError::MetaValueOutOfRange { key, .. } if key == "u64_big"),
        "{err}"
    );
    assert!(matches!(
        file.get_u32("neg").unwrap_err(),
        GgufError::MetaValueOutOfRange { .. }
    ));
    assert!(matches!(
        file.get_i32_array("big_ints").unwrap_err(),
        GgufError::MetaValueOutOfRange { .. }
    ));
    let err = file.get_u32("s").unwrap_err();
    assert!(
        matches!(&err, GgufError::WrongMetaType { key, found, .. } if key == "s" && found == "string"),
        "{err}"
    );
    for err in [
        file.get_f32("u8").unwrap_err(),
        file.get_str("u8").unwrap_err(),
        file.get_bool("u8").unwrap_err(),
        file.get_str_array("types").unwrap_err(),
        file.get_str_array("s").unwrap_err(),
        file.get_i32_array("toks").unwrap_err(),
        file.get_i32_array("mixed_nested").unwrap_err(),
    ] {
        assert!(matches!(err, GgufError::WrongMetaType { .. }), "{err}");
    }
    let err = file.get_str("general.architecture").unwrap_err();
    assert!(
        matches!(&err, GgufError::MissingKey { key, .. } if key == "general.architecture"),
        "{err}"
    );
    assert!(err.to_string().contains("general.architecture"));
    assert!(err.to_string().contains("/test/model.gguf"));
    assert!(matches!(
        file.architecture().unwrap_err(),
        GgufError::MissingKey { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Dequantization, one block layout at a time, against values worked out from the format.

#[test]
fn f32_f16_bf16_decode_exactly() {
    let values = [1.5f32, -2.0, 0.0, 3.25, -0.125, 1e30];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    // dims [3, 2]: two rows of three, dims[0] fastest, so the file order is the output order.
    assert_eq!(dequant_one(F32, &[3, 2], data), values);

    let halves: [u16; 6] = [0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000];
    let data: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let got = dequant_one(F16, &[6], data);
    assert_eq!(got[..4], [1.0, -2.0, 0.5, 65504.0]);
    assert_eq!(got[4], 2.0f32.powi(-24)); // smallest subnormal
    assert!(got[5] == 0.0 && got[5].is_sign_negative());

    let bf: [u16; 3] = [0x3F80, 0xC040, 0x4049];
    let data: Vec<u8> = bf.iter().flat_map(|h| h.to_le_bytes()).collect();
    assert_eq!(dequant_one(BF16, &[3], data), [1.0, -3.0, 3.140625]);
}

#[test]
fn q4_0_block() {
    // d = 0.5; byte j holds element j (low nibble j) and element j + 16 (high nibble 15 - j).
    let mut block = H_0_5.to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    // A second block with d = 1 and every nibble 8 (i.e. zero) shows block order.
    let mut data = block;
    data.extend_from_slice(&H_1);
    data.extend([0x88u8; 16]);
    let got = dequant_one(Q4_0, &[64], data);
    let mut want: Vec<f32> = (0..16).map(|j| (j as f32 - 8.0) * 0.5).collect();
    want.extend((0..16).map(|j| (7.0 - j as f32) * 0.5));
    want.extend([0.0; 32]);
    assert_eq!(got, want);
    assert_eq!(got[0], -4.0);
    assert_eq!(got[15], 3.5);
    assert_eq!(got[16], 3.5);
    assert_eq!(got[31], -4.0);
}

#[test]
fn q4_1_block() {
    // d = 0.25, m = -1: x = q * 0.25 - 1.
    let mut data = H_0_25.to_vec();
    data.extend_from_slice(&H_MINUS_1);
    data.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let got = dequant_one(Q4_1, &[32], data);
    let mut want: Vec<f32> = (0..16).map(|j| j as f32 * 0.25 - 1.0).collect();
    want.extend((0..16).map(|j| (15 - j) as f32 * 0.25 - 1.0));
    assert_eq!(got, want);
    assert_eq!((got[0], got[15], got[16]), (-1.0, 2.75, 2.75));
}

#[test]
fn q5_0_block() {
    // d = 1; nibbles j (low) and j (high); qh = 0x5555_AAAA: bits 0..16 (elements 0..16) are set
    // for odd j, bits 16..32 (elements 16..32) for even j. x = (nibble | bit << 4) - 16.
    let mut data = H_1.to_vec();
    data.extend(0x5555_AAAAu32.to_le_bytes());
    data.extend((0..16u8).map(|j| j | (j << 4)));
    let got = dequant_one(Q5_0, &[32], data);
    let want: Vec<f32> = (0..32)
        .map(|i| {
            let j = i % 16;
            let high = if i < 16 { j % 2 == 1 } else { j % 2 == 0 };
            (j + if high { 16 } else { 0 }) as f32 - 16.0
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[..4], [-16.0, 1.0, -14.0, 3.0]);
    assert_eq!(got[16..18], [0.0, -15.0]);
}

#[test]
fn q5_1_block() {
    // d = 0.5, m = 1; qh = 0xFFFF_0000 gives the fifth bit to elements 16..32 only.
    let mut data = H_0_5.to_vec();
    data.extend_from_slice(&H_1);
    data.extend(0xFFFF_0000u32.to_le_bytes());
    data.extend((0..16u8).map(|j| (15 - j) | (j << 4)));
    let got = dequant_one(Q5_1, &[32], data);
    let mut want: Vec<f32> = (0..16).map(|j| (15 - j) as f32 * 0.5 + 1.0).collect();
    want.extend((0..16).map(|j| (j + 16) as f32 * 0.5 + 1.0));
    assert_eq!(got, want);
    assert_eq!((got[0], got[16], got[31]), (8.5, 9.0, 16.5));
}

#[test]
fn q8_0_block() {
    // d = 0.5; quants -16..16 as signed bytes.
    let mut data = H_0_5.to_vec();
    data.extend((0..32i8).map(|j| (j - 16) as u8));
    let got = dequant_one(Q8_0, &[32], data);
    let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.5).collect();
    assert_eq!(got, want);
    assert_eq!((got[0], got[31]), (-8.0, 7.5));
}

/// Eight 6-bit sub-block scales and mins for the K-quant tests, with top bits set in the upper
/// four so that the split packing is exercised.
const K_SC: [u8; 8] = [1, 2, 3, 63, 17, 33, 48, 5];
const K_M: [u8; 8] = [0, 1, 62, 4, 16, 32, 63, 7];

/// Packs scales and mins the way ggml's Q4_K/Q5_K quantizer does.
fn pack_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    out
}

#[test]
fn q4_k_superblock() {
    // d = 2, dmin = 0.5. Element i is in sub-block i / 32; in 64-element group g = i / 64 the
    // first 32 take the low nibbles of qs[32g..32g + 32], the next 32 the high nibbles.
    let mut qs = pattern(128, 5);
    qs[0] = 0x21;
    qs[64] = 0xF3;
    qs[96] = 0x0A;
    let mut data = H_2.to_vec();
    data.extend_from_slice(&H_0_5);
    data.extend(pack_k_scales(&K_SC, &K_M));
    data.extend_from_slice(&qs);
    let got = dequant_one(Q4_K, &[256], data);
    let want: Vec<f32> = (0..256)
        .map(|i| {
            let (sub, g, l) = (i / 32, i / 64, i % 32);
            let byte = qs[32 * g + l];
            let q = if i % 64 < 32 { byte & 0x0F } else { byte >> 4 };
            2.0 * K_SC[sub] as f32 * q as f32 - 0.5 * K_M[sub] as f32
        })
        .collect();
    assert_close(&got, &want);
    // Worked by hand: 2*1*1 - 0, 2*2*2 - 0.5*1, 2*17*3 - 0.5*16, 2*33*15 - 0.5*32,
    // 2*48*10 - 0.5*63, 2*5*0 - 0.5*7.
    assert_eq!(
        [got[0], got[32], got[128], got[160], got[192], got[224]],
        [2.0, 7.5, 94.0, 974.0, 928.5, -3.5]
    );
}

#[test]
fn q5_k_superblock() {
    // As Q4_K, plus: element l + 32s of sub-block s gets 16 added when bit s of qh[l] is set.
    let mut qs = pattern(128, 9);
    qs[0] = 0x21;
    let mut qh = pattern(32, 77);
    qh[0] = 0b0000_0011;
    let mut data = H_2.to_vec();
    data.extend_from_slice(&H_0_5);
    data.extend(pack_k_scales(&K_SC, &K_M));
    data.extend_from_slice(&qh);
    data.extend_from_slice(&qs);
    let got = dequant_one(Q5_K, &[256], data);
    let want: Vec<f32> = (0..256)
        .map(|i| {
            let (sub, g, l) = (i / 32, i / 64, i % 32);
            let byte = qs[32 * g + l];
            let low = if i % 64 < 32 { byte & 0x0F } else { byte >> 4 };
            let q = low + if (qh[l] >> sub) & 1 == 1 { 16 } else { 0 };
            2.0 * K_SC[sub] as f32 * q as f32 - 0.5 * K_M[sub] as f32
        })
        .collect();
    assert_close(&got, &want);
    // 2*1*(1+16) - 0 and 2*2*(2+16) - 0.5*1.
    assert_eq!([got[0], got[32]], [34.0, 71.5]);
}

#[test]
fn q6_k_superblock() {
    // d = 0.5, one signed scale per 16 elements. In each 128-element half h, element
    // 128h + 32k + l takes its low 4 bits from ql[64h + l + 32(k % 2)] (low nibble for k < 2,
    // high nibble otherwise) and its top 2 bits from bits 2k..2k+2 of qh[32h + l]; q is offset
    // by 32.
    let mut ql = pattern(128, 3);
    let mut qh = pattern(64, 41);
    ql[0] = 0x21;
    qh[0] = 0b0000_0011;
    let scales: [i8; 16] = [2, -1, 3, -4, -3, 5, 6, -7, 8, -9, 10, -11, 12, 1, -128, 127];
    let mut data = ql.clone();
    data.extend_from_slice(&qh);
    data.extend(scales.iter().map(|&s| s as u8));
    data.extend_from_slice(&H_0_5);
    let got = dequant_one(Q6_K, &[256], data);
    let want: Vec<f32> = (0..256)
        .map(|i| {
            let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let byte = ql[64 * h + l + 32 * (k % 2)];
            let low = if k < 2 { byte & 0x0F } else { byte >> 4 };
            let high = (qh[32 * h + l] >> (2 * k)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            0.5 * scales[i / 16] as f32 * q as f32
        })
        .collect();
    assert_close(&got, &want);
    // Element 0: low 1, high 3 -> 49 - 32 = 17, scale 2: 0.5*2*17. Element 64: low 2 (high
    // nibble of 0x21), high 0 -> -30, scale -3: 0.5*-3*-30.
    assert_eq!([got[0], got[64]], [17.0, 45.0]);
}

#[test]
fn multi_row_tensors_are_row_major_with_dims0_fastest() {
    // dims [32, 3]: three rows of one Q8_0 block each, row r filled with r + 1.
    let mut data = Vec::new();
    for r in 0..3i8 {
        data.extend_from_slice(&H_1);
        data.extend([(r + 1) as u8; 32]);
    }
    let file = parse_ok(GgufWriter::new(3).tensor("w", &[32, 3], Q8_0, data).build());
    let info = file.tensor_info("w").unwrap();
    assert_eq!(info.torch_shape(), vec![3, 32]);
    assert_eq!(info.n_elements(), 96);
    assert_eq!(info.byte_size(), Some(3 * 34));
    let got = file.dequantize("w").unwrap();
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, (i / 32 + 1) as f32);
    }
}

#[test]
fn dequantize_function_checks_its_arguments() {
    let block = [0u8; 18];
    let mut out = [0f32; 64];
    assert_eq!(
        dequantize(GgmlType::Other(20), &block, 32, &mut out),
        Err(DequantError::UnsupportedType(GgmlType::Other(20)))
    );
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &block, 16, &mut out),
        Err(DequantError::NotBlockMultiple { block_size: 32, .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &block, 64, &mut out),
        Err(DequantError::InputTooShort {
            needed: 36,
            got: 18,
            ..
        })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &block, 32, &mut out[..31]),
        Err(DequantError::OutputTooShort {
            needed: 32,
            got: 31
        })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4_K, &[], usize::MAX - 255, &mut out),
        Err(DequantError::InputTooShort { .. })
    ));
    // Longer buffers are fine; only the prefix is written.
    out.fill(7.0);
    dequantize(GgmlType::Q4_0, &[0u8; 40], 32, &mut out).unwrap();
    assert!(out[..32].iter().all(|v| *v == 0.0));
    assert!(out[32..].iter().all(|v| *v == 7.0));
    assert_eq!(dequantize(GgmlType::F32, &[], 0, &mut []), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Layout: versions, alignment, offsets.

fn two_tensor_writer(version: u32) -> GgufWriter {
    GgufWriter::new(version)
        .kv("general.architecture", MetaValue::String("llama".into()))
        // 3 floats = 12 bytes, so the next tensor needs padding.
        .tensor(
            "a",
            &[3],
            F32,
            [1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .tensor("b", &[2], F16, [H_1, H_MINUS_1].concat())
}

#[test]
fn v2_and_v3_parse_the_same() {
    for version in [2, 3] {
        let file = parse_ok(two_tensor_writer(version).build());
        assert_eq!(file.version(), version);
        assert_eq!(file.architecture().unwrap(), "llama");
        assert_eq!(file.alignment(), 32);
        assert_eq!(file.data_offset() % 32, 0);
        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(file.tensor_info("b").unwrap().offset, 32);
        assert_eq!(file.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(file.dequantize("b").unwrap(), [1.0, -1.0]);
        assert_eq!(file.tensor_data("b").unwrap(), [H_1, H_MINUS_1].concat());
    }
}

#[test]
fn general_alignment_is_honoured() {
    // Pad the metadata so that the tensor table ends just past a 64-byte boundary: then the
    // 32- and 64-aligned data starts differ and reading at the wrong one would show.
    let w = (0..64)
        .map(|pad| {
            two_tensor_writer(3)
                .alignment(64)
                .kv("pad", MetaValue::String("x".repeat(pad)))
        })
        .find(|w| (1..=32).contains(&(w.head().len() % 64)))
        .unwrap();
    let head_len = w.head().len() as u64;
    let file = parse_ok(w.build());
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset(), head_len.next_multiple_of(64));
    assert_ne!(file.data_offset(), head_len.next_multiple_of(32));
    assert_eq!(file.tensor_info("b").unwrap().offset, 64);
    assert_eq!(file.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(file.dequantize("b").unwrap(), [1.0, -1.0]);

    // An offset that is 32- but not 64-aligned is rejected under alignment 64.
    let mut w = two_tensor_writer(3).alignment(64);
    w.tensors[1].offset = Some(32);
    let err = parse_err(w.build());
    assert!(
        matches!(&err, GgufError::MisalignedTensor { tensor, offset: 32, alignment: 64, .. } if tensor == "b"),
        "{err}"
    );

    for bad in [0, 3, 48] {
        let mut w = two_tensor_writer(3);
        w = w.kv("general.alignment", MetaValue::U32(bad));
        let err = parse_err(w.build());
        assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
    }
    let err = parse_err(
        two_tensor_writer(3)
            .kv("general.alignment", MetaValue::String("32".into()))
            .build(),
    );
    assert!(matches!(err, GgufError::WrongMetaType { .. }), "{err}");
}

#[test]
fn gguf_file_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
    assert_send_sync::<GgufError>();
}

#[test]
fn released_tensor_pages_read_back_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, two_tensor_writer(3).build()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let before = file.tensor_data("b").unwrap().to_vec();
    file.release_tensor_pages("b");
    file.release_tensor_pages("no such tensor");
    assert_eq!(file.tensor_data("b").unwrap(), before);
    assert_eq!(file.dequantize("b").unwrap(), [1.0, -1.0]);
}

#[test]
fn open_maps_a_real_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, two_tensor_writer(3).build()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.path(), path);
    assert_eq!(file.dequantize("b").unwrap(), [1.0, -1.0]);
    assert!(format!("{file:?}").contains("tensors: 2"));

    let missing = dir.path().join("nope.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope.gguf"));

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let err = GgufFile::open(&empty).unwrap_err();
    assert!(
        matches!(err, GgufError::TruncatedHeader { len: 0, .. }),
        "{err}"
    );

    // A directory is neither missing nor a GGUF file.
    let err = GgufFile::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::Io { .. } | GgufError::TruncatedHeader { .. }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: each problem has its own error variant.

/// A valid file whose last metadata value is a string, followed by one Q4_0 tensor.
fn sample_writer() -> GgufWriter {
    let mut q4 = H_0_5.to_vec();
    q4.extend([0x19u8; 16]);
    GgufWriter::new(3)
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("llama.block_count", MetaValue::U32(2))
        .kv(
            "general.name",
            MetaValue::String("a fairly long model name".into()),
        )
        .tensor("blk.0.w", &[32], Q4_0, q4)
}

/// Byte offset of the first occurrence of `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

#[test]
fn wrong_magic() {
    let mut bytes = sample_writer().build();
    bytes[..4].copy_from_slice(b"GGML");
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::BadMagic { found, .. } if found == b"GGML"),
        "{err}"
    );
    assert!(err.to_string().contains("47 47 4D 4C"), "{err}");
    assert!(matches!(
        parse_err(b"PK".to_vec()),
        GgufError::BadMagic { .. }
    ));
}

#[test]
fn truncated_header() {
    let bytes = sample_writer().build();
    for len in [0, 2, 4, 8, 12, 23] {
        let err = parse_err(bytes[..len].to_vec());
        assert!(
            matches!(err, GgufError::TruncatedHeader { len: l, .. } if l == len as u64),
            "{len}: {err}"
        );
    }
}

#[test]
fn bad_version() {
    for version in [0, 1, 4, 0x0300_0000] {
        let mut bytes = sample_writer().build();
        bytes[4..8].copy_from_slice(&u32::to_le_bytes(version));
        let err = parse_err(bytes);
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{err}"
        );
    }
    let mut bytes = sample_writer().build();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(parse_err(bytes).to_string().contains("big-endian"));
}

#[test]
fn truncated_metadata() {
    let bytes = sample_writer().build();
    let cut = find(&bytes, b"fairly");
    let err = parse_err(bytes[..cut].to_vec());
    assert!(
        matches!(&err, GgufError::TruncatedMetadata { what, .. } if what.contains("general.name")),
        "{err}"
    );
    // Cut inside a key, and inside a fixed-size value.
    let key_cut = find(&bytes, b"llama.block_count") + 3;
    assert!(matches!(
        parse_err(bytes[..key_cut].to_vec()),
        GgufError::TruncatedMetadata { .. }
    ));
    let value_cut = find(&bytes, b"llama.block_count") + 17 + 4 + 2;
    assert!(matches!(
        parse_err(bytes[..value_cut].to_vec()),
        GgufError::TruncatedMetadata { .. }
    ));
}

#[test]
fn truncated_tensor_table() {
    let bytes = sample_writer().build();
    let cut = find(&bytes, b"blk.0.w") + 7 + 4 + 3; // inside the dims
    let err = parse_err(bytes[..cut].to_vec());
    assert!(
        matches!(&err, GgufError::TruncatedTensorTable { what, .. } if what.contains("blk.0.w")),
        "{err}"
    );
}

#[test]
fn truncated_tensor_data() {
    let bytes = sample_writer().build();
    let err = parse_err(bytes[..bytes.len() - 1].to_vec());
    assert!(
        matches!(&err, GgufError::TensorDataOutOfBounds { tensor, .. } if tensor == "blk.0.w"),
        "{err}"
    );
    // An offset far past the end, and one that overflows u64 arithmetic.
    for offset in [1 << 20, u64::MAX - 31] {
        let mut bytes = sample_writer().build();
        let at = find(&bytes, b"blk.0.w") + 7 + 4 + 8 + 4;
        bytes[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let err = parse_err(bytes);
        assert!(
            matches!(err, GgufError::TensorDataOutOfBounds { .. }),
            "{err}"
        );
    }
}

#[test]
fn unsupported_tensor_type_opens_but_does_not_dequantize() {
    let file = parse_ok(
        sample_writer()
            .tensor("iq", &[32], IQ4_NL, vec![0; 18])
            .tensor("future", &[5], 999, vec![])
            .build(),
    );
    let info = file.tensor_info("iq").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Other(20));
    let err = file.dequantize("iq").unwrap_err();
    assert!(
        matches!(&err, GgufError::UnsupportedTensorType { tensor, ggml_type: GgmlType::Other(20), .. } if tensor == "iq"),
        "{err}"
    );
    assert!(err.to_string().contains("type 20 (IQ4_NL)"), "{err}");
    assert_eq!(file.tensor_data("iq").unwrap().len(), 18);
    let err = file.dequantize("future").unwrap_err();
    assert!(err.to_string().contains("type 999 (unknown)"), "{err}");
    assert!(matches!(
        file.tensor_data("future").unwrap_err(),
        GgufError::UnsupportedTensorType { .. }
    ));
    assert_eq!(
        file.dequantize("blk.0.w").unwrap(),
        [[0.5f32; 16], [-3.5; 16]].concat()
    );
}

#[test]
fn huge_counts() {
    // Tensor count and metadata count in the header.
    for field in [8..16, 16..24] {
        let mut bytes = sample_writer().build();
        bytes[field].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = parse_err(bytes);
        assert!(
            matches!(
                err,
                GgufError::AbsurdCount {
                    count: u64::MAX,
                    ..
                }
            ),
            "{err}"
        );
    }
    // An array claiming 2^60 elements.
    let mut bytes = GgufWriter::new(3)
        .kv("toks", MetaValue::Array(vec![MetaValue::U32(1)]))
        .build();
    let count_at = find(&bytes, b"toks") + 4 + 4 + 4;
    bytes[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::AbsurdCount { what, .. } if what.contains("toks")),
        "{err}"
    );
}

#[test]
fn unknown_value_type_and_bad_utf8() {
    let mut bytes = sample_writer().build();
    let type_at = find(&bytes, b"llama.block_count") + 17;
    bytes[type_at..type_at + 4].copy_from_slice(&13u32.to_le_bytes());
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::UnknownMetaValueType { key, type_id: 13, .. } if key == "llama.block_count"),
        "{err}"
    );

    let mut bytes = sample_writer().build();
    let at = find(&bytes, b"fairly");
    bytes[at] = 0xFF;
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { what, .. } if what.contains("general.name")),
        "{err}"
    );
}

#[test]
fn bad_tensor_shapes() {
    for dims in [vec![], vec![32, 1, 1, 1, 1]] {
        let mut w = sample_writer();
        w.tensors[0].dims = dims.clone();
        let err = parse_err(w.build());
        assert!(
            matches!(err, GgufError::BadDims { n_dims, .. } if n_dims as usize == dims.len()),
            "{err}"
        );
    }
    let mut w = sample_writer();
    w.tensors[0].dims = vec![1 << 32, 1 << 32, 2];
    w.tensors[0].type_id = F32;
    let err = parse_err(w.build());
    assert!(
        matches!(err, GgufError::ElementCountOverflow { .. }),
        "{err}"
    );

    let mut w = sample_writer();
    w.tensors[0].dims = vec![16, 2];
    let err = parse_err(w.build());
    assert!(
        matches!(
            err,
            GgufError::NotBlockMultiple {
                dim0: 16,
                block_size: 32,
                ..
            }
        ),
        "{err}"
    );

    // Zero-sized tensors are legal and dequantize to nothing.
    let mut w = sample_writer();
    w.tensors[0].dims = vec![32, 0];
    assert!(parse_ok(w.build())
        .dequantize("blk.0.w")
        .unwrap()
        .is_empty());
}

#[test]
fn duplicates_deep_nesting_and_unknown_names() {
    let err = parse_err(
        sample_writer()
            .kv("llama.block_count", MetaValue::U32(3))
            .build(),
    );
    assert!(matches!(err, GgufError::DuplicateKey { .. }), "{err}");

    let mut w = sample_writer();
    w.tensors.push(TensorSpec {
        name: "blk.0.w".into(),
        dims: vec![32],
        type_id: Q4_0,
        data: vec![0; 18],
        offset: None,
    });
    let err = parse_err(w.build());
    assert!(matches!(err, GgufError::DuplicateTensor { .. }), "{err}");

    let mut deep = MetaValue::U8(1);
    for _ in 0..20 {
        deep = MetaValue::Array(vec![deep]);
    }
    let err = parse_err(GgufWriter::new(3).kv("deep", deep).build());
    assert!(
        matches!(&err, GgufError::NestingTooDeep { key, .. } if key == "deep"),
        "{err}"
    );

    let file = parse_ok(sample_writer().build());
    let err = file.dequantize("nope").unwrap_err();
    assert!(
        matches!(&err, GgufError::UnknownTensor { tensor, .. } if tensor == "nope"),
        "{err}"
    );
    assert!(file.tensor_info("nope").is_none());
    let mut short = [0f32; 4];
    let err = file.dequantize_into("blk.0.w", &mut short).unwrap_err();
    assert!(matches!(err, GgufError::Dequant { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Robustness: nothing may panic, whatever the bytes.

/// A file with every metadata type and a tensor of every supported type.
fn rich_file() -> Vec<u8> {
    let mut w = GgufWriter::new(3).alignment(64);
    for (k, v) in every_meta_type() {
        w = w.kv(k, v);
    }
    let tensors: [(u32, u64, usize); 11] = [
        (F32, 4, 16),
        (F16, 4, 8),
        (BF16, 4, 8),
        (Q4_0, 32, 18),
        (Q4_1, 32, 20),
        (Q5_0, 32, 22),
        (Q5_1, 32, 24),
        (Q8_0, 32, 34),
        (Q4_K, 256, 144),
        (Q5_K, 256, 176),
        (Q6_K, 256, 210),
    ];
    for (i, (type_id, n, bytes)) in tensors.into_iter().enumerate() {
        let mut data = pattern(bytes, i as u8);
        // Keep floats and f16 scales finite so the values are meaningful; garbage is fuzzed
        // separately.
        match type_id {
            F32 => {
                data = [1.0f32, -2.0, 0.5, 3.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            F16 | BF16 => data.iter_mut().skip(1).step_by(2).for_each(|b| *b &= 0x3F),
            Q6_K => data[209] &= 0x3F,
            _ => {
                data[1] &= 0x3F;
                data[3] &= 0x3F;
            }
        }
        w = w.tensor(&format!("t{i}"), &[n], type_id, data);
    }
    w.build()
}

fn exercise(bytes: Vec<u8>) {
    if let Ok(file) = parse(bytes) {
        for name in file
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
        {
            let _ = file.dequantize(&name);
        }
        for key in file.metadata().keys() {
            let _ = file.get_u32(key);
            let _ = file.get_f32(key);
            let _ = file.get_str_array(key);
            let _ = file.get_i32_array(key);
        }
    }
}

/// xorshift64*, so the test needs no dependency and is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_truncations_and_byte_flips_never_panic() {
    let bytes = rich_file();
    let file = parse_ok(bytes.clone());
    assert_eq!(file.tensors().len(), 11);
    for t in file.tensors() {
        let values = file.dequantize(&t.name).unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
    }

    for len in 0..bytes.len() {
        assert!(parse(bytes[..len].to_vec()).is_err(), "prefix {len} parsed");
    }

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let mut corrupt = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(corrupt.len());
            corrupt[at] = match rng.below(4) {
                0 => 0xFF,
                1 => 0,
                2 => corrupt[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        exercise(corrupt);
    }

    // Pure garbage behind a valid-looking header.
    for _ in 0..2_000 {
        let len = rng.below(512);
        let mut garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if garbage.len() >= 24 {
            garbage[..4].copy_from_slice(b"GGUF");
            garbage[4..8].copy_from_slice(&3u32.to_le_bytes());
            // Small counts so parsing gets past the header.
            garbage[8..16].copy_from_slice(&(rng.below(4) as u64).to_le_bytes());
            garbage[16..24].copy_from_slice(&(rng.below(4) as u64).to_le_bytes());
        }
        exercise(garbage);
    }
}

// ---------------------------------------------------------------------------------------------
// The real model, when it has been downloaded.

fn real_model_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".cache/waypoint/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.exists().then_some(path)
}

#[test]
fn real_smollm2_q4_1_file() {
    let Some(path) = real_model_path() else {
        eprintln!(
            "skipping real_smollm2_q4_1_file: ~/.cache/waypoint/models/SmolLM2-135M-Instruct.Q4_1.gguf not found"
        );
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    let embd = file.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(
        file.tensor_info("blk.0.ffn_down.weight").unwrap().ggml_type,
        GgmlType::Q4_1
    );

    // Reference values from gguf-py's `gguf.quants.dequantize` on the same file (bit-exact).
    let embd_values = file.dequantize("token_embd.weight").unwrap();
    assert_eq!(embd_values.len(), 576 * 49152);
    assert_eq!(
        embd_values[..4],
        [-0.106544495, 0.032978058, 0.0481987, -0.022830963]
    );
    assert_eq!(
        embd_values[embd_values.len() - 2..],
        [-0.11989403, -0.04170227]
    );
    let down = file.dequantize("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        down[..4],
        [-0.33081055, 0.34606934, 0.07531738, -0.46618652]
    );
    assert_eq!(down[down.len() - 2..], [-0.09013367, -0.18136597]);

    let start = std::time::Instant::now();
    let mut total = 0usize;
    for t in file.tensors() {
        let values = file.dequantize(&t.name).unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
        total += values.len();
    }
    eprintln!(
        "dequantized {} tensors ({total} values) of {} in {:?}",
        file.tensors().len(),
        path.display(),
        start.elapsed()
    );
}
