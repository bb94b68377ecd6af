//! GGUF reader (versions 2 and 3), written for hostile input: every count and
//! length read from the file is checked against the bytes that remain before
//! anything is allocated for it, all size arithmetic is checked, and tensors
//! must be aligned, in bounds, distinct and non-overlapping.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; metadata as (string key, u32 type, value); tensor infos as
//! (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset);
//! padding to `general.alignment` (default 32); the data section. Strings are
//! a u64 length and UTF-8 bytes. Dimension 0 is the innermost (row length).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// What is wrong with a GGUF file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The first 4 bytes are not `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// Versions 2 and 3 are read.
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The file ends inside something.
    #[error("file cut short: {what} needs {needed} bytes, {remaining} remain")]
    CutShort {
        /// What was being read.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A count cannot fit in the bytes that remain.
    #[error("{what} count {count} cannot fit in the {remaining} bytes that remain")]
    CountTooLarge {
        /// What is counted.
        what: String,
        /// The count read.
        count: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A metadata value type id that GGUF does not define.
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    /// Arrays of arrays are not read.
    #[error("nested array in metadata key {0:?}")]
    NestedArray(String),
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(String),
    /// A metadata key appears twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A known key holds a value of the wrong type.
    #[error("metadata key {key:?} should be {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// The type expected.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A required metadata key is missing.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// `general.alignment` is 0 or not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// A tensor has 0 or more than 4 dimensions.
    #[error("tensor {name:?} has {n_dims} dimensions (1 to 4 are allowed)")]
    BadDimensionCount {
        /// Tensor name.
        name: String,
        /// Dimensions read.
        n_dims: u32,
    },
    /// A tensor has a zero dimension.
    #[error("tensor {0:?} has a zero dimension")]
    ZeroDimension(String),
    /// A tensor's element or byte count overflows.
    #[error("tensor {0:?}: element count overflows")]
    ElementCountOverflow(String),
    /// A tensor type id GGML does not define.
    #[error("tensor {name:?} has unknown type id {id}")]
    UnknownTensorType {
        /// Tensor name.
        name: String,
        /// The type id.
        id: u32,
    },
    /// A tensor type GGML defines but kvgpu does not compute with.
    #[error("tensor {name:?} has type {ty}, which kvgpu does not support (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K are)")]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// GGML's name for the type.
        ty: &'static str,
    },
    /// A row length is not a whole number of the type's blocks.
    #[error("tensor {name:?}: row length {cols} is not a multiple of the {ty} block size")]
    PartialBlock {
        /// Tensor name.
        name: String,
        /// Row length.
        cols: u64,
        /// Type name.
        ty: &'static str,
    },
    /// A tensor's data is not at a multiple of the alignment.
    #[error("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// Tensor name.
        name: String,
        /// Offset in the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data runs past the end of the file.
    #[error("tensor {name:?} (bytes {offset}..{end} of the data section) runs past its end ({data_len} bytes)")]
    OutOfBounds {
        /// Tensor name.
        name: String,
        /// Start in the data section.
        offset: u64,
        /// End in the data section.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors {0:?} and {1:?} overlap")]
    Overlap(String, String),
    /// Two tensors have the same name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor the model needs is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor has the wrong shape for the model.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Shape expected (GGUF order: innermost first).
        expected: Vec<u64>,
        /// Shape found.
        found: Vec<u64>,
    },
    /// The model architecture is not Llama.
    #[error("unsupported architecture {0:?} (kvgpu runs \"llama\")")]
    UnsupportedArchitecture(String),
    /// A hyper-parameter or tokenizer field is out of range.
    #[error("{key}: {reason}")]
    BadValue {
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
    /// Homogeneous array (never of arrays).
    Array(Array),
}

/// A metadata array, stored by element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// Integers of any width, widened.
    Int(Vec<i64>),
    /// Unsigned 64-bit integers (kept apart: they may not fit i64).
    U64(Vec<u64>),
    /// f32 or f64, widened.
    Float(Vec<f64>),
    /// bools
    Bool(Vec<bool>),
    /// strings
    String(Vec<String>),
}

impl Value {
    /// The GGUF type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Array(Array::Int(_)) => "array of integers",
            Value::Array(Array::U64(_)) => "array of u64",
            Value::Array(Array::Float(_)) => "array of floats",
            Value::Array(Array::Bool(_)) => "array of bools",
            Value::Array(Array::String(_)) => "array of strings",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

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

