//! Context shift: after `Session::shift`, decoding goes on as if the
//! dropped tokens had never been there (the logits equal a fresh prefill
//! of the kept tokens at their new positions), the GPU's shift equals the
//! CPU reference's on every cache type, a shift that does not fit is a
//! typed error that changes nothing, and generation with shifts runs far
//! past the cache's capacity.

mod common;

use common::max_abs_diff;
use kvgpu::cpu::CpuSession;
use kvgpu::{
    generate, generate_shifting, ContextShift, GpuModel, KvDtype, Length, Sampler, Session,
    SessionOptions,
};

/// Stated tolerance for an f32 cache: shifted keys are rotated twice (to
/// their old position, then back by the distance moved), so they differ
/// from keys rotated once in the last bits; 1e-3 on the logits.
const SHIFT_TOLERANCE: f32 = 1e-3;

/// `tokens` with `discard` of them dropped after the first `keep`.
fn kept(tokens: &[u32], keep: usize, discard: usize) -> Vec<u32> {
    tokens[..keep]
        .iter()
        .chain(&tokens[keep + discard..])
        .copied()
        .collect()
}

/// (kept, dropped): none kept, attention sinks, one dropped, half, nearly
/// all; 300 positions reach past one attention split (256).
const SHIFTS: [(usize, usize); 5] = [(0, 10), (4, 148), (4, 1), (100, 150), (1, 298)];

/// A cached key or value of layer 0 depends on its token and position
/// only, so in a one-layer model the logits after a shift must equal a
/// fresh prefill of the kept tokens at their new positions. (Deeper layers'
/// keys and values also carry what the dropped tokens contributed, as in
/// llama.cpp: there a shift is an approximation by construction; the test
/// below measures how far it moves stories260K's logits.)
#[test]
fn logits_after_a_shift_equal_a_fresh_prefill_of_the_kept_tokens() {
    let gpu = require!(common::gpu());
    let mut config = common::tiny_model(320).config;
    config.n_layers = 1;
    let model = kvgpu::Model::random(config, 9).unwrap();
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut rng = kvgpu::rng::XorShift::new(3);
    let tokens: Vec<u32> = (0..300).map(|_| rng.next_u32() % 300).collect();
    for (keep, discard) in SHIFTS {
        let mut shifted = Session::new(&gm, Some(320)).unwrap();
        shifted.prefill(&tokens).unwrap();
        shifted.shift(keep, discard).unwrap();
        assert_eq!(shifted.len(), 300 - discard);
        let mut fresh = Session::new(&gm, Some(320)).unwrap();
        fresh.prefill(&kept(&tokens, keep, discard)).unwrap();
        // The next few tokens decode alike.
        let mut worst = 0f32;
        for t in [7, 99, 200, 3] {
            let a = shifted.forward(t).unwrap().to_vec();
            let b = fresh.forward(t).unwrap().to_vec();
            worst = worst.max(max_abs_diff(&a, &b));
        }
        eprintln!("one layer, keep {keep} drop {discard}: max logit difference {worst}");
        assert!(
            worst <= SHIFT_TOLERANCE,
            "keep {keep} drop {discard}: {worst}"
        );
    }
}

/// On stories260K (5 layers): the first layer's cache after a shift is the
/// fresh prefill's (the re-rotation is exact to f32 rounding); the logits
/// move as far as the dropped context mattered, reported.
#[test]
fn first_layer_cache_after_a_shift_is_a_fresh_prefills() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut rng = kvgpu::rng::XorShift::new(3);
    let tokens: Vec<u32> = (0..300).map(|_| rng.next_u32() % 512).collect();
    for (keep, discard) in SHIFTS {
        let mut shifted = Session::new(&gm, Some(320)).unwrap();
        shifted.prefill(&tokens).unwrap();
        shifted.shift(keep, discard).unwrap();
        let mut fresh = Session::new(&gm, Some(320)).unwrap();
        fresh.prefill(&kept(&tokens, keep, discard)).unwrap();
        let (k, v) = shifted.read_cache(0).unwrap();
        let (k1, v1) = fresh.read_cache(0).unwrap();
        assert!(
            max_abs_diff(&k, &k1) < 1e-4,
            "keep {keep} drop {discard}: k"
        );
        assert!(
            max_abs_diff(&v, &v1) < 1e-4,
            "keep {keep} drop {discard}: v"
        );
        let a = shifted.forward(7).unwrap().to_vec();
        let b = fresh.forward(7).unwrap().to_vec();
        eprintln!(
            "stories260K, keep {keep} drop {discard}: logits after the shift vs a fresh prefill of the kept tokens differ by {}",
            max_abs_diff(&a, &b)
        );
    }
}

