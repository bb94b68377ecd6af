//! GGUF reader (versions 2 and 3), written for hostile input: every count and
//! length read from the file is checked against the bytes that remain before
//! anything is allocated for it, all size arithmetic is checked, and tensors
//! must be aligned, in bounds, distinct and non-overlapping.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; metadata as (string key, u32 type, value); tensor infos as
//! (string name, u32 n_dims, u64 dims\[n_dims\], u32 ggml type, u64 offset);
//! padding to `general.alignment` (default 32); the data section. Strings are
//! a u64 length and UTF-8 bytes. Dimension 0 is the innermost (row length).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tensor::{DType, GgmlType, Tensor};

mod value;
mod write;

use crate::error::{Error, Result};
pub use value::{Array, Value, ValueType};

/// Entries a list read from a file reserves before it reads them.
const RESERVED_ENTRIES: usize = 4096;
pub use write::write;

pub use crate::error::GgufError;

/// One tensor's entry in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (row length) first.
    pub dims: Vec<u64>,
    /// Storage type; `Err(id)` for types kvgpu cannot compute with.
    pub dtype: std::result::Result<DType, (u32, &'static str)>,
    /// Start in the data section.
    pub offset: u64,
    /// Byte length.
    pub size: u64,
}

/// The bytes of a file: mapped from disk or owned.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file.
pub struct Gguf {
    /// Where the file came from (for messages).
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// Tensor entries in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Start of the data section in the file.
    pub data_offset: u64,
    bytes: Arc<Bytes>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Reads the file front to back, with the byte offset for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

type Parse<T> = std::result::Result<T, (u64, GgufError)>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn fail<T>(&self, e: GgufError) -> Parse<T> {
        Err((self.at as u64, e))
    }

