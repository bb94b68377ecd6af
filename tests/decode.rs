//! End-to-end decoding of stories260K: the llama2.c reference texts byte for
//! byte, GPU logits against the CPU reference at every position, prefill
//! against token-by-token decoding, cache rollback, no allocation per token,
//! and a device shared with the caller.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{max_abs_diff, GREEDY, ZOO};
use kvgpu::cpu::CpuSession;
use kvgpu::{generate, Gpu, GpuModel, KvDtype, Sampler, Session, SessionOptions};

/// `run stories260K.bin -z tok512.bin -t 1.0 -p 0.9 -s 133742`.
const SAMPLED: &str = "Once upon a time, there was a little boy named Timmy. Timmy loved to play with his toys and eat sandwiches. One day, Timmy's mom told him it was time to rest for a while. Timmy's friend Billy came over and took him a down.
Timmy's mom saw that Timmy was sad, but Timmy said, \"I didn't understand what is it! We need to find some leafs.\" Timmy thought about it and took a deep breath on a spoon. He hoped it was important to be kind and continued to find its image next time.
After they finished getting, Timmy's dad came up to his house and promised to help Timmy.";

fn session(gpu: &Gpu, model: &kvgpu::Model) -> Session {
    Session::new(&GpuModel::new(gpu, model).unwrap(), None).unwrap()
}

fn check_text(prompt: &str, steps: usize, mut sampler: Sampler, expect: &str) {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = session(&gpu, &model);
    let mut streamed = String::new();
    let run = generate(&mut s, &tok, &mut sampler, prompt, steps, |p| {
        streamed.push_str(p)
    })
    .unwrap();
    assert_eq!(run.text, streamed);
    assert_eq!(run.text.trim_end(), expect);
}

#[test]
fn greedy_text_equals_llama2c() {
    check_text("", 256, Sampler::greedy(), GREEDY);
}

#[test]
fn sampled_text_equals_llama2c() {
    check_text("", 256, Sampler::new(1.0, 0.9, 133742).unwrap(), SAMPLED);
}

#[test]
fn prompted_text_equals_llama2c() {
    check_text("Zoo", 60, Sampler::greedy(), ZOO);
}

#[test]
fn greedy_generation_runs_blocks_of_steps_per_submit_and_stops_where_the_text_ends() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = session(&gpu, &model);
    // The whole context: the story ends at BOS (run.c's end) inside a block.
    let gpu_run = generate(&mut s, &tok, &mut Sampler::greedy(), "", 0, |_| {}).unwrap();
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let cpu_run = generate(&mut cpu, &tok, &mut Sampler::greedy(), "", 0, |_| {}).unwrap();
    assert!(gpu_run.ended && gpu_run.positions < s.cache().capacity() - kvgpu::GREEDY_BLOCK);
    assert_eq!(gpu_run.text, cpu_run.text);
    assert_eq!(gpu_run.positions, cpu_run.positions);
    // The cache ends at the end token, not at the end of its block.
    assert_eq!(s.len(), gpu_run.positions);
    // The first token alone (its latency), then one submit per block.
    let blocks = (gpu_run.positions - 1).div_ceil(kvgpu::GREEDY_BLOCK) as u64;
    assert_eq!(s.submissions(), 1 + blocks);
}

/// Tolerance for GPU vs CPU logits: both f32; the GPU sums in another order.
const LOGIT_TOLERANCE: f32 = 1e-3;

/// Tolerance for logits through an f16 KV cache against the f32 reference
/// (or against another summation order): f16 keeps 11 significant bits, so
/// cached values move by up to 2^-12 relative; through 5 layers the logits
/// (magnitudes up to ~20) moved by at most 0.023 when this was written.
const F16_LOGIT_TOLERANCE: f32 = 5e-2;

#[test]
fn gpu_logits_match_cpu_reference_at_every_position() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = session(&gpu, &model);
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let mut token = kvgpu::tokenizer::BOS;
    let mut worst = (0.0f32, 0);
    // 320 positions: past 256, attention runs split-K (two splits merged).
    for pos in 0..320 {
        let expect = cpu.forward(token).unwrap().to_vec();
        let got = s.forward(token).unwrap();
        let diff = max_abs_diff(got, &expect);
        if diff > worst.0 {
            worst = (diff, pos);
        }
        token = kvgpu::sampler::argmax(&expect);
    }
    eprintln!(
        "max |gpu - cpu| logit over 320 positions: {} at position {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= LOGIT_TOLERANCE,
        "logits differ by {} at position {}",
        worst.0,
        worst.1
    );
}

