//! Hostile GGUF files, one test each: every one ends in a typed error with
//! context, no panic, and no allocation larger than the file.
//!
//! Files are built byte by byte ([`File`]) or by corrupting a valid model
//! written by `kvgpu::gguf::write_model`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kvgpu::gguf::{Gguf, GgufError};
use kvgpu::{DType, Error, Model, Tokenizer};

/// Records the largest single allocation made on each thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Parses `bytes` (and, if that works, reads a model and tokenizer from it),
/// checking that no allocation exceeds 4x the file plus 4 KiB; returns the
/// first error.
fn load(bytes: Vec<u8>) -> Error {
    let len = bytes.len();
    LARGEST.with(|l| l.set(0));
    let result = Gguf::from_vec(bytes).and_then(|g| {
        Model::from_gguf(&g)?;
        Tokenizer::from_gguf(&g)?;
        Ok(())
    });
    let largest = LARGEST.with(|l| l.get());
    // The file itself is one allocation of `len` bytes, made before parsing.
    assert!(
        largest <= 4 * len + 4096,
        "allocated {largest} bytes for a {len}-byte file"
    );
    result.expect_err("hostile file must be rejected")
}

fn kind(e: Error) -> GgufError {
    match e {
        Error::Gguf { kind, .. } => kind,
        other => panic!("expected a GGUF error, got {other}"),
    }
}

/// A GGUF file assembled from parts, any of which a test can make wrong.
struct File {
    magic: [u8; 4],
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Vec<u8>>,
    tensors: Vec<Vec<u8>>,
    alignment: usize,
    data: Vec<u8>,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = string(key);
    b.extend(ty.to_le_bytes());
    b.extend(payload);
    b
}

fn tensor(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name);
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b
}