    /// Smallest encoded size of a value of type `ty` (for count checks).
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, key: &str, ty: u32) -> Parse<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                let elem = self.u32(key)?;
                if elem == 9 {
                    return self.fail(GgufError::NestedArray(key.to_string()));
                }
                if elem > 12 {
                    return self.fail(GgufError::UnknownValueType(elem));
                }
                let n = self.count(&format!("array {key:?}"), Self::min_size(elem))?;
                // Capacity is bounded by the bytes that remain (checked by `count`).
                let n = n as usize;
                Value::Array(match elem {
                    8 => Array::String((0..n).map(|_| self.string(key)).collect::<Parse<_>>()?),
                    7 => Array::Bool(
                        (0..n)
                            .map(|_| Ok(self.array::<1>(key)?[0] != 0))
                            .collect::<Parse<_>>()?,
                    ),
                    10 => Array::U64((0..n).map(|_| self.u64(key)).collect::<Parse<_>>()?),
                    6 | 12 => Array::Float(
                        (0..n)
                            .map(|_| Ok(self.value(key, elem)?.as_f64().expect("float")))
                            .collect::<Parse<_>>()?,
                    ),
                    _ => Array::Int(
                        (0..n)
                            .map(|_| {
                                Ok(match self.value(key, elem)? {
                                    Value::U8(v) => v as i64,
                                    Value::I8(v) => v as i64,
                                    Value::U16(v) => v as i64,
                                    Value::I16(v) => v as i64,
                                    Value::U32(v) => v as i64,
                                    Value::I32(v) => v as i64,
                                    Value::I64(v) => v,
                                    _ => unreachable!("integer element types"),
                                })
                            })
                            .collect::<Parse<_>>()?,
                    ),
                })
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return self.fail(GgufError::UnknownValueType(other)),
        })
    }
}

/// GGML type ids, with (block length, block bytes) for every type GGML
/// defines (so the sizes of tensors kvgpu cannot use are still checked).
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64, Option<DType>)> {
    Some(match id {
        0 => ("F32", 1, 4, Some(DType::F32)),
        1 => ("F16", 1, 2, Some(DType::F16)),
        2 => ("Q4_0", 32, 18, Some(DType::Q4_0)),
        3 => ("Q4_1", 32, 20, None),
        6 => ("Q5_0", 32, 22, None),
        7 => ("Q5_1", 32, 24, None),
        8 => ("Q8_0", 32, 34, Some(DType::Q8_0)),
        9 => ("Q8_1", 32, 36, None),
        10 => ("Q2_K", 256, 84, None),
        11 => ("Q3_K", 256, 110, None),
        12 => ("Q4_K", 256, 144, Some(DType::Q4_K)),
        13 => ("Q5_K", 256, 176, None),
        14 => ("Q6_K", 256, 210, Some(DType::Q6_K)),
        15 => ("Q8_K", 256, 292, None),
        24 => ("I8", 1, 1, None),
        25 => ("I16", 1, 2, None),
        26 => ("I32", 1, 4, None),
        27 => ("I64", 1, 8, None),
        28 => ("F64", 1, 8, None),
        30 => ("BF16", 1, 2, Some(DType::BF16)),
        _ => return None,
    })
}

/// The GGML type id of `dtype` (for writers).
pub fn ggml_type_id(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 8,
        DType::Q4_K => 12,
        DType::Q6_K => 14,
        DType::BF16 => 30,
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
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
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
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
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
            let Some((ty, block_len, block_bytes, dtype)) = ggml_type(id) else {
                return Err((at, GgufError::UnknownTensorType { name, id }));
            };
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

    /// Float-array field `key`, if present.
    pub fn floats(&self, key: &str) -> Result<Option<&[f64]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::Float(s))) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "an array of floats", v)),
        }
    }

    /// Integer-array field `key`, if present.
    pub fn ints(&self, key: &str) -> Result<Option<&[i64]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::Int(s))) => Ok(Some(s)),
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