#[test]
fn gpu_shift_equals_the_cpu_reference_on_every_cache_type() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut rng = kvgpu::rng::XorShift::new(4);
    let tokens: Vec<u32> = (0..60).map(|_| rng.next_u32() % 512).collect();
    for dtype in KvDtype::ALL {
        let options = SessionOptions::default().capacity(64).kv_dtype(dtype);
        let mut s = Session::with_options(&gm, options).unwrap();
        let mut cpu = CpuSession::with_options(&model, options).unwrap();
        for &t in &tokens {
            s.forward(t).unwrap();
            cpu.forward(t).unwrap();
        }
        s.shift(4, 28).unwrap();
        cpu.shift(4, 28).unwrap();
        for layer in 0..model.config.n_layers {
            let (k, v) = s.read_cache(layer).unwrap();
            let kv = model.config.kv_dim();
            let (k1, v1) = cpu.read_cache(layer);
            assert_eq!(k1.len(), 32 * kv);
            // As decode's tests: f32 sums in another order move later
            // layers' values a little; quantized ones, by up to a step.
            let tolerance = if dtype == KvDtype::F32 { 1e-3 } else { 0.1 };
            for (what, gpu, cpu) in [("k", &k, &k1), ("v", &v, &v1)] {
                let diff = max_abs_diff(gpu, cpu);
                assert!(diff < tolerance, "{dtype:?} layer {layer} {what}: {diff}");
            }
        }
        let a = s.forward(5).unwrap().to_vec();
        let b = cpu.forward(5).unwrap().to_vec();
        eprintln!(
            "{dtype:?}: logits after a shift, |gpu - cpu| {}",
            max_abs_diff(&a, &b)
        );
        assert!(max_abs_diff(&a, &b) < 5e-2, "{dtype:?}");
    }
}

#[test]
fn a_shift_that_does_not_fit_is_refused_and_changes_nothing() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, Some(32)).unwrap();
    s.prefill(&[1, 2, 3, 4, 5, 6]).unwrap();
    let before = s.forward(7).unwrap().to_vec();
    s.truncate(6).unwrap();
    for (keep, discard) in [(0, 0), (5, 2), (7, 1), (usize::MAX, 1)] {
        let e = s.shift(keep, discard).unwrap_err();
        assert!(
            matches!(e, kvgpu::Error::InvalidShift { len: 6, .. }),
            "{e}"
        );
    }
    assert_eq!(s.len(), 6);
    assert_eq!(s.forward(7).unwrap(), &before[..]);
}

#[test]
fn generation_shifts_past_capacity_and_starts_as_without() {
    let (model, mut tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    tok.set_end_tokens(Vec::new());
    let mut s = Session::new(&gm, Some(128)).unwrap();
    let shift = ContextShift {
        keep: 4,
        discard: None,
    };
    let long = generate_shifting(
        &mut s,
        &tok,
        &mut Sampler::greedy(),
        "",
        2000,
        shift,
        |_| {},
    )
    .unwrap();
    assert_eq!(long.generated_tokens, 2000);
    assert!(s.len() <= 128);
    // Its first 128 positions are the unshifted run's.
    let mut plain = Session::new(&gm, None).unwrap();
    let first = generate(
        &mut plain,
        &tok,
        &mut Sampler::greedy(),
        "",
        Length::Steps(128),
        |_| {},
    )
    .unwrap();
    assert!(first.tokens.len() >= 127);
    assert_eq!(long.tokens[..first.tokens.len()], first.tokens[..]);
    // A sliding window (StreamingLLM): one position dropped at a time.
    let mut s = Session::new(&gm, Some(64)).unwrap();
    let window = ContextShift {
        keep: 4,
        discard: Some(1),
    };
    let run = generate_shifting(
        &mut s,
        &tok,
        &mut Sampler::greedy(),
        "",
        200,
        window,
        |_| {},
    )
    .unwrap();
    assert_eq!(run.generated_tokens, 200);
    assert_eq!(s.len(), 64);
    // Nothing left to keep decoding with: refused before anything runs.
    let bad = ContextShift {
        keep: 63,
        discard: None,
    };
    let e = generate_shifting(&mut s, &tok, &mut Sampler::greedy(), "", 10, bad, |_| {});
    assert!(matches!(e, Err(kvgpu::Error::InvalidShift { .. })));
}
