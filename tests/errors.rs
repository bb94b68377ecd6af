//! Bad input gives a typed error and leaves the session usable. One test per case.
//! Checkpoints here are written from a small random model, so these tests
//! need no model files; session cases need an adapter.

mod common;

use std::path::PathBuf;

use kvgpu::{generate, Error, GpuModel, Model, Sampler, Session, Tokenizer};

/// A valid checkpoint written to a scratch folder, with its bytes.
fn checkpoint(name: &str) -> (PathBuf, Vec<u8>) {
    let dir = common::scratch(name);
    let path = dir.join("model.bin");
    common::tiny_model(16).save_llama2c(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// The checkpoint with header field `field` (0..7) set to `value`.
fn with_header(name: &str, field: usize, value: i32) -> PathBuf {
    let (path, mut bytes) = checkpoint(name);
    bytes[field * 4..field * 4 + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn valid_checkpoint_round_trips() {
    let (path, _) = checkpoint("roundtrip");
    let m = Model::load_llama2c(&path).unwrap();
    let orig = common::tiny_model(16);
    assert_eq!(m.config, orig.config);
    assert_eq!(
        m.weights.layers[1].w2.to_f32(),
        orig.weights.layers[1].w2.to_f32()
    );
    assert_eq!(
        m.weights.wcls.unwrap().to_f32(),
        orig.weights.wcls.unwrap().to_f32()
    );
}

#[test]
fn missing_file() {
    let err = Model::load_llama2c("/nonexistent/model.bin").unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path.ends_with("model.bin")),
        "{err}"
    );
}

#[test]
fn truncated_checkpoint() {
    let (path, bytes) = checkpoint("truncated");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = Model::load_llama2c(&path).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointSize { expected, found, .. } if found + 1 == expected),
        "{err}"
    );
    assert!(err.to_string().contains("cut short"), "{err}");
    // Shorter than the header.
    std::fs::write(&path, &bytes[..10]).unwrap();
    assert!(matches!(
        Model::load_llama2c(&path),
        Err(Error::CheckpointSize { found: 10, .. })
    ));
}

#[test]
fn over_long_checkpoint() {
    let (path, mut bytes) = checkpoint("overlong");
    bytes.extend([0u8; 4]);
    std::fs::write(&path, &bytes).unwrap();
    let err = Model::load_llama2c(&path).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointSize { expected, found, .. } if found == expected + 4),
        "{err}"
    );
    assert!(err.to_string().contains("trailing"), "{err}");
}

