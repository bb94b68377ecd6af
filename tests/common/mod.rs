//! Shared test helpers: finding the adapter and the model files, seeded
//! random data, running one dispatch.
//!
//! Without an adapter or model files a test prints why it was skipped and
//! passes, except under CI (`CI=true`), where it fails.
#![allow(dead_code)]

use std::path::PathBuf;

use kvgpu::{Gpu, Model, Tokenizer};

/// `run stories260K.bin -z tok512.bin -t 0.0` (../shared/models/README.md).
pub const GREEDY: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"
Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"
Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her mom said, \"Don't worry, Lily. We can help you.";

/// `run stories260K.bin -z tok512.bin -t 0 -i "Zoo" -n 60`.
pub const ZOO: &str = "Zoo was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but she didn't want to play with";

/// Says why a test was skipped (a failure under `CI=true`).
pub fn skip(why: String) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// The device this test binary's tests share (a clone of one `Gpu`, so
/// each kernel compiles once per binary, not once per test), or `None`
/// (test skipped) when there is no adapter. A test that destroys its
/// device, installs handlers on it or counts what is created on it takes
/// [`own_gpu`].
pub fn gpu() -> Option<Gpu> {
    static SHARED: std::sync::OnceLock<Result<Gpu, String>> = std::sync::OnceLock::new();
    match SHARED.get_or_init(|| Gpu::new(None).map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu.clone()),
        Err(e) => no_adapter(e),
    }
}

/// A device of its own on the environment's adapter, or `None` (test
/// skipped) when there is none.
pub fn own_gpu() -> Option<Gpu> {
    match Gpu::new(None) {
        Ok(gpu) => Some(gpu),
        Err(e) => no_adapter(&e.to_string()),
    }
}

/// Skips the test: there is no adapter (`why`).
fn no_adapter(why: &str) -> Option<Gpu> {
    skip(format!(
        "no GPU adapter ({why}); install mesa-vulkan-drivers for lavapipe"
    ));
    None
}

/// A device with exactly `limits` on the environment's adapter (chosen as
/// [`Gpu::new`] does: `WGPU_BACKEND`, else Vulkan/Metal/DX12), or `None`
/// (test skipped) when there is none.
pub fn gpu_with_limits(limits: wgpu::Limits) -> Option<Gpu> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    let adapter = match pollster::block_on(instance.request_adapter(&Default::default())) {
        Ok(a) => a,
        Err(e) => return no_adapter(&e.to_string()),
    };
    let descriptor = wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
        .expect("the adapter offers at least these limits");
    Some(Gpu::from_device(device, queue))
}

/// How to get each test model file.
pub fn how_to_get(name: &str) -> &'static str {
    match name {
        "stories260K.bin" | "tok512.bin" => {
            "`kvgpu run` downloads it to the user cache folder (cargo run --features cli -- run -n 1), \
             or set KVGPU_MODELS to a folder holding it (this project's CI: ../shared/models)"
        }
        "stories260K.gguf" => {
            "make it with `kvgpu quantize -m stories260K.bin --type f32 -o stories260K.gguf` \
             in the folder KVGPU_MODELS names"
        }
        "stories260K-f16.gguf" => {
            "make it with `kvgpu quantize -m stories260K.bin --type f16 -o stories260K-f16.gguf` \
             in the folder KVGPU_MODELS names"
        }
        "gemma-3-270m-q4_k_m.gguf" | "gemma-3-270m-f16.gguf" => {
            "scripts/fetch-gemma3.sh fetches it (and makes the F16 conversion) into the user cache folder"
        }
        _ => "see ../shared/models/README.md",
    }
}

/// The test model file `name`, found as every kvgpu tool finds it
/// (`$KVGPU_MODELS`, then the user cache folder), or `None` (test skipped,
/// saying which file and how to get it).
pub fn model_file(name: &str) -> Option<PathBuf> {
    match kvgpu::files::find(name) {
        Ok(path) => Some(path),
        Err(e) => {
            skip(format!("{e}. To get it: {}", how_to_get(name)));
            None
        }
    }
}

/// The folder holding stories260K.bin and tok512.bin, or `None` (test skipped).
pub fn models_dir() -> Option<PathBuf> {
    let model = model_file("stories260K.bin")?;
    let dir = model.parent()?.to_path_buf();
    if !dir.join("tok512.bin").is_file() {
        skip(format!("tok512.bin is not beside {}", model.display()));
        return None;
    }
    Some(dir)
}