#[test]
fn decode_steps_fold_the_norms_and_match_passes_that_run_them() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let session = |kv_dtype| {
        Session::with_options(&gm, SessionOptions::default().kv_dtype(kv_dtype)).unwrap()
    };
    // A decode step runs no norm launch: 5 per layer (norm + QKV + RoPE +
    // append, attention, Wo + residual, norm + gate/up, W2 + residual), 6
    // with a quantized cache (RoPE + append on their own), then embed,
    // classifier and argmax.
    let layers = model.config.n_layers;
    let (mut decode, mut whole) = (session(KvDtype::F32), session(KvDtype::F32));
    assert_eq!(decode.dispatches_per_token(), 5 * layers + 3);
    assert_eq!(
        session(KvDtype::Q8_0).dispatches_per_token(),
        6 * layers + 3
    );
    // Its logits, and those of one pass over the same tokens (which runs
    // the norms on their own), against the CPU reference at every position.
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let (mut tokens, mut expect) = (vec![kvgpu::tokenizer::BOS], Vec::new());
    for pos in 0..40 {
        let logits = cpu.forward(tokens[pos]).unwrap().to_vec();
        let diff = max_abs_diff(decode.forward(tokens[pos]).unwrap(), &logits);
        assert!(diff <= LOGIT_TOLERANCE, "decode step at {pos}: {diff}");
        tokens.push(kvgpu::sampler::argmax(&logits));
        expect.push(logits);
    }
    let all = whole.prefill_all(&tokens[..40]).unwrap();
    let vocab = model.config.vocab_size;
    for (pos, (got, expect)) in all.chunks(vocab).zip(&expect).enumerate() {
        let diff = max_abs_diff(got, expect);
        assert!(
            diff <= LOGIT_TOLERANCE,
            "pass of 40 tokens, position {pos}: {diff}"
        );
    }
}

/// Tolerance for cache values written by a prefill pass vs one token at a
/// time: the same math, summed in another order by another kernel.
const CACHE_TOLERANCE: f32 = 1e-4;

#[test]
fn prefill_equals_feeding_token_by_token() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut cpu = CpuSession::new(&model, None).unwrap();
    // 297 tokens after 3 decoded positions: four full passes of 64 and a
    // partial one, whose tokens attend to more than 256 positions (split-K).
    let mut rng = kvgpu::rng::XorShift::new(5);
    let tokens: Vec<u32> = (0..300).map(|_| rng.next_u32() % 512).collect();
    for kv_dtype in [KvDtype::F32, KvDtype::F16] {
        let options = SessionOptions::default().kv_dtype(kv_dtype);
        let mut batched = Session::with_options(&gm, options).unwrap();
        let mut single = Session::with_options(&gm, options).unwrap();
        assert_eq!(batched.prefill_tokens(), 64);
        for &t in &tokens[..3] {
            batched.forward(t).unwrap();
        }
        let got = batched.prefill(&tokens[3..]).unwrap().to_vec();
        assert_eq!(batched.len(), tokens.len());
        assert_eq!(batched.submissions(), 3 + 5, "five prefill passes");
        let mut expect = Vec::new();
        for &t in &tokens {
            expect = single.forward(t).unwrap().to_vec();
        }
        let diff = max_abs_diff(&got, &expect);
        eprintln!("{kv_dtype:?} cache: max |prefill - token by token| logit {diff}");
        // An f16 cache turns f32 rounding differences into f16 steps (measured 3.9e-3).
        let tolerance = match kv_dtype {
            KvDtype::F32 => LOGIT_TOLERANCE,
            _ => F16_LOGIT_TOLERANCE,
        };
        assert!(diff <= tolerance, "{kv_dtype:?}: logits differ by {diff}");
        if kv_dtype == KvDtype::F32 {
            let mut reference = Vec::new();
            for &t in &tokens {
                reference = cpu.forward(t).unwrap().to_vec();
            }
            assert!(max_abs_diff(&got, &reference) <= LOGIT_TOLERANCE);
        }
        for layer in 0..model.config.n_layers {
            let (k, v) = batched.read_cache(layer).unwrap();
            let (k1, v1) = single.read_cache(layer).unwrap();
            assert_eq!(k.len(), tokens.len() * model.config.kv_dim());
            // An f16 cache rounds to 11 significant bits: a difference in the
            // last f32 bits may move a value by one f16 step (|v| / 1024 at
            // most), and such steps in one layer's cache move the next
            // layers' values further (measured: up to 1.1e-3 in the last
            // layer): 4e-3 + 4 steps.
            let (abs, steps) = match kv_dtype {
                KvDtype::F32 => (CACHE_TOLERANCE, 0.0),
                _ => (4e-3, 4.0 / 1024.0),
            };
            for (what, a, b) in [("k", &k, &k1), ("v", &v, &v1)] {
                for (i, (a, b)) in a.iter().zip(b.iter()).enumerate() {
                    let tolerance = abs + steps * b.abs();
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{kv_dtype:?} layer {layer} {what} cache value {i}: {a} vs {b}"
                    );
                }
            }
        }
        // The next token decodes the same after either.
        let a = batched.forward(7).unwrap().to_vec();
        let b = single.forward(7).unwrap().to_vec();
        assert!(max_abs_diff(&a, &b) <= tolerance);
    }
}

