//! GGUF v3 writer: metadata and tensors as raw bytes (the reader's inverse).
//! Used by the quantize tool and by tests that build files with chosen defects.

use super::value::{Array, Value};
use crate::tensor::DType;

/// Writes a GGUF v3 file: `metadata` then `tensors` as (name, dims innermost
/// first, type, bytes), each tensor's data aligned to `alignment`.
pub fn write(
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<u64>, DType, &[u8])],
    alignment: u64,
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend(value.value_type().id().to_le_bytes());
        write_value(&mut out, value);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, dtype, bytes) in tensors {
        write_string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(dtype.ggml_id().to_le_bytes());
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

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A value's bytes, without its type id.
fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend(v.to_le_bytes()),
        Value::I16(v) => out.extend(v.to_le_bytes()),
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => write_string(out, s),
        Value::U64(v) => out.extend(v.to_le_bytes()),
        Value::I64(v) => out.extend(v.to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
        Value::Array(a) => {
            out.extend(a.element_type().id().to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            match a {
                Array::U8(v) => out.extend(v),
                Array::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                Array::Bool(v) => v.iter().for_each(|x| out.push(*x as u8)),
                Array::String(v) => v.iter().for_each(|s| write_string(out, s)),
            }
        }
    }
}
