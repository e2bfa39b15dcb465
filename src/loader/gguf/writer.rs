//! Test-only GGUF writer, for building small files with exactly the bytes a test needs
//! (including deliberately odd ones: any type id, any offset, any version).

use super::MetaValue;

/// One tensor to write. `offset: None` places it at the next aligned position.
pub(crate) struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

/// Builds a GGUF byte image.
pub(crate) struct GgufWriter {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn new(version: u32) -> Self {
        Self {
            version,
            alignment: super::DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: MetaValue) -> Self {
        self.kvs.push((key.to_owned(), value));
        self
    }

    /// Sets the alignment used for layout and records it as `general.alignment` (u32).
    pub fn alignment(mut self, alignment: u32) -> Self {
        self.alignment = u64::from(alignment);
        self.kv("general.alignment", MetaValue::U32(alignment))
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id,
            data,
            offset: None,
        });
        self
    }

    /// Byte offset (relative to the data section) of every tensor, as `build` lays them out.
    pub fn offsets(&self) -> Vec<u64> {
        let mut cursor = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let offset = t.offset.unwrap_or(cursor);
                cursor = (offset + t.data.len() as u64).next_multiple_of(self.alignment);
                offset
            })
            .collect()
    }

    /// Header, metadata and tensor table, without the padding and data that follow.
    pub fn head(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let offsets = self.offsets();
        for (t, offset) in self.tensors.iter().zip(&offsets) {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = self.head();
        let offsets = self.offsets();
        let data_start = (out.len() as u64).next_multiple_of(self.alignment) as usize;
        out.resize(data_start, 0);
        for (t, offset) in self.tensors.iter().zip(&offsets) {
            let start = data_start + *offset as usize;
            if out.len() < start {
                out.resize(start, 0);
            }
            out.truncate(start);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value without its type id (arrays carry their element type inside). Empty arrays
/// are written as arrays of u32, since the in-memory form does not remember a type for them.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::Array(items) => {
            let elem_type = items.first().map_or(4, MetaValue::type_id);
            assert!(
                items.iter().all(|i| i.type_id() == elem_type),
                "GGUF arrays are homogeneous"
            );
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}