impl File {
    fn new() -> Self {
        File {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![kv("general.architecture", 8, &string("llama"))],
            tensors: vec![tensor("a", &[8], 0, 0), tensor("b", &[4, 2], 1, 32)],
            alignment: 32,
            data: vec![0; 64],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(
            self.n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend(self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        self.kvs.iter().for_each(|k| b.extend(k));
        self.tensors.iter().for_each(|t| b.extend(t));
        b.resize(b.len().next_multiple_of(self.alignment.max(1)), 0);
        b.extend(&self.data);
        b
    }

    fn parse(&self) -> Result<Gguf, Error> {
        Gguf::from_vec(self.bytes())
    }

    fn error(&self) -> GgufError {
        kind(self.parse().expect_err("must be rejected"))
    }
}

#[test]
fn the_base_file_is_valid() {
    let g = File::new().parse().unwrap();
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.tensor_info("b").unwrap().size, 16);
}

#[test]
fn bad_magic() {
    let f = File {
        magic: *b"GGML",
        ..File::new()
    };
    assert_eq!(f.error(), GgufError::BadMagic(*b"GGML"));
}

#[test]
fn versions_0_1_and_a_future_one() {
    for v in [0, 1, 4, u32::MAX] {
        let f = File {
            version: v,
            ..File::new()
        };
        assert_eq!(f.error(), GgufError::UnsupportedVersion(v));
    }
    let f = File {
        version: 2,
        ..File::new()
    };
    assert!(f.parse().is_ok(), "version 2 is read");
}

#[test]
fn tensor_count_near_u64_max() {
    let f = File {
        n_tensors: Some(u64::MAX - 1),
        ..File::new()
    };
    assert!(matches!(f.error(), GgufError::CountTooLarge { count, .. } if count == u64::MAX - 1));
    assert!(matches!(
        kind(load(f.bytes())),
        GgufError::CountTooLarge { .. }
    ));
}

#[test]
fn metadata_count_near_u64_max() {
    let f = File {
        n_kv: Some(u64::MAX),
        ..File::new()
    };
    assert!(matches!(
        f.error(),
        GgufError::CountTooLarge {
            count: u64::MAX,
            ..
        }
    ));
    assert!(matches!(
        kind(load(f.bytes())),
        GgufError::CountTooLarge { .. }
    ));
}

#[test]
fn string_length_past_the_end() {
    let mut f = File::new();
    let mut bad = (u64::MAX / 2).to_le_bytes().to_vec();
    bad.extend(b"key");
    f.kvs.push(bad);
    assert!(matches!(f.error(), GgufError::CutShort { .. }));
    assert!(matches!(kind(load(f.bytes())), GgufError::CutShort { .. }));
}

#[test]
fn array_length_past_the_end() {
    let mut f = File::new();
    let mut payload = 4u32.to_le_bytes().to_vec(); // array of u32
    payload.extend((1u64 << 40).to_le_bytes());
    f.kvs.push(kv("big", 9, &payload));
    assert!(matches!(f.error(), GgufError::CountTooLarge { count, .. } if count == 1 << 40));
    assert!(matches!(
        kind(load(f.bytes())),
        GgufError::CountTooLarge { .. }
    ));
}

#[test]
fn arrays_keep_their_element_width() {
    use kvgpu::gguf::{Array, Value};
    // A million u8 elements: a byte each in memory, as in the file (widened
    // to i64 they took 8 MB, 8x the file, past `load`'s bound).
    let mut f = File::new();
    let mut payload = 0u32.to_le_bytes().to_vec(); // array of u8
    payload.extend(1_000_000u64.to_le_bytes());
    payload.extend((0..1_000_000).map(|i| (i % 251) as u8));
    f.kvs.push(kv("bytes", 9, &payload));
    let _ = load(f.bytes());
    // Each element type reads as itself and writes back the same bytes.
    let arrays = [
        (0u32, vec![1u8, 255]),
        (1, vec![0x80, 0x7f]),
        (2, vec![1, 2, 0xff, 0xff]),
        (3, vec![0, 0x80, 1, 0]),
        (4, 0xdead_beef_u32.to_le_bytes().to_vec()),
        (5, (-7i32).to_le_bytes().to_vec()),
        (6, 1.5f32.to_le_bytes().to_vec()),
        (7, vec![1, 0]),
        (10, u64::MAX.to_le_bytes().to_vec()),
        (11, i64::MIN.to_le_bytes().to_vec()),
        (12, 0.1f64.to_le_bytes().to_vec()),
    ];
    for (ty, elements) in arrays {
        let width = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8][ty as usize];
        let mut payload = ty.to_le_bytes().to_vec();
        payload.extend((elements.len() as u64 / width).to_le_bytes());
        payload.extend(&elements);
        let mut f = File::new();
        f.kvs = vec![kv("a", 9, &payload)];
        f.tensors.clear();
        f.data.clear();
        let g = f.parse().unwrap();
        let Value::Array(a) = g.get("a").unwrap() else {
            panic!("an array")
        };
        assert_eq!(a.element_type().id(), ty);
        // The same bytes (the file then pads to its alignment).
        let written = kvgpu::gguf::write(&g.metadata, &[], 32);
        let file = f.bytes();
        assert_eq!(written, file[..written.len()], "type {ty}");
        assert!(file[written.len()..].iter().all(|&b| b == 0));
        if ty == 0 {
            assert_eq!(a, &Array::U8(vec![1, 255]));
        }
    }
}

#[test]
fn nested_arrays() {
    let mut f = File::new();
    let mut payload = 9u32.to_le_bytes().to_vec(); // array of arrays
    payload.extend(1u64.to_le_bytes());
    payload.extend(4u32.to_le_bytes());
    payload.extend(0u64.to_le_bytes());
    f.kvs.push(kv("nested", 9, &payload));
    assert_eq!(f.error(), GgufError::NestedArray("nested".into()));
}

#[test]
fn unknown_metadata_type() {
    let mut f = File::new();
    f.kvs.push(kv("odd", 13, &[0; 8]));
    assert_eq!(f.error(), GgufError::UnknownValueType(13));
}

#[test]
fn duplicate_metadata_key() {
    let mut f = File::new();
    f.kvs.push(kv("general.architecture", 8, &string("llama")));
    assert!(matches!(f.error(), GgufError::DuplicateKey(_)));
}

#[test]
fn known_key_of_the_wrong_type() {
    // In the reader: general.alignment must be u32.
    let mut f = File::new();
    f.kvs.push(kv("general.alignment", 8, &string("32")));
    assert!(
        matches!(f.error(), GgufError::WrongType { ref key, .. } if key == "general.alignment")
    );
    // In the model: a hyper-parameter stored as f32 instead of an integer.
    let e = kind(tiny_model_with(|b| {
        let key = b"llama.context_length";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    }));
    assert!(
        matches!(e, GgufError::WrongType { ref key, expected: "a non-negative integer", found: "f32" } if key == "llama.context_length"),
        "{e}"
    );
}

#[test]
fn zero_or_more_than_four_dimensions() {
    for dims in [vec![], vec![1, 1, 1, 1, 1]] {
        let mut f = File::new();
        f.tensors[0] = tensor("a", &dims, 0, 0);
        assert!(
            matches!(f.error(), GgufError::BadDimensionCount { n_dims, .. } if n_dims as usize == dims.len())
        );
    }
}

#[test]
fn a_zero_dimension() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[4, 0], 1, 32);
    assert_eq!(f.error(), GgufError::ZeroDimension("b".into()));
}

