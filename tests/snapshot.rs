//! Save and restore: a restored session decodes on exactly as the one that
//! was saved (greedy and seeded, every cache type), and every kind of bad
//! file is its own typed error that leaves the session as it was. (The
//! same across processes: tests/cli.rs.)

mod common;

use kvgpu::snapshot::Snapshot;
use kvgpu::{
    generate, generate_tokens, GpuModel, KvDtype, Length, Sampler, Session, SessionOptions,
    SnapshotError,
};

#[test]
fn a_restored_session_goes_on_as_if_it_had_never_stopped() {
    let (model, mut tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    tok.set_end_tokens(Vec::new());
    let dir = common::scratch("snapshot");
    for dtype in KvDtype::ALL {
        for sampler in [Sampler::greedy(), Sampler::new(1.0, 0.9, 42).unwrap()] {
            let options = SessionOptions::default().kv_dtype(dtype);
            let mut whole = Session::with_options(&gm, options).unwrap();
            let all = generate(
                &mut whole,
                &tok,
                &mut sampler.clone(),
                "Zoo",
                Length::NewTokens(120),
                |_| {},
            )
            .unwrap();
            // 60 tokens, saved; a new session restores them and runs 60 more.
            let mut first = Session::with_options(&gm, options).unwrap();
            let mut s1 = sampler.clone();
            let head = generate(
                &mut first,
                &tok,
                &mut s1,
                "Zoo",
                Length::NewTokens(60),
                |_| {},
            )
            .unwrap();
            let len = first.len();
            let path = dir.join(format!("{dtype:?}.kvs"));
            let next = head.all_tokens[len];
            first
                .save(
                    &path,
                    &head.all_tokens[..len],
                    Some(next),
                    Some(&s1),
                    b"extra",
                )
                .unwrap();
            drop(first);
            let mut second = Session::with_options(&gm, options).unwrap();
            let saved = second.restore(&path).unwrap();
            assert_eq!((saved.tokens.len(), saved.next), (len, Some(next)));
            assert_eq!(saved.extra, b"extra");
            let mut s2 = saved.sampler.unwrap();
            let tail = generate_tokens(&mut second, &tok, &mut s2, &[next], 60, |_| {}).unwrap();
            assert_eq!(
                format!("{}{}", head.text, tail.text),
                all.text,
                "{dtype:?}, greedy {}",
                sampler.is_greedy()
            );
        }
    }
}

/// A session with some tokens in it, its logits for the next token, and a
/// valid snapshot of it.
fn setup(name: &str) -> Option<(GpuModel, std::path::PathBuf, Vec<u8>)> {
    let (model, _) = common::stories()?;
    let gpu = common::gpu()?;
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, Some(64)).unwrap();
    s.prefill(&[1, 5, 9, 13]).unwrap();
    let path = common::scratch(name).join("s.kvs");
    s.save(&path, &[1, 5, 9, 13], Some(17), None, &[]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    Some((gm, path, bytes))
}

/// Restores `bytes` into a session holding 3 other tokens, expects
/// `expect`, and checks the session is unchanged.
fn refused(
    gm: &GpuModel,
    path: &std::path::Path,
    bytes: &[u8],
    expect: fn(&SnapshotError) -> bool,
) {
    std::fs::write(path, bytes).unwrap();
    let mut s = Session::new(gm, Some(64)).unwrap();
    s.prefill(&[1, 2, 3]).unwrap();
    let before = s.forward(4).unwrap().to_vec();
    s.truncate(3).unwrap();
    match s.restore(path) {
        Err(kvgpu::Error::Snapshot { error, path: p }) => {
            assert!(expect(&error), "{error}");
            assert_eq!(p, path);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.len(), 3);
    assert_eq!(s.forward(4).unwrap(), &before[..], "the session changed");
}

#[test]
fn not_a_snapshot() {
    let (gm, path, _) = require!(setup("not_a_snapshot"));
    refused(&gm, &path, b"GGUF and then some", |e| {
        *e == SnapshotError::NotASnapshot
    });
}

#[test]
fn a_future_version() {
    let (gm, path, mut bytes) = require!(setup("future_version"));
    bytes[8] = 2;
    refused(&gm, &path, &bytes, |e| *e == SnapshotError::Version(2));
}

#[test]
fn truncated() {
    let (gm, path, bytes) = require!(setup("truncated"));
    for cut in [bytes.len() - 1, bytes.len() / 2, 30, 9] {
        refused(&gm, &path, &bytes[..cut], |e| {
            *e == SnapshotError::Truncated
        });
    }
}

#[test]
fn corrupted() {
    let (gm, path, bytes) = require!(setup("corrupted"));
    // A byte of the cache rows, of the tokens, and of the checksum itself.
    for at in [bytes.len() - 100, 80, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        refused(&gm, &path, &bad, |e| *e == SnapshotError::Checksum);
    }
    // Bytes added at the end.
    let mut longer = bytes.clone();
    longer.extend([0; 16]);
    refused(&gm, &path, &longer, |e| *e == SnapshotError::Checksum);
}

#[test]
fn another_model() {
    let (_, path, bytes) = require!(setup("another_model"));
    let gpu = require!(common::gpu());
    // The tiny model's shape differs; a stories260K with one tensor stored
    // as F16 has the same shape but another tensor table.
    let (mut model, _) = require!(common::stories());
    model.weights.layers[0].wq = model.weights.layers[0]
        .wq
        .convert(kvgpu::DType::F16)
        .unwrap();
    let other = GpuModel::new(&gpu, &model).unwrap();
    refused(&other, &path, &bytes, |e| *e == SnapshotError::OtherModel);
}

#[test]
fn another_cache_type_or_a_smaller_cache() {
    let (gm, path, bytes) = require!(setup("other_cache"));
    std::fs::write(&path, &bytes).unwrap();
    let options = SessionOptions::default()
        .capacity(64)
        .kv_dtype(KvDtype::F16);
    let mut s = Session::with_options(&gm, options).unwrap();
    let e = s.restore(&path).unwrap_err();
    assert!(
        matches!(
            e,
            kvgpu::Error::Snapshot {
                error: SnapshotError::OtherCacheType {
                    file: "f32",
                    session: "f16"
                },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.len(), 0);
    let mut small = Session::new(&gm, Some(3)).unwrap();
    let e = small.restore(&path).unwrap_err();
    assert!(
        matches!(
            e,
            kvgpu::Error::Snapshot {
                error: SnapshotError::TooLong {
                    len: 4,
                    capacity: 3
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn the_parser_takes_any_bytes_without_panicking() {
    let (_, _, bytes) = require!(setup("parser"));
    assert!(Snapshot::from_bytes(&bytes).is_ok());
    // Every prefix, and every single-byte change of the header.
    for n in 0..bytes.len().min(200) {
        assert!(Snapshot::from_bytes(&bytes[..n]).is_err());
    }
    for at in 0..80 {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] ^= x;
            assert!(Snapshot::from_bytes(&b).is_err(), "byte {at} ^ {x:#x}");
        }
    }
}