    fn take(&mut self, n: u64, what: &str) -> Parse<&'a [u8]> {
        if n > self.remaining() {
            return self.fail(GgufError::CutShort {
                what: what.to_string(),
                needed: n,
                remaining: self.remaining(),
            });
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Parse<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("length N"))
    }

    fn u32(&mut self, what: &str) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes: checked against what remains.
    fn count(&mut self, what: &str, min_size: u64) -> Parse<u64> {
        let count = self.u64(what)?;
        if count
            .checked_mul(min_size)
            .is_none_or(|b| b > self.remaining())
        {
            return self.fail(GgufError::CountTooLarge {
                what: what.to_string(),
                count,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &str) -> Parse<String> {
        let len = self.u64(what)?;
        let start = self.at;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err((start as u64, GgufError::InvalidUtf8(what.to_string()))),
        }
    }

    /// A value of type id `ty`, for metadata key `key`.
    fn value(&mut self, key: &str, ty: u32) -> Parse<Value> {
        let Some(ty) = ValueType::from_id(ty) else {
            return self.fail(GgufError::UnknownValueType(ty));
        };
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(key)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(self.u32(key)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(key)?[0] != 0),
            ValueType::String => Value::String(self.string(key)?),
            ValueType::U64 => Value::U64(self.u64(key)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Array => Value::Array(self.array_value(key)?),
        })
    }

    /// An array's element type, count and elements.
    fn array_value(&mut self, key: &str) -> Parse<Array> {
        let id = self.u32(key)?;
        let elem = match ValueType::from_id(id) {
            None => return self.fail(GgufError::UnknownValueType(id)),
            Some(ValueType::Array) => return self.fail(GgufError::NestedArray(key.to_string())),
            Some(elem) => elem,
        };
        let n = self.count(&format!("array {key:?}"), elem.min_size())?;
        // Capacity is bounded by the bytes that remain (checked by `count`).
        let n = n as usize;
        Ok(match elem {
            ValueType::String => Array::String(self.elements(n, |r| r.string(key))?),
            ValueType::Bool => Array::Bool(self.elements(n, |r| Ok(r.array::<1>(key)?[0] != 0))?),
            ValueType::U8 => Array::U8(self.elements(n, |r| Ok(r.array::<1>(key)?[0]))?),
            ValueType::I8 => Array::I8(self.elements(n, |r| Ok(r.array::<1>(key)?[0] as i8))?),
            ValueType::U16 => {
                Array::U16(self.elements(n, |r| Ok(u16::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::I16 => {
                Array::I16(self.elements(n, |r| Ok(i16::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::U32 => Array::U32(self.elements(n, |r| r.u32(key))?),
            ValueType::I32 => {
                Array::I32(self.elements(n, |r| Ok(i32::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::U64 => Array::U64(self.elements(n, |r| r.u64(key))?),
            ValueType::I64 => {
                Array::I64(self.elements(n, |r| Ok(i64::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::F32 => {
                Array::F32(self.elements(n, |r| Ok(f32::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::F64 => {
                Array::F64(self.elements(n, |r| Ok(f64::from_le_bytes(r.array(key)?)))?)
            }
            ValueType::Array => unreachable!("refused above"),
        })
    }

    /// `n` elements read by `f`, the list growing as they are read.
    fn elements<T>(&mut self, n: usize, mut f: impl FnMut(&mut Self) -> Parse<T>) -> Parse<Vec<T>> {
        let mut out = Vec::with_capacity(n.min(RESERVED_ENTRIES));
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }
}

impl Gguf {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; kvgpu never writes the file, and a
        // concurrent writer could at worst change bytes we already validated,
        // which every later use re-checks by construction (sizes are fixed).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse_bytes(Bytes::Mapped(map), path.to_path_buf())
    }

    /// Parses a GGUF file held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        Self::parse_bytes(Bytes::Owned(bytes), "<memory>".into())
    }

    fn parse_bytes(bytes: Bytes, path: PathBuf) -> Result<Self> {
        Self::parse(bytes, path.clone()).map_err(|(offset, kind)| Error::Gguf {
            path,
            offset,
            kind,
        })
    }

    fn parse(bytes: Bytes, path: PathBuf) -> Parse<Self> {
        let bytes = Arc::new(bytes);
        let data: &[u8] = (*bytes).as_ref();
        let mut r = Reader { bytes: data, at: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != b"GGUF" {
            return Err((0, GgufError::BadMagic(magic)));
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err((4, GgufError::UnsupportedVersion(version)));
        }
        // A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes; a metadata entry 8 + 4 + 1.
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.count("metadata", 13)?;
        if n_tensors.checked_mul(32).is_none_or(|b| b > r.remaining()) {
            return Err((
                8,
                GgufError::CountTooLarge {
                    what: "tensor".into(),
                    count: n_tensors,
                    remaining: r.remaining(),
                },
            ));
        }
        // Counts that fit the file (a sparse one too) reserve no more than
        // a few pages: the lists grow as entries are read.
        let reserve = |n: u64| (n as usize).min(RESERVED_ENTRIES);
        let mut metadata = Vec::with_capacity(reserve(n_kv));
        let mut index = HashMap::with_capacity(reserve(n_kv));
        for _ in 0..n_kv {
            let key_at = r.at as u64;
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(&key, ty)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err((key_at, GgufError::DuplicateKey(key)));
            }
            metadata.push((key, value));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => 32,
            Some(Value::U32(a)) => *a as u64,
            Some(v) => {
                return Err((
                    0,
                    GgufError::WrongType {
                        key: "general.alignment".into(),
                        expected: "u32",
                        found: v.type_name(),
                    },
                ))
            }
        };
        if !alignment.is_power_of_two() {
            return Err((0, GgufError::BadAlignment(alignment)));
        }
        let mut tensors = Vec::with_capacity(reserve(n_tensors));
        let mut tensor_index = HashMap::with_capacity(reserve(n_tensors));
        for _ in 0..n_tensors {
            let at = r.at as u64;
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err((at, GgufError::BadDimensionCount { name, n_dims }));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Parse<Vec<u64>>>()?;
            if dims.contains(&0) {
                return Err((at, GgufError::ZeroDimension(name)));
            }
            let id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            let Some(&GgmlType {
                name: ty,
                block_len,
                block_bytes,
                dtype,
                ..
            }) = GgmlType::from_id(id)
            else {
                return Err((at, GgufError::UnknownTensorType { name, id }));
            };
            let (block_len, block_bytes) = (block_len as u64, block_bytes as u64);
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| (at, GgufError::ElementCountOverflow(name.clone())))?;
            if dims[0] % block_len != 0 {
                return Err((
                    at,
                    GgufError::PartialBlock {
                        name,
                        cols: dims[0],
                        ty,
                    },
                ));
            }
            let size = (elements / block_len)
                .checked_mul(block_bytes)
                .ok_or_else(|| (at, GgufError::ElementCountOverflow(name.clone())))?;
            if offset % alignment != 0 {
                return Err((
                    at,
                    GgufError::Misaligned {
                        name,
                        offset,
                        alignment,
                    },
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err((at, GgufError::DuplicateTensor(name)));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype: dtype.ok_or((id, ty)),
                offset,
                size,
            });
        }
        let data_offset = (r.at as u64).next_multiple_of(alignment);
        let data_len = (data.len() as u64).saturating_sub(data_offset);
        if n_tensors > 0 && data_offset > data.len() as u64 {
            return Err((
                r.at as u64,
                GgufError::CutShort {
                    what: "padding before the data section".into(),
                    needed: data_offset - r.at as u64,
                    remaining: r.remaining(),
                },
            ));
        }
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len);
            let Some(end) = end else {
                return Err((
                    data_offset,
                    GgufError::OutOfBounds {
                        data_start: data_offset,
                        name: t.name.clone(),
                        offset: t.offset,
                        end: t.offset.saturating_add(t.size),
                        data_len,
                    },
                ));
            };
            spans.push((t.offset, end, i));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                // Name them in file order.
                let (a, b) = (w[0].2.min(w[1].2), w[0].2.max(w[1].2));
                return Err((
                    data_offset + w[1].0,
                    GgufError::Overlap(tensors[a].name.clone(), tensors[b].name.clone()),
                ));
            }
        }
        Ok(Self {
            path,
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
            bytes,
        })
    }

    /// The value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `kind` as an [`Error`] naming this file.
    pub fn error(&self, kind: GgufError) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            offset: 0,
            kind,
        }
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> Error {
        self.error(GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        })
    }

    /// Integer field `key` (any integer type, non-negative), else `default`.
    pub fn uint(&self, key: &str, default: Option<u64>) -> Result<u64> {
        match self.get(key) {
            None => default.ok_or_else(|| self.error(GgufError::MissingKey(key.into()))),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    /// Float field `key` (f32 or f64), else `default`.
    pub fn float(&self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            None => default.ok_or_else(|| self.error(GgufError::MissingKey(key.into()))),
            Some(v @ (Value::F32(_) | Value::F64(_))) => Ok(v.as_f64().expect("float")),
            Some(v) => Err(self.wrong(key, "a float", v)),
        }
    }

    /// Bool field `key`, else `default`.
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// String field `key`, if present.
    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// String-array field `key`, if present.
    pub fn strings(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::String(s))) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// Float-array field `key` (f32, or f64 rounded), if present.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(a)) => a
                .to_f32s()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an array of floats", v)),
            Some(v) => Err(self.wrong(key, "an array of floats", v)),
        }
    }

    /// Integer-array field `key` (any width, each element fitting i64), if present.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(a)) => a
                .to_i64s()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an array of integers", v)),
            Some(v) => Err(self.wrong(key, "an array of integers", v)),
        }
    }

    /// The entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name` as a 2-D [`Tensor`] sharing the file's bytes: dims
    /// (cols, rows) or (cols,) for a vector. Checks its shape against `expected`
    /// (GGUF order, innermost first).
    pub fn tensor(&self, name: &str, expected: &[u64]) -> std::result::Result<Tensor, GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let squeezed: Vec<u64> = {
            let mut d = info.dims.clone();
            while d.len() > expected.len() && d.last() == Some(&1) {
                d.pop();
            }
            d
        };
        if squeezed != expected {
            return Err(GgufError::WrongShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.dims.clone(),
            });
        }
        let dtype = info
            .dtype
            .map_err(|(_, ty)| GgufError::UnsupportedTensorType {
                name: name.to_string(),
                ty,
            })?;
        let cols = expected[0] as usize;
        let rows = expected.get(1).copied().unwrap_or(1) as usize;
        let start = (self.data_offset + info.offset) as usize;
        let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = self.bytes.clone();
        Ok(Tensor::from_shared(
            dtype,
            rows,
            cols,
            bytes,
            start..start + info.size as usize,
        ))
    }
}