#[test]
fn element_count_overflow() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[1 << 32, 1 << 32, 1 << 32], 0, 32);
    assert_eq!(f.error(), GgufError::ElementCountOverflow("b".into()));
    // Elements fit in u64 but bytes do not.
    f.tensors[1] = tensor("b", &[1 << 31, 1 << 31, 1 << 1], 0, 32);
    assert_eq!(f.error(), GgufError::ElementCountOverflow("b".into()));
}

#[test]
fn unknown_tensor_type() {
    let mut f = File::new();
    f.tensors[0] = tensor("a", &[8], 99, 0);
    assert_eq!(
        f.error(),
        GgufError::UnknownTensorType {
            name: "a".into(),
            id: 99
        }
    );
}

#[test]
fn offset_past_the_end() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[4, 2], 1, 64);
    assert!(
        matches!(f.error(), GgufError::OutOfBounds { ref name, offset: 64, end: 80, data_len: 64, .. } if name == "b")
    );
    f.tensors[1] = tensor("b", &[4, 2], 1, u64::MAX - 31);
    assert!(matches!(f.error(), GgufError::OutOfBounds { .. }));
}

#[test]
fn misaligned_offset() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[4, 2], 1, 33);
    assert_eq!(
        f.error(),
        GgufError::Misaligned {
            name: "b".into(),
            offset: 33,
            alignment: 32
        }
    );
}

#[test]
fn overlapping_tensors() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[4, 2], 1, 0);
    assert_eq!(f.error(), GgufError::Overlap("a".into(), "b".into()));
}

#[test]
fn alignment_zero_or_not_a_power_of_two() {
    for a in [0u32, 3, 48] {
        let mut f = File::new();
        f.kvs.push(kv("general.alignment", 4, &a.to_le_bytes()));
        assert_eq!(f.error(), GgufError::BadAlignment(a as u64));
    }
}

#[test]
fn duplicate_tensor_names() {
    let mut f = File::new();
    f.tensors[1] = tensor("a", &[4, 2], 1, 32);
    assert_eq!(f.error(), GgufError::DuplicateTensor("a".into()));
}

/// The tiny model as GGUF, then parsed back, with `edit` applied to its bytes.
fn tiny_model_with(edit: impl FnOnce(&mut Vec<u8>)) -> Error {
    let mut bytes = common::tiny_gguf(DType::F32);
    edit(&mut bytes);
    load(bytes)
}

/// Renames the first occurrence of `from` in the file to `to` (same length).
fn rename(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("present");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
}

#[test]
fn the_tiny_model_loads() {
    let g = Gguf::from_vec(common::tiny_gguf(DType::Q8_0)).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    assert_eq!(m.config, common::tiny_model(16).config);
    assert_eq!(Tokenizer::from_gguf(&g).unwrap().vocab_size(), 300);
}

#[test]
fn a_required_tensor_missing() {
    let e = kind(tiny_model_with(|b| {
        rename(b, "blk.1.ffn_up.weight", "blk.1.ffn_xx.weight")
    }));
    assert_eq!(e, GgufError::MissingTensor("blk.1.ffn_up.weight".into()));
}

#[test]
fn a_tensor_of_the_wrong_shape() {
    // Swap the roles of a square and a non-square matrix by renaming.
    let e = kind(tiny_model_with(|b| {
        rename(b, "blk.0.attn_q.weight", "blk.0.attn_X.weight");
        rename(b, "blk.0.attn_k.weight", "blk.0.attn_q.weight");
    }));
    assert!(
        matches!(e, GgufError::WrongShape { ref name, ref expected, ref found } if name == "blk.0.attn_q.weight" && expected == &[48, 48] && found == &[48, 16]),
        "{e}"
    );
}

#[test]
fn unsupported_architecture() {
    let mut f = File::new();
    f.kvs[0] = kv("general.architecture", 8, &string("gpt-j"));
    let err = kind(load(f.bytes()));
    assert_eq!(
        err,
        GgufError::UnsupportedArchitecture("gpt-j".into(), kvgpu::arch::Family::names())
    );
    // The message names the file's architecture and every family kvgpu runs.
    assert_eq!(
        err.to_string(),
        "unsupported architecture \"gpt-j\" (kvgpu runs llama, qwen2, qwen3, phi3, gemma3)"
    );
}