#[test]
fn zero_head_count() {
    let err = Model::load_llama2c(with_header("zero_heads", 3, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "n_heads",
                value: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = Model::load_llama2c(with_header("zero_kv_heads", 4, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "n_kv_heads",
                value: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn non_dividing_head_counts() {
    // 6 heads over 4 KV heads.
    let err = Model::load_llama2c(with_header("kv_not_dividing", 4, 4)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "n_kv_heads",
                value: 4,
                ..
            }
        ),
        "{err}"
    );
    // dim 48 over 7 heads.
    let err = Model::load_llama2c(with_header("heads_not_dividing", 3, 7)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "n_heads",
                value: 7,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn negative_sizes() {
    for (field, name) in [
        (0, "dim"),
        (1, "hidden_dim"),
        (2, "n_layers"),
        (6, "seq_len"),
    ] {
        let err =
            Model::load_llama2c(with_header(&format!("negative_{name}"), field, -5)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { field: f, value: -5, .. } if f == name),
            "{err}"
        );
    }
    // vocab_size may be negative (separate classifier) but not i32::MIN.
    let err = Model::load_llama2c(with_header("vocab_min", 5, i32::MIN)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "vocab_size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn huge_sizes_do_not_overflow_or_allocate() {
    let (path, mut bytes) = checkpoint("huge");
    for field in [0usize, 1, 5, 6] {
        bytes[field * 4..field * 4 + 4].copy_from_slice(&(i32::MAX - 1).to_le_bytes());
    }
    bytes[12..16].copy_from_slice(&2i32.to_le_bytes()); // n_heads
    bytes[16..20].copy_from_slice(&2i32.to_le_bytes()); // n_kv_heads
    std::fs::write(&path, &bytes).unwrap();
    let err = Model::load_llama2c(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CheckpointSize { .. } | Error::InvalidConfig { .. }
        ),
        "{err}"
    );
}

fn tokenizer_file(name: &str, cut: usize) -> PathBuf {
    // 3 tokens: "a", "b", "ab" with max length 2.
    let mut bytes = 2i32.to_le_bytes().to_vec();
    for (score, piece) in [(0.0f32, "a"), (0.0, "b"), (1.0, "ab")] {
        bytes.extend(score.to_le_bytes());
        bytes.extend((piece.len() as i32).to_le_bytes());
        bytes.extend(piece.as_bytes());
    }
    bytes.truncate(bytes.len() - cut);
    let path = common::scratch(name).join("tok.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn tokenizer_file_cut_short() {
    assert_eq!(
        Tokenizer::load(tokenizer_file("tok_ok", 0), 3)
            .unwrap()
            .vocab_size(),
        3
    );
    for cut in [1, 2, 5, 20, 28] {
        let err = Tokenizer::load(tokenizer_file(&format!("tok_cut{cut}"), cut), 3).unwrap_err();
        assert!(matches!(err, Error::TokenizerFormat { .. }), "{err}");
        assert!(err.to_string().contains("cut short"), "cut {cut}: {err}");
    }
    // Asking for more tokens than the file holds is the same error.
    assert!(matches!(
        Tokenizer::load(tokenizer_file("tok_more", 0), 4),
        Err(Error::TokenizerFormat { .. })
    ));
    // A negative token length.
    let path = tokenizer_file("tok_neg", 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(-3i32).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = Tokenizer::load(&path, 3).unwrap_err();
    assert!(
        matches!(err, Error::TokenizerFormat { offset: 8, .. }),
        "{err}"
    );
}

/// A session on a tiny random model with a 16-position cache.
fn tiny_session() -> Option<Session> {
    let gpu = common::gpu()?;
    let model = common::tiny_model(16);
    Some(Session::new(&GpuModel::new(&gpu, &model).unwrap(), None).unwrap())
}

#[test]
fn token_id_out_of_range() {
    let mut s = require!(tiny_session());
    s.forward(5).unwrap();
    let err = s.forward(300).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 300,
                vocab_size: 300
            }
        ),
        "{err}"
    );
    assert!(matches!(
        s.forward_greedy(u32::MAX),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        s.feed(&[4, 1000]),
        Err(Error::TokenOutOfRange { token: 1000, .. })
    ));
    assert!(matches!(
        s.prefill(&[4, 5, 300]),
        Err(Error::TokenOutOfRange { token: 300, .. })
    ));
    assert!(matches!(s.prefill(&[]), Err(Error::EmptyInput)));
    assert_eq!(s.len(), 1, "failed steps must not advance the cache");
    // Still usable: the next step is position 1, same as if the errors never happened.
    let a = s.forward(7).unwrap().to_vec();
    s.truncate(1).unwrap();
    assert_eq!(s.forward(7).unwrap(), &a[..]);
}

#[test]
fn prompt_longer_than_capacity() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = Session::new(&GpuModel::new(&gpu, &model).unwrap(), Some(8)).unwrap();
    let long = "Once upon a time there was a big dog who liked to run in the park";
    let err = generate(&mut s, &tok, &mut Sampler::greedy(), long, 8, |_| {}).unwrap_err();
    assert!(
        matches!(err, Error::PromptTooLong { capacity: 8, .. }),
        "{err}"
    );
    assert!(s.is_empty(), "nothing decoded");
    let run = generate(&mut s, &tok, &mut Sampler::greedy(), "Zoo", 8, |_| {}).unwrap();
    assert_eq!(run.positions, 8);
}

#[test]
fn step_past_capacity_is_context_full() {
    let mut s = require!(tiny_session());
    s.feed(&[0, 1, 2, 3]).unwrap();
    // A prompt longer than the room left is refused whole.
    let err = s.prefill(&[5; 13]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                tokens: 13,
                capacity: 12
            }
        ),
        "{err}"
    );
    assert_eq!(s.len(), 4);
    s.feed(&(4..16).collect::<Vec<u32>>()).unwrap();
    let err = s.forward(3).unwrap_err();
    assert!(matches!(err, Error::ContextFull { capacity: 16 }), "{err}");
    assert!(matches!(s.feed(&[3]), Err(Error::ContextFull { .. })));
    assert_eq!(s.len(), 16, "no wrap-around");
    // Rolling back makes room again; the last slot decodes as before.
    s.truncate(15).unwrap();
    let a = s.forward(15).unwrap().to_vec();
    s.truncate(15).unwrap();
    assert_eq!(s.forward(15).unwrap(), &a[..]);
}

#[test]
fn bad_sampler_settings() {
    assert!(matches!(
        Sampler::new(-1.0, 0.9, 1),
        Err(Error::InvalidSampler(_))
    ));
    assert!(matches!(
        Sampler::new(f32::NAN, 0.9, 1),
        Err(Error::InvalidSampler(_))
    ));
    assert!(matches!(
        Sampler::new(1.0, f32::INFINITY, 1),
        Err(Error::InvalidSampler(_))
    ));
}

#[test]
fn bad_capacity() {
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &common::tiny_model(16)).unwrap();
    assert!(matches!(
        Session::new(&gm, Some(17)),
        Err(Error::InvalidCapacity {
            requested: 17,
            max: 16
        })
    ));
    assert!(kvgpu::cpu::CpuSession::new(&common::tiny_model(16), Some(0)).is_err());
}

#[test]
fn model_too_large_for_the_device() {
    // (A model whose rows do not fit one binding; larger tensors are split, see tests/kernels.rs.)
    require!(common::gpu());
    // A device whose weight textures (2 x 2 texels of 16 bytes) are smaller than
    // one row of the tiny model (48 f32 = 192 bytes).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let limits = wgpu::Limits {
        max_texture_dimension_2d: 2,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let gpu = kvgpu::Gpu::from_device(device, queue);
    let err = GpuModel::new(&gpu, &common::tiny_model(16)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ModelTooLarge {
                needed: 192,
                limit: 64,
                ..
            }
        ),
        "{err}"
    );
}