/// stories260K and its tokenizer, or `None` (test skipped).
pub fn stories() -> Option<(Model, Tokenizer)> {
    let dir = models_dir()?;
    let model = Model::load_llama2c(dir.join("stories260K.bin")).expect("stories260K.bin loads");
    let tok =
        Tokenizer::load(dir.join("tok512.bin"), model.config.vocab_size).expect("tok512.bin loads");
    Some((model, tok))
}

/// Unwraps an `Option` or returns from the test (which was reported skipped).
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// A tiny random Llama with grouped-query attention (for tests that need no real weights).
pub fn tiny_model(seq_len: usize) -> Model {
    let config = kvgpu::Config {
        dim: 48,
        hidden_dim: 72,
        n_layers: 2,
        n_heads: 6,
        n_kv_heads: 2,
        head_size: 8,
        vocab_size: 300,
        seq_len,
        shared_classifier: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_theta_window: 10000.0,
        sliding_window: 0,
        rope_dim: 8,
        rope_freq_factors: None,
        family: kvgpu::arch::Family::llama(),
    };
    Model::random(config, 7).expect("valid config")
}

/// Seeded uniform values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = kvgpu::rng::XorShift::new(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

/// A fresh scratch folder for one test (unique per call).
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kvgpu-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Largest |a - b| over two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A llama2.c tokenizer file for [`tiny_model`]'s 300 tokens: `<unk>`,
/// `<s>`, `</s>`, the 256 byte tokens, then 41 pieces (space, letters,
/// digits, punctuation) with made-up merge scores.
pub fn tiny_tokenizer_file(dir: &std::path::Path) -> PathBuf {
    let mut pieces: Vec<String> = vec!["<unk>".into(), "\n<s>\n".into(), "\n</s>\n".into()];
    pieces.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    pieces.extend([" "].iter().map(|s| s.to_string()));
    pieces.extend(('a'..='z').map(String::from));
    pieces.extend(('0'..='9').map(String::from));
    pieces.extend([".", ",", "!", "?"].iter().map(|s| s.to_string()));
    assert_eq!(pieces.len(), 300);
    let mut bytes = 8i32.to_le_bytes().to_vec();
    for (i, p) in pieces.iter().enumerate() {
        bytes.extend((-(i as f32) / 10.0).to_le_bytes());
        bytes.extend((p.len() as i32).to_le_bytes());
        bytes.extend(p.as_bytes());
    }
    let path = dir.join("tiny_tok.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// [`tiny_model`] and its tokenizer as GGUF bytes with `dtype` matrices.
pub fn tiny_gguf(dtype: kvgpu::DType) -> Vec<u8> {
    let dir = scratch(&format!("tiny_gguf_{dtype:?}"));
    let tok = Tokenizer::load(tiny_tokenizer_file(&dir), 300).unwrap();
    tiny_model(16).to_gguf(&tok, dtype).unwrap()
}

/// Varied strings: ASCII words, punctuation, emoji, CJK, and random Unicode
/// scalar values (which the vocabulary mostly lacks: byte fallback).
pub fn varied_strings(n: usize, seed: u64) -> Vec<String> {
    const POOL: &[&str] = &[
        "a",
        "the",
        " ",
        "  ",
        "Lily",
        "Once upon a time",
        ",",
        ".",
        "!",
        "\"",
        "'",
        "\n",
        "\t",
        "0",
        "42",
        "é",
        "ñ",
        "ß",
        "Ω",
        "ж",
        "日本語",
        "한",
        "🦀",
        "😀",
        "👍🏽",
        "\u{200d}",
        "\u{fffd}",
        "\u{7f}",
        "\u{1}",
        "<0x41>",
        "<s>",
        "don't",
        "I'm",
        "  \n ",
    ];
    let mut rng = kvgpu::rng::XorShift::new(seed);
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                let len = 1 + rng.next_u32() % 8;
                (0..len)
                    .filter_map(|_| char::from_u32(rng.next_u32() % 0x3_0000))
                    .collect()
            } else {
                let len = 1 + rng.next_u32() % 10;
                (0..len)
                    .map(|_| POOL[rng.next_u32() as usize % POOL.len()])
                    .collect()
            }
        })
        .collect()
}