#[test]
fn truncation_at_every_byte_of_the_header_and_at_every_tensor() {
    let bytes = common::tiny_gguf(DType::Q4_0);
    let g = Gguf::from_vec(bytes.clone()).unwrap();
    let data_start = g.data_offset as usize;
    // Every cut in the header, metadata and tensor infos, then each tensor's start and middle.
    let mut cuts: Vec<usize> = (0..data_start).collect();
    for t in &g.tensors {
        let start = data_start + t.offset as usize;
        cuts.extend([start, start + t.size as usize / 2]);
    }
    for cut in cuts {
        let e = load(bytes[..cut].to_vec());
        assert!(matches!(e, Error::Gguf { .. }), "cut at {cut}: {e}");
    }
}

#[test]
fn tokenizer_with_a_negative_or_out_of_range_special_id() {
    for (ty, payload, what) in [
        (5u32, (-1i32).to_le_bytes().to_vec(), "negative"),
        (4, 300u32.to_le_bytes().to_vec(), "out of range"),
    ] {
        let mut bytes = common::tiny_gguf(DType::F32);
        // Replace the u32 bos id entry's type and value in place (same size).
        let key = b"tokenizer.ggml.bos_token_id";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        bytes[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&payload);
        let e = kind(load(bytes));
        let ok = match what {
            "negative" => matches!(e, GgufError::WrongType { .. }),
            _ => matches!(e, GgufError::BadValue { .. }),
        };
        assert!(ok, "{what}: {e}");
    }
}

#[test]
fn tensor_type_kvgpu_cannot_run() {
    let mut f = File::new();
    f.tensors[1] = tensor("b", &[256, 1], 16, 32); // IQ2_XXS: valid GGUF, not supported
    f.data = vec![0; 32 + 66];
    let g = f.parse().unwrap();
    let e = g.tensor("b", &[256]).unwrap_err();
    assert_eq!(
        e,
        GgufError::UnsupportedTensorType {
            name: "b".into(),
            ty: "IQ2_XXS"
        }
    );
}

/// Every block type kvgpu reads: two whole rows load; a row that is not a
/// whole number of blocks, and data cut short by one byte, are typed errors.
#[test]
fn block_types_whole_partial_and_truncated() {
    for dtype in kvgpu::DType::ALL.into_iter().filter(|t| t.block_len() > 1) {
        let (id, len, bytes) = (
            dtype.ggml_id(),
            dtype.block_len() as u64,
            dtype.block_bytes(),
        );
        let name = dtype.name();
        let mut f = File::new();
        f.tensors[1] = tensor("b", &[2 * len, 2], id, 32);
        f.data = vec![0; 32 + 4 * bytes];
        let g = f.parse().unwrap();
        let t = g.tensor("b", &[2 * len, 2]).unwrap();
        assert_eq!((t.dtype, t.rows, t.cols), (dtype, 2, 2 * len as usize));
        // A row of one block and a half.
        f.tensors[1] = tensor("b", &[len + len / 2, 2], id, 32);
        assert_eq!(
            f.error(),
            GgufError::PartialBlock {
                name: "b".into(),
                cols: len + len / 2,
                ty: name
            },
            "{name}"
        );
        // The last block one byte short.
        f.tensors[1] = tensor("b", &[2 * len, 2], id, 32);
        f.data.truncate(32 + 4 * bytes - 1);
        assert!(
            matches!(f.error(), GgufError::OutOfBounds { ref name, offset: 32, .. } if name == "b"),
            "{name}: {}",
            f.error()
        );
    }
}

#[test]
fn counts_that_fit_a_sparse_file_reserve_nothing_before_reading() {
    use std::io::Write;
    // 64 GiB, nearly all a hole: a metadata count that fits it (13 bytes an
    // entry) once reserved 56 bytes an entry, 280 GB, and aborted.
    let path = common::scratch("gguf_hostile").join("sparse.gguf");
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend(1000u64.to_le_bytes());
    head.extend(((64u64 << 30) / 13 - 10).to_le_bytes());
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&head).unwrap();
    file.set_len(64 << 30).unwrap();
    drop(file);
    LARGEST.with(|l| l.set(0));
    let Err(err) = Gguf::open(&path) else {
        panic!("zeros are no model")
    };
    let largest = LARGEST.with(Cell::get);
    std::fs::remove_file(&path).unwrap();
    // Its entries are zeros: the second repeats the first's empty key.
    let kind = kind(err);
    assert!(
        matches!(kind, GgufError::DuplicateKey(ref k) if k.is_empty()),
        "{kind}"
    );
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}
