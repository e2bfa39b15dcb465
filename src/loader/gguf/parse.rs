//! Parsing of the header, metadata and tensor table. Every read is bounds-checked and every
//! count is checked against the bytes left before anything is allocated for it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{GgmlType, GgufError, MetaValue, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};

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

/// Validates an item count read from the file against the `remaining` bytes. A count larger
/// than the number of bytes left is absurd whatever the items are (`None`); a smaller one may
/// still run into the end of a truncated file, which the item reads then report precisely. The
/// second value is how many items can safely be preallocated: no more than could fit if each
/// took its minimum size.
fn checked_count(count: u64, remaining: usize, min_size: usize) -> Option<(usize, usize)> {
    let n = usize::try_from(count).ok().filter(|&n| n <= remaining)?;
    Some((n, n.min(remaining / min_size.max(1))))
}

pub(super) fn checked_elements(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

pub(super) struct Parsed {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, MetaValue>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) by_name: HashMap<String, usize>,
    pub(super) alignment: u64,
    pub(super) data_offset: u64,
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

    /// Reads a count of items each at least `min_size` bytes long. Returns the count and a safe
    /// capacity to preallocate (what the remaining bytes could hold at most).
    fn count(&mut self, min_size: usize) -> Result<(usize, usize), ReadError> {
        let count = self.u64()?;
        checked_count(count, self.remaining(), min_size).ok_or(ReadError::Count {
            count,
            remaining: self.remaining(),
        })
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
                let (n, capacity) = self.count(min_size)?;
                let mut items = Vec::with_capacity(capacity);
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

pub(super) fn parse(path: &Path, buf: &[u8]) -> Result<Parsed, GgufError> {
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
    let (kv_count, _) = checked_count(kv_count, r.remaining(), MIN_KV_BYTES)
        .ok_or_else(|| absurd("metadata entries", kv_count, r.remaining()))?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r
            .string()
            .map_err(contextualize(path, Section::Metadata, "", || {
                format!("the key of metadata entry #{i}")
            }))?;
        let value_err = || format!("the value of key `{key}`");
        let type_id = r
            .u32()
            .map_err(contextualize(path, Section::Metadata, &key, value_err))?;
        let value =
            r.value(type_id, 0)
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

    let (tensor_count, capacity) =
        checked_count(tensor_count, r.remaining(), MIN_TENSOR_INFO_BYTES)
            .ok_or_else(|| absurd("tensors", tensor_count, r.remaining()))?;

    let mut tensors = Vec::with_capacity(capacity);
    let mut by_name = HashMap::with_capacity(capacity);
    for i in 0..tensor_count {
        let name = r
            .string()
            .map_err(contextualize(path, Section::TensorTable, "", || {
                format!("the name of tensor #{i}")
            }))?;
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
        if checked_elements(&dims)
            .is_none_or(|n| n > i64::MAX as u64 || usize::try_from(n).is_err())
        {
            return Err(GgufError::ElementCountOverflow {
                path: path.to_path_buf(),
                tensor: name,
                dims,
            });
        }
        if let Some((block, _)) = ggml_type.block_layout() {
            if !dims[0].is_multiple_of(block as u64) {
                return Err(GgufError::NotBlockMultiple {
                    path: path.to_path_buf(),
                    tensor: name,
                    ggml_type,
                    dim0: dims[0],
                    block_size: block,
                });
            }
        }
        if !offset.is_multiple_of(alignment) {
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
