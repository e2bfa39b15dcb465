//! Reader for GGUF (versions 2 and 3), the single-file model format of ggml / llama.cpp.
//!
//! File layout, all integers little-endian:
//!
//! ```text
//! "GGUF" magic (4 bytes) | version u32 | tensor_count u64 | kv_count u64
//! kv_count x { key: string, value_type u32, value }         string = u64 length + UTF-8 bytes
//!                                                           array  = elem_type u32 + u64 count + values
//! tensor_count x { name: string, n_dims u32, dims u64 x n_dims, ggml_type u32, offset u64 }
//! padding up to `general.alignment` (default 32)
//! data section: each tensor's bytes start at data_offset + offset (offsets are aligned too)
//! ```
//!
//! `dims[0]` is the contiguous dimension, so a tensor with dims `[in, out]` is a row-major
//! PyTorch `[out, in]` matrix. Quantized types store `dims[0]` as whole blocks; see [`dequant`].
//!
//! Every length and count in the file is treated as untrusted: it is checked against the bytes
//! that are actually left before anything is allocated, and all offset arithmetic is checked, so
//! arbitrary input yields a [`GgufError`] rather than a panic or a huge allocation.

pub mod dequant;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use self::dequant::{dequantize, DequantError};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Magic, version and the two counts.
const HEADER_LEN: usize = 24;
/// Nested arrays are legal but never deep in practice; the limit keeps recursion (and so the
/// stack) bounded on hostile input.
const MAX_ARRAY_DEPTH: u32 = 16;
/// Smallest possible metadata entry: empty key (8) + type (4) + one-byte value.
const MIN_KV_BYTES: usize = 13;
/// Smallest possible tensor-table entry: empty name (8) + n_dims (4) + one dim (8) + type (4)
/// + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 32;

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
    #[error("{}: truncated metadata: file ends at byte {offset} while reading {what}", .path.display())]
    TruncatedMetadata {
        /// The file.
        path: PathBuf,
        /// What was being read, e.g. "value of key `general.name`".
        what: String,
        /// Where the missing bytes should have started.
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
    #[error("{}: truncated tensor table: file ends at byte {offset} while reading {what}", .path.display())]
    TruncatedTensorTable {
        /// The file.
        path: PathBuf,
        /// What was being read, e.g. "dims of tensor `output.weight`".
        what: String,
        /// Where the missing bytes should have started.
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

/// A tensor element type, as stored in the tensor table.
///
/// The named variants are those this reader can dequantize; any other id, whether ggml knows it
/// (e.g. 20, IQ4_NL) or not, is kept as `Other(id)` so that files holding such tensors still open.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// bfloat16.
    BF16,
    /// 32-element blocks: f16 scale, 4-bit quants offset by 8.
    Q4_0,
    /// 32-element blocks: f16 scale and min, 4-bit quants.
    Q4_1,
    /// 32-element blocks: f16 scale, 5-bit quants offset by 16.
    Q5_0,
    /// 32-element blocks: f16 scale and min, 5-bit quants.
    Q5_1,
    /// 32-element blocks: f16 scale, 8-bit signed quants.
    Q8_0,
    /// 256-element super-blocks of eight 32-element sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// As Q4_K with a fifth bit per quant.
    Q5_K,
    /// 256-element super-blocks of sixteen 16-element sub-blocks, 6-bit quants, 8-bit scales.
    Q6_K,
    /// Any other ggml type id; it can be listed but not dequantized.
    Other(u32),
}

impl GgmlType {
    /// The type for a ggml type id (`enum ggml_type`).
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// ggml's name for the type (e.g. "Q4_K", "IQ4_NL"), or "unknown".
    pub fn name(self) -> &'static str {
        match self.id() {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            40 => "NVFP4",
            41 => "Q1_0",
            _ => "unknown",
        }
    }

    /// `(elements per block, bytes per block)` for every type ggml defines, supported or not, so
    /// that tensor extents can be checked even for tensors we cannot dequantize; `None` for ids
    /// ggml does not know (or has retired).
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self.id() {
            0 => (1, 4),
            1 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            16 => (256, 66),
            17 => (256, 74),
            18 => (256, 98),
            19 => (256, 50),
            20 => (32, 18),
            21 => (256, 110),
            22 => (256, 82),
            23 => (256, 136),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 => (1, 8),
            28 => (1, 8),
            29 => (256, 56),
            30 => (1, 2),
            34 => (256, 54),
            35 => (256, 66),
            39 => (32, 17),
            40 => (64, 36),
            41 => (128, 18),
            _ => return None,
        })
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// Bytes needed for `n_elements` of this type, or `None` if the layout is unknown, the count
    /// is not a whole number of blocks, or the size overflows.
    pub fn byte_size(self, n_elements: u64) -> Option<u64> {
        let (block, bytes) = self.block_layout()?;
        let (block, bytes) = (block as u64, bytes as u64);
        if n_elements % block != 0 {
            return None;
        }
        (n_elements / block).checked_mul(bytes)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "type {id} ({})", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// A metadata value. Arrays hold elements of a single type in the file; nested arrays are
/// allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (one byte, non-zero is true).
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 9.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF value type id (`gguf_type`).
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// A short name of the value's type, e.g. "u32" or "array of 3 string".
    pub fn type_name(&self) -> String {
        match self {
            Self::U8(_) => "u8".into(),
            Self::I8(_) => "i8".into(),
            Self::U16(_) => "u16".into(),
            Self::I16(_) => "i16".into(),
            Self::U32(_) => "u32".into(),
            Self::I32(_) => "i32".into(),
            Self::U64(_) => "u64".into(),
            Self::I64(_) => "i64".into(),
            Self::F32(_) => "f32".into(),
            Self::F64(_) => "f64".into(),
            Self::Bool(_) => "bool".into(),
            Self::String(_) => "string".into(),
            Self::Array(items) => match items.first() {
                Some(first) => format!("array of {} {}", items.len(), first.type_name()),
                None => "empty array".into(),
            },
        }
    }

    /// The value as an `i128` if it is an integer of any width (wide enough for every GGUF
    /// integer type, so range checks need no special cases).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Start of the tensor's bytes, relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements. Tensors from a [`GgufFile`] were checked not to overflow; for others
    /// the product saturates at `u64::MAX`.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size of the tensor's data in bytes, or `None` for types whose layout is unknown.
    pub fn byte_size(&self) -> Option<u64> {
        self.ggml_type.byte_size(self.n_elements())
    }

    /// Dimensions outermost first, as PyTorch would write the shape of the dequantized data
    /// (`[out, in]` for a linear weight).
    pub fn torch_shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// The bytes behind a [`GgufFile`]: a read-only map of the file, or a buffer handed to
/// [`GgufFile::from_bytes`].
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mmap(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

/// A parsed GGUF file: metadata and tensor table in memory, tensor data left in the (mapped)
/// file until asked for.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    storage: Storage,
}

impl fmt::Debug for GgufFile {
    // Hand-written so that debug-printing never dumps the file's bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.storage.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file, memory-mapping it so that tensor data is only read when
    /// dequantized.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_err = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                GgufError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                GgufError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        // Mapping an empty file fails on some platforms; an empty buffer gives the same
        // "too short" error without the mapping.
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and never outlives `self`. Another process truncating
            // or rewriting the model file while it is open would change what we read (or raise
            // SIGBUS); that is the usual, accepted caveat of memory-mapping model weights.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?)
        };
        Self::from_storage(path.to_path_buf(), storage)
    }

    /// Parses a GGUF file held in memory; `path_for_errors` only labels errors.
    pub fn from_bytes(path_for_errors: PathBuf, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_storage(path_for_errors, Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self, GgufError> {
        let parsed = parse(&path, storage.bytes())?;
        Ok(Self {
            path,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            storage,
        })
    }

    /// The path given to [`open`](Self::open) or [`from_bytes`](Self::from_bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Alignment of the data section and tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The raw metadata value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// The raw, still-quantized bytes of a tensor whose layout is known.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.find_tensor(name)?;
        let unsupported = || GgufError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: name.to_owned(),
            ggml_type: info.ggml_type,
        };
        let len = info.byte_size().ok_or_else(unsupported)?;
        // Extents were checked against the file at parse time; checking again keeps this
        // panic-free even if that invariant were ever broken.
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(len));
        let bytes = self.storage.bytes();
        start
            .zip(end)
            .and_then(|(s, e)| bytes.get(usize::try_from(s).ok()?..usize::try_from(e).ok()?))
            .ok_or_else(|| GgufError::TensorDataOutOfBounds {
                path: self.path.clone(),
                tensor: name.to_owned(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                file_len: bytes.len() as u64,
            })
    }

    /// Dequantizes a tensor to f32, row-major with `dims[0]` fastest (a PyTorch `[out, in]`
    /// weight for a linear layer).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let n = self.element_count(name)?;
        // The element count is bounded by the tensor's bytes, which lie inside the file, so this
        // allocation is at most a small multiple of the file size.
        let mut out = vec![0.0f32; n];
        self.dequantize_into(name, &mut out)?;
        Ok(out)
    }

    /// Like [`dequantize`](Self::dequantize) but into a caller-provided buffer, which must hold
    /// at least the tensor's element count (only that prefix is written).
    pub fn dequantize_into(&self, name: &str, out: &mut [f32]) -> Result<(), GgufError> {
        let info = self.find_tensor(name)?;
        if !info.ggml_type.is_supported() {
            return Err(GgufError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type,
            });
        }
        let n = self.element_count(name)?;
        let bytes = self.tensor_data(name)?;
        dequantize(info.ggml_type, bytes, n, out).map_err(|source| GgufError::Dequant {
            path: self.path.clone(),
            tensor: name.to_owned(),
            source,
        })
    }

    fn find_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::UnknownTensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
            })
    }

    fn element_count(&self, name: &str) -> Result<usize, GgufError> {
        let info = self.find_tensor(name)?;
        checked_elements(&info.dims)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| GgufError::ElementCountOverflow {
                path: self.path.clone(),
                tensor: name.to_owned(),
                dims: info.dims.clone(),
            })
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: String) -> GgufError {
        GgufError::WrongMetaType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found,
        }
    }

    fn integer_in_range<T: TryFrom<i128>>(
        &self,
        key: &str,
        value: &MetaValue,
        expected: &'static str,
    ) -> Result<T, GgufError> {
        let v = value
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, expected, value.type_name()))?;
        T::try_from(v).map_err(|_| GgufError::MetaValueOutOfRange {
            path: self.path.clone(),
            key: key.to_owned(),
            value: v.to_string(),
            expected,
        })
    }

    /// An integer value of any width that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.integer_in_range(key, self.require(key)?, "a u32")
    }

    /// An integer value of any width that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.integer_in_range(key, self.require(key)?, "a u64")
    }

    /// Like [`get_u32`](Self::get_u32), but `Ok(None)` when the key is absent.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        match self.metadata.get(key) {
            Some(value) => self.integer_in_range(key, value, "a u32").map(Some),
            None => Ok(None),
        }
    }

    /// An F32 or F64 value, as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32_opt(key)?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    /// Like [`get_f32`](Self::get_f32), but `Ok(None)` when the key is absent.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(*v)),
            Some(MetaValue::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.wrong_type(key, "a float", other.type_name())),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", value.type_name()))
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            MetaValue::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(key, "a bool", other.type_name())),
        }
    }

    fn get_array(&self, key: &str, expected: &'static str) -> Result<&[MetaValue], GgufError> {
        let value = self.require(key)?;
        value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, expected, value.type_name()))
    }

    /// An array of strings (an empty array is accepted).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        const EXPECTED: &str = "an array of strings";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| {
                    self.wrong_type(
                        key,
                        EXPECTED,
                        format!("an array with a {} at index {i}", item.type_name()),
                    )
                })
            })
            .collect()
    }

    /// An array of integers of any width whose values all fit in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        const EXPECTED: &str = "an array of i32";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_integer() {
                Some(v) => i32::try_from(v).map_err(|_| GgufError::MetaValueOutOfRange {
                    path: self.path.clone(),
                    key: key.to_owned(),
                    value: format!("{v} (at index {i})"),
                    expected: "an i32",
                }),
                None => Err(self.wrong_type(
                    key,
                    EXPECTED,
                    format!("an array with a {} at index {i}", item.type_name()),
                )),
            })
            .collect()
    }
}

