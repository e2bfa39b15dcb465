//! The error type of the GGUF reader.

use std::path::PathBuf;

use super::{DequantError, GgmlType};

/// Everything that can go wrong while reading a GGUF file. Every variant names the file, and the
/// tensor or metadata key involved where there is one.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not exist.
    #[error("{}: GGUF file not found", .path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// Opening, reading or mapping the file failed.
    #[error("{}: cannot read GGUF file: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than the 24-byte header.
    #[error("{}: file is only {len} bytes long, too short for the 24-byte GGUF header", .path.display())]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// The file's length in bytes.
        len: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("{}: not a GGUF file: magic is {}, expected \"GGUF\"", .path.display(), show_bytes(.found))]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The (up to four) bytes found where the magic should be.
        found: Vec<u8>,
    },
    /// The header names a GGUF version other than 2 or 3.
    #[error("{}: unsupported GGUF version {version}{} (supported: 2, 3)", .path.display(), version_hint(*.version))]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the header.
        version: u32,
    },
    /// The file ends inside the metadata section.
    #[error("{}: truncated metadata: {what} at byte {offset} runs past the end of the file", .path.display())]
    TruncatedMetadata {
        /// The file.
        path: PathBuf,
        /// What was being read, e.g. "value of key `general.name`".
        what: String,
        /// Where the item that does not fit starts.
        offset: u64,
    },
    /// A metadata value (or array element) has a type id GGUF does not define.
    #[error("{}: metadata key `{key}` has unknown value type {type_id}", .path.display())]
    UnknownMetaValueType {
        /// The file.
        path: PathBuf,
        /// The key whose value could not be read.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// A string (key, value, or tensor name) is not valid UTF-8.
    #[error("{}: {what} at byte {offset} is not valid UTF-8", .path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string, e.g. "value of key `general.name`".
        what: String,
        /// Where the string's bytes start.
        offset: u64,
    },
    /// A count is larger than the rest of the file could possibly hold.
    #[error("{}: absurd count of {count} {what}: only {remaining} bytes are left in the file (corrupt or truncated)", .path.display())]
    AbsurdCount {
        /// The file.
        path: PathBuf,
        /// What is counted, e.g. "tensors" or "array elements of key `tokenizer.ggml.tokens`".
        what: String,
        /// The count found.
        count: u64,
        /// Bytes left after the count.
        remaining: u64,
    },
    /// Arrays are nested deeper than any real file does.
    #[error("{}: metadata key `{key}` nests arrays more than 16 deep", .path.display())]
    NestingTooDeep {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The same metadata key appears twice.
    #[error("{}: duplicate metadata key `{key}`", .path.display())]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{}: general.alignment is {alignment}, it must be a non-zero power of two", .path.display())]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The alignment found.
        alignment: u64,
    },
    /// The file ends inside the tensor table.
    #[error("{}: truncated tensor table: {what} at byte {offset} runs past the end of the file", .path.display())]
    TruncatedTensorTable {
        /// The file.
        path: PathBuf,
        /// What was being read, e.g. "dims of tensor `output.weight`".
        what: String,
        /// Where the item that does not fit starts.
        offset: u64,
    },
    /// A tensor has zero dimensions or more than [`MAX_DIMS`].
    #[error("{}: tensor `{tensor}` has {n_dims} dimensions (must be 1 to 4)", .path.display())]
    BadDims {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dimension count found.
        n_dims: u32,
    },
    /// The product of a tensor's dimensions does not fit in 64 bits (or in `usize`).
    #[error("{}: tensor `{tensor}` with dims {dims:?} has too many elements", .path.display())]
    ElementCountOverflow {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dims, GGUF order.
        dims: Vec<u64>,
    },
    /// A quantized tensor's rows are not made of whole blocks.
    #[error("{}: tensor `{tensor}` of type {ggml_type} has dims[0] = {dim0}, not a multiple of the block size {block_size}", .path.display())]
    NotBlockMultiple {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Its contiguous dimension.
        dim0: u64,
        /// Elements per block of that type.
        block_size: usize,
    },
    /// Two tensors have the same name.
    #[error("{}: duplicate tensor name `{tensor}`", .path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The name.
        tensor: String,
    },
    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("{}: tensor `{tensor}` has offset {offset}, not a multiple of the alignment {alignment}", .path.display())]
    MisalignedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its offset within the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's bytes reach past the end of the file.
    #[error("{}: tensor `{tensor}` data spans bytes {start}..{end} but the file is only {file_len} bytes long (truncated?)", .path.display())]
    TensorDataOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Absolute start of its data (saturated at `u64::MAX`).
        start: u64,
        /// Absolute end of its data (saturated at `u64::MAX`).
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The tensor's type cannot be dequantized by this reader.
    #[error("{}: tensor `{tensor}` has unsupported type {ggml_type}", .path.display())]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key `{key}` is missing", .path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value has a different type than the caller needs.
    #[error("{}: metadata key `{key}` should be {expected} but is {found}", .path.display())]
    WrongMetaType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file has.
        found: String,
    },
    /// A numeric metadata value does not fit the type the caller needs.
    #[error("{}: metadata key `{key}` has value {value}, which does not fit in {expected}", .path.display())]
    MetaValueOutOfRange {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found, formatted.
        value: String,
        /// What the caller asked for.
        expected: &'static str,
    },
    /// No tensor has that name.
    #[error("{}: no tensor named `{tensor}`", .path.display())]
    UnknownTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// Dequantizing a tensor failed (e.g. the caller's output buffer is too short).
    #[error("{}: cannot dequantize tensor `{tensor}`: {source}", .path.display())]
    Dequant {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What went wrong.
        source: DequantError,
    },
}

fn show_bytes(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("[{}] ({:?})", hex.join(" "), String::from_utf8_lossy(bytes))
}

fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        " (GGUF v1 used 32-bit counts; convert the file with a newer llama.cpp)"
    } else if matches!(version.swap_bytes(), 2 | 3) {
        " (looks like a big-endian GGUF file)"
    } else {
        ""
    }
}