#[test]
fn truncate_then_redecode_is_bitwise_identical() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = session(&gpu, &model);
    let mut tokens = vec![kvgpu::tokenizer::BOS];
    let mut first = Vec::new();
    for _ in 0..100 {
        let logits = s.forward(*tokens.last().unwrap()).unwrap().to_vec();
        tokens.push(kvgpu::sampler::argmax(&logits));
        first.push(logits);
    }
    assert_eq!(s.len(), 100);
    s.truncate(40).unwrap();
    assert_eq!(s.len(), 40);
    for pos in 40..100 {
        let logits = s.forward(tokens[pos]).unwrap();
        let same = logits
            .iter()
            .zip(&first[pos])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "logits at position {pos} differ after truncate(40)");
    }
    assert!(matches!(
        s.truncate(101),
        Err(kvgpu::Error::TruncateBeyondLength {
            requested: 101,
            len: 100
        })
    ));
    assert_eq!(s.len(), 100);
}

#[test]
fn reset_then_fresh_run_gives_the_same_text() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let mut s = session(&gpu, &model);
    let seeded = |s: &mut Session| {
        let mut sampler = Sampler::new(1.0, 0.9, 42).unwrap();
        generate(s, &tok, &mut sampler, "Lily", 80, |_| {}).unwrap()
    };
    let a = seeded(&mut s);
    assert_eq!(s.len(), a.positions);
    s.reset();
    assert!(s.is_empty());
    let b = seeded(&mut s);
    assert_eq!(a.text, b.text);
    assert!(!a.text.is_empty());
}

#[test]
fn decode_allocates_nothing_and_submits_once_per_token() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::own_gpu());
    let mut s = session(&gpu, &model);
    let mut sampler = Sampler::new(1.0, 0.9, 7).unwrap();
    let mut token = s.forward_greedy(kvgpu::tokenizer::BOS).unwrap(); // warm-up
    let counters = |g: &Gpu| {
        let c = g.device.get_internal_counters();
        (
            c.hal.buffers.read(),
            c.hal.bind_groups.read(),
            c.hal.buffer_memory.read(),
        )
    };
    let before = counters(&gpu);
    let submits = s.submissions();
    for i in 0..100 {
        // All three kinds of step: greedy on the GPU, logits + host sampling, no readback.
        token = match i % 3 {
            0 => s.forward_greedy(token).unwrap(),
            1 => s.next_token(token, &mut sampler).unwrap(),
            _ => s.feed(&[token]).map(|_| token).unwrap(),
        };
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        assert_eq!(counters(&gpu), before, "GPU objects changed at step {i}");
    }
    assert_eq!(s.submissions() - submits, 100, "one submit per token");
    // A prompt: prefill passes of 64 tokens, one submit each, nothing allocated.
    let prompt: Vec<u32> = (0..100).map(|t| t * 5 % 512).collect();
    s.prefill(&prompt).unwrap();
    assert_eq!(counters(&gpu), before, "GPU objects changed by prefill");
    assert_eq!(s.submissions() - submits, 102);
    assert_ne!(before.0, 0, "counters are live (wgpu `counters` feature)");
}