/// A Llama model and its tokenizer as a GGUF v3 file, with every matrix
/// converted to `dtype` (rows that are not whole `dtype` blocks stay F16;
/// norm vectors stay F32). What `examples/quantize.rs` writes.
pub fn write_model(
    model: &crate::Model,
    tokenizer: &crate::Tokenizer,
    dtype: DType,
) -> Result<Vec<u8>> {
    let c = &model.config;
    let u = |v: usize| Value::U32(v as u32);
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("general.alignment".into(), Value::U32(32)),
        ("llama.context_length".into(), u(c.seq_len)),
        ("llama.embedding_length".into(), u(c.dim)),
        ("llama.block_count".into(), u(c.n_layers)),
        ("llama.feed_forward_length".into(), u(c.hidden_dim)),
        ("llama.attention.head_count".into(), u(c.n_heads)),
        ("llama.attention.head_count_kv".into(), u(c.n_kv_heads)),
        ("llama.rope.dimension_count".into(), u(c.rope_dim)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.norm_eps),
        ),
        ("llama.rope.freq_base".into(), Value::F32(c.rope_theta)),
    ];
    metadata.extend(tokenizer.gguf_metadata().ok_or_else(|| {
        Error::Tokenizer("only SentencePiece vocabularies can be written to GGUF".into())
    })?);
    let w = model.weights.convert(dtype);
    let mut named: Vec<(String, &Tensor)> = vec![("token_embd.weight".into(), &w.token_embedding)];
    for (i, l) in w.layers.iter().enumerate() {
        for (name, t) in [
            ("attn_norm", &l.rms_att),
            ("attn_q", &l.wq),
            ("attn_k", &l.wk),
            ("attn_v", &l.wv),
            ("attn_output", &l.wo),
            ("ffn_norm", &l.rms_ffn),
            ("ffn_gate", &l.w1),
            ("ffn_down", &l.w2),
            ("ffn_up", &l.w3),
        ] {
            named.push((format!("blk.{i}.{name}.weight"), t));
        }
    }
    named.push(("output_norm.weight".into(), &w.rms_final));
    if let Some(cls) = &w.wcls {
        named.push(("output.weight".into(), cls));
    }
    let tensors: Vec<(String, Vec<u64>, DType, &[u8])> = named
        .iter()
        .map(|(name, t)| {
            let dims = if t.rows == 1 {
                vec![t.cols as u64]
            } else {
                vec![t.cols as u64, t.rows as u64]
            };
            (name.clone(), dims, t.dtype, t.bytes())
        })
        .collect();
    Ok(write(&metadata, &tensors, 32))
}

/// Writes a GGUF v3 file: `metadata` then `tensors` as (name, dims innermost
/// first, type, bytes). Used by the quantize example and by tests.
pub fn write(
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<u64>, DType, &[u8])],
    alignment: u64,
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    for (key, value) in metadata {
        string(&mut out, key);
        write_value(&mut out, value, true);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, dtype, bytes) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ggml_type_id(*dtype).to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + bytes.len() as u64).next_multiple_of(alignment);
    }
    let data_start = (out.len() as u64).next_multiple_of(alignment) as usize;
    for ((_, _, _, bytes), offset) in tensors.iter().zip(offsets) {
        out.resize(data_start + offset as usize, 0);
        out.extend(*bytes);
    }
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value, with_type: bool) {
    let ty = |t: u32, out: &mut Vec<u8>| {
        if with_type {
            out.extend(t.to_le_bytes());
        }
    };
    match value {
        Value::U8(v) => {
            ty(0, out);
            out.push(*v)
        }
        Value::I8(v) => {
            ty(1, out);
            out.push(*v as u8)
        }
        Value::U16(v) => {
            ty(2, out);
            out.extend(v.to_le_bytes())
        }
        Value::I16(v) => {
            ty(3, out);
            out.extend(v.to_le_bytes())
        }
        Value::U32(v) => {
            ty(4, out);
            out.extend(v.to_le_bytes())
        }
        Value::I32(v) => {
            ty(5, out);
            out.extend(v.to_le_bytes())
        }
        Value::F32(v) => {
            ty(6, out);
            out.extend(v.to_le_bytes())
        }
        Value::Bool(v) => {
            ty(7, out);
            out.push(*v as u8)
        }
        Value::String(s) => {
            ty(8, out);
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Value::U64(v) => {
            ty(10, out);
            out.extend(v.to_le_bytes())
        }
        Value::I64(v) => {
            ty(11, out);
            out.extend(v.to_le_bytes())
        }
        Value::F64(v) => {
            ty(12, out);
            out.extend(v.to_le_bytes())
        }
        Value::Array(a) => {
            ty(9, out);
            let (elem, n) = match a {
                Array::Int(v) => (5u32, v.len()),
                Array::U64(v) => (10, v.len()),
                Array::Float(v) => (6, v.len()),
                Array::Bool(v) => (7, v.len()),
                Array::String(v) => (8, v.len()),
            };
            out.extend(elem.to_le_bytes());
            out.extend((n as u64).to_le_bytes());
            match a {
                Array::Int(v) => v.iter().for_each(|x| out.extend((*x as i32).to_le_bytes())),
                Array::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::Float(v) => v.iter().for_each(|x| out.extend((*x as f32).to_le_bytes())),
                Array::Bool(v) => v.iter().for_each(|x| out.push(*x as u8)),
                Array::String(v) => v.iter().for_each(|s| {
                    out.extend((s.len() as u64).to_le_bytes());
                    out.extend(s.as_bytes());
                }),
            }
        }
    }
}