fn checked_elements(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

struct Parsed {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// Low-level read failures; the section being parsed turns them into a [`GgufError`] with
/// context.
#[derive(Debug)]
enum ReadError {
    Eof { offset: usize },
    Utf8 { offset: usize },
    UnknownType(u32),
    Count { count: u64, remaining: usize },
    TooDeep,
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ReadError> {
        let eof = ReadError::Eof { offset: self.pos };
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(eof)?;
        let end = self.pos + bytes.len();
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let offset = self.pos;
        self.take(N as u64)?
            .try_into()
            .map_err(|_| ReadError::Eof { offset })
    }

    fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, ReadError> {
        let len = self.u64()?;
        let offset = self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ReadError::Utf8 { offset })
    }

    /// Reads a count of items each at least `min_size` bytes long, refusing counts the rest of
    /// the buffer cannot hold so that the caller may allocate for it.
    fn count(&mut self, min_size: usize) -> Result<usize, ReadError> {
        let count = self.u64()?;
        let remaining = self.remaining();
        match usize::try_from(count) {
            Ok(n) if n <= remaining / min_size.max(1) => Ok(n),
            _ => Err(ReadError::Count { count, remaining }),
        }
    }

    fn value(&mut self, type_id: u32, depth: u32) -> Result<MetaValue, ReadError> {
        Ok(match type_id {
            0 => MetaValue::U8(self.u8()?),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(ReadError::TooDeep);
                }
                let elem_type = self.u32()?;
                let min_size = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(ReadError::UnknownType(other)),
                };
                let n = self.count(min_size)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(ReadError::UnknownType(other)),
        })
    }
}