#[test]
fn smaller_cache_reports_its_bytes() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let c = &model.config;
    for capacity in [1, 64, 512] {
        let s = Session::new(&gm, Some(capacity)).unwrap();
        let bytes = 2 * c.n_layers * capacity * c.kv_dim() * 4;
        assert_eq!(s.cache().bytes(), bytes as u64);
        assert_eq!(s.cache().capacity(), capacity);
    }
    assert!(matches!(
        Session::new(&gm, Some(513)),
        Err(kvgpu::Error::InvalidCapacity {
            requested: 513,
            max: 512
        })
    ));
    assert!(matches!(
        Session::new(&gm, Some(0)),
        Err(kvgpu::Error::InvalidCapacity { .. })
    ));
}

#[test]
fn decodes_on_a_device_the_caller_owns() {
    let (model, tok) = require!(common::stories());
    require!(common::gpu());
    // The application's own device, with its own error handler.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let app_errors = Arc::new(AtomicUsize::new(0));
    let seen = app_errors.clone();
    device.on_uncaptured_error(Arc::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));

    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let text = {
        let mut s = session(&gpu, &model);
        // Bad input on a shared device: a typed error, nothing reaches the app's handler.
        assert!(s.forward(9999).is_err());
        generate(&mut s, &tok, &mut Sampler::greedy(), "Zoo", 60, |_| {})
            .unwrap()
            .text
    };
    assert_eq!(text.trim_end(), ZOO);
    assert_eq!(
        app_errors.load(Ordering::SeqCst),
        0,
        "kvgpu raised errors on the app's device"
    );

    // The app goes on using its device: a copy round trip.
    let data: Vec<u32> = (0..64).collect();
    let src = wgpu::util::DeviceExt::create_buffer_init(
        &device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("app"),
            contents: bytemuck::cast_slice(&data),
            usage: wgpu::BufferUsages::COPY_SRC,
        },
    );
    let back: Vec<u32> = bytemuck::pod_collect_to_vec(
        &Gpu::from_device(device.clone(), queue)
            .read_buffer(&src, 256)
            .unwrap(),
    );
    assert_eq!(back, data);
    // And its own error handler is still the one in place.
    let _bad = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    assert_eq!(
        app_errors.load(Ordering::SeqCst),
        1,
        "the app's handler still receives its errors"
    );
}

#[test]
fn f16_kv_cache_matches_cpu_and_keeps_the_greedy_text() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let options = kvgpu::SessionOptions::default().kv_dtype(kvgpu::KvDtype::F16);
    let mut s = Session::with_options(&GpuModel::new(&gpu, &model).unwrap(), options).unwrap();
    assert_eq!(s.cache().bytes(), 655360 / 2, "half the f32 cache");
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let mut token = kvgpu::tokenizer::BOS;
    let mut worst = 0f32;
    for pos in 0..256 {
        let expect = cpu.forward(token).unwrap().to_vec();
        let diff = max_abs_diff(s.forward(token).unwrap(), &expect);
        assert!(diff <= F16_LOGIT_TOLERANCE, "position {pos}: {diff}");
        worst = worst.max(diff);
        token = kvgpu::sampler::argmax(&expect);
    }
    eprintln!("f16 KV cache: max |gpu - cpu| logit over 256 positions: {worst}");
    s.reset();
    let run = generate(&mut s, &tok, &mut Sampler::greedy(), "", 256, |_| {}).unwrap();
    assert_eq!(run.text.trim_end(), GREEDY);
}

#[test]
fn no_cache_mode_gives_the_same_text_with_quadratic_work() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut no_cache = kvgpu::NoCache::new(Session::new(&gm, Some(64)).unwrap());
    let run = generate(
        &mut no_cache,
        &tok,
        &mut Sampler::greedy(),
        "Zoo",
        40,
        |_| {},
    )
    .unwrap();
    assert!(ZOO.starts_with(run.text.as_str()), "{}", run.text);
    // The token at length L recomputes all L positions: prompt + ... + 40 in
    // all (the prompt tokens are only queued), in one prefill pass of the
    // prefix (up to 64 tokens) and one decode pass each.
    let prompt = run.prompt_tokens as u64;
    assert_eq!(no_cache.positions_run(), (prompt..=40).sum::<u64>());
    let passes: u64 = (prompt..=40).map(|l| 1 + (l > 1) as u64).sum();
    assert_eq!(no_cache.passes(), passes);
    // A bad token changes nothing.
    let len = kvgpu::Decoder::len(&no_cache);
    assert!(kvgpu::Decoder::next_token(&mut no_cache, 9999, &mut Sampler::greedy()).is_err());
    assert_eq!(kvgpu::Decoder::len(&no_cache), len);
}
