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
mod error;
#[cfg(test)]
mod fuzz;
mod parse;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use self::dequant::{dequantize, DequantError};
pub use self::error::GgufError;
use self::parse::{checked_elements, parse};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

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
        if !n_elements.is_multiple_of(block) {
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

    /// Drops the mapped pages of tensor `name` from this process's resident memory, once its
    /// data has been copied out: the loader copies every tensor, so without this the mapped
    /// file would count a second time in the peak resident size. Advisory: a tensor read again
    /// is paged back in from the file, and any failure leaves the pages where they are.
    pub fn release_tensor_pages(&self, name: &str) {
        let Storage::Mmap(map) = &self.storage else {
            return;
        };
        let Ok(data) = self.tensor_data(name) else {
            return;
        };
        let offset = data.as_ptr() as usize - map.as_ptr() as usize;
        // SAFETY: the map is a read-only map of the file, so MADV_DONTNEED cannot change what
        // any live reference reads: dropped pages are faulted back in with the same bytes
        // (the file changing underneath is the caveat `open` already documents).
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
        };
    }

    /// Dequantizes a tensor to f32, row-major with `dims[0]` fastest (a PyTorch `[out, in]`
    /// weight for a linear layer).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        // Check type and data extent before allocating: for a supported type whose bytes lie
        // inside the file, the element count (and so this allocation) is at most a small
        // multiple of the file size, whatever the dims claim.
        self.supported_tensor(name)?;
        self.tensor_data(name)?;
        let mut out = vec![0.0f32; self.element_count(name)?];
        self.dequantize_into(name, &mut out)?;
        Ok(out)
    }

    /// Like [`dequantize`](Self::dequantize) but into a caller-provided buffer, which must hold
    /// at least the tensor's element count (only that prefix is written).
    pub fn dequantize_into(&self, name: &str, out: &mut [f32]) -> Result<(), GgufError> {
        let info = self.supported_tensor(name)?;
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

    fn supported_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        let info = self.find_tensor(name)?;
        if info.ggml_type.is_supported() {
            Ok(info)
        } else {
            Err(GgufError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type,
            })
        }
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