/// Which part of the file a [`ReadError`] happened in.
#[derive(Clone, Copy)]
enum Section {
    Metadata,
    TensorTable,
}

/// Attaches file, section and item context to a low-level read error. `key` is the metadata key
/// (or tensor name) involved, `what` describes the item being read.
fn contextualize<'a>(
    path: &'a Path,
    section: Section,
    key: &'a str,
    what: impl FnOnce() -> String + 'a,
) -> impl FnOnce(ReadError) -> GgufError + 'a {
    move |err| {
        let path = path.to_path_buf();
        match err {
            ReadError::Eof { offset } => match section {
                Section::Metadata => GgufError::TruncatedMetadata {
                    path,
                    what: what(),
                    offset: offset as u64,
                },
                Section::TensorTable => GgufError::TruncatedTensorTable {
                    path,
                    what: what(),
                    offset: offset as u64,
                },
            },
            ReadError::Utf8 { offset } => GgufError::InvalidUtf8 {
                path,
                what: what(),
                offset: offset as u64,
            },
            ReadError::UnknownType(type_id) => GgufError::UnknownMetaValueType {
                path,
                key: key.to_owned(),
                type_id,
            },
            ReadError::Count { count, remaining } => GgufError::AbsurdCount {
                path,
                what: format!("elements in {}", what()),
                count,
                remaining: remaining as u64,
            },
            ReadError::TooDeep => GgufError::NestingTooDeep {
                path,
                key: key.to_owned(),
            },
        }
    }
}

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed, GgufError> {
    let file_len = buf.len() as u64;
    let magic_len = buf.len().min(GGUF_MAGIC.len());
    let (found, wanted) = (&buf[..magic_len], &GGUF_MAGIC[..magic_len]);
    if found != wanted {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: found.to_vec(),
        });
    }
    if buf.len() < HEADER_LEN {
        // The version is readable before the counts are; an unknown version explains a short
        // file better than "truncated" does.
        if let Some(v) = buf.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            let version = u32::from_le_bytes(v);
            if !matches!(version, 2 | 3) {
                return Err(GgufError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version,
                });
            }
        }
        return Err(GgufError::TruncatedHeader {
            path: path.to_path_buf(),
            len: file_len,
        });
    }

    let mut r = Reader { buf, pos: 4 };
    let header_err = |_| GgufError::TruncatedHeader {
        path: path.to_path_buf(),
        len: file_len,
    };
    let version = r.u32().map_err(header_err)?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let tensor_count = r.u64().map_err(header_err)?;
    let kv_count = r.u64().map_err(header_err)?;

    let absurd = |what: &str, count: u64, remaining: usize| GgufError::AbsurdCount {
        path: path.to_path_buf(),
        what: what.to_owned(),
        count,
        remaining: remaining as u64,
    };
    let kv_count = usize::try_from(kv_count)
        .ok()
        .filter(|&n| n <= r.remaining() / MIN_KV_BYTES)
        .ok_or_else(|| absurd("metadata entries", kv_count, r.remaining()))?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string().map_err(contextualize(
            path,
            Section::Metadata,
            "",
            || format!("the key of metadata entry #{i}"),
        ))?;
        let value_err = || format!("the value of key `{key}`");
        let type_id = r
            .u32()
            .map_err(contextualize(path, Section::Metadata, &key, value_err))?;
        let value = r
            .value(type_id, 0)
            .map_err(contextualize(path, Section::Metadata, &key, value_err))?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                path: path.to_path_buf(),
                key,
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => {
            let alignment = match value {
                MetaValue::U8(_)
                | MetaValue::U16(_)
                | MetaValue::U32(_)
                | MetaValue::U64(_)
                | MetaValue::I8(_)
                | MetaValue::I16(_)
                | MetaValue::I32(_)
                | MetaValue::I64(_) => value.as_integer().unwrap_or(0),
                other => {
                    return Err(GgufError::WrongMetaType {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        expected: "an integer",
                        found: other.type_name(),
                    })
                }
            };
            match u64::try_from(alignment) {
                Ok(a) if a.is_power_of_two() && a <= u64::from(u32::MAX) => a,
                _ => {
                    return Err(GgufError::BadAlignment {
                        path: path.to_path_buf(),
                        alignment: u64::try_from(alignment).unwrap_or(0),
                    })
                }
            }
        }
    };

    let tensor_count = usize::try_from(tensor_count)
        .ok()
        .filter(|&n| n <= r.remaining() / MIN_TENSOR_INFO_BYTES)
        .ok_or_else(|| absurd("tensors", tensor_count, r.remaining()))?;

    let mut tensors = Vec::with_capacity(tensor_count);
    let mut by_name = HashMap::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = r.string().map_err(contextualize(
            path,
            Section::TensorTable,
            "",
            || format!("the name of tensor #{i}"),
        ))?;
        let field_err = |field: &'static str| {
            let name = name.as_str();
            contextualize(path, Section::TensorTable, name, move || {
                format!("the {field} of tensor `{name}`")
            })
        };
        let n_dims = r.u32().map_err(field_err("dimension count"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadDims {
                path: path.to_path_buf(),
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64().map_err(field_err("dims"))?);
        }
        let ggml_type = GgmlType::from_id(r.u32().map_err(field_err("type"))?);
        let offset = r.u64().map_err(field_err("offset"))?;

        // ggml stores element counts as int64_t, so anything beyond that is equally invalid.
        if checked_elements(&dims).is_none_or(|n| n > i64::MAX as u64 || usize::try_from(n).is_err())
        {
            return Err(GgufError::ElementCountOverflow {
                path: path.to_path_buf(),
                tensor: name,
                dims,
            });
        }
        if let Some((block, _)) = ggml_type.block_layout() {
            if dims[0] % block as u64 != 0 {
                return Err(GgufError::NotBlockMultiple {
                    path: path.to_path_buf(),
                    tensor: name,
                    ggml_type,
                    dim0: dims[0],
                    block_size: block,
                });
            }
        }
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                path: path.to_path_buf(),
                tensor: name,
                offset,
                alignment,
            });
        }
        if by_name.insert(name.clone(), i).is_some() {
            return Err(GgufError::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: name,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let table_end = r.pos as u64;
    let data_offset = table_end
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    for info in &tensors {
        // Unknown layouts cannot be checked here; tensor_data() refuses them instead.
        let Some(size) = info.byte_size() else {
            continue;
        };
        let start = data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(size));
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufError::TensorDataOutOfBounds {
                path: path.to_path_buf(),
                tensor: info.name.clone(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                file_len,
            });
        }
    }

    Ok(Parsed {
        version,
        metadata,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}
