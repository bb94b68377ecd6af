//! Model families beyond Llama (`src/arch/`): stories260K dressed as Qwen2,
//! Qwen3 and Phi-3 gives llama.cpp's reference texts byte for byte; a random
//! model of every family, with heads wider than dim / n_heads and a partial
//! rotation, decodes on the GPU as the CPU reference computes it, token by
//! token, in one prefill pass and in an engine's paged passes; a model
//! written as its family's GGUF reads back the same; files of other
//! architectures, or missing a tensor their family needs, are refused by
//! name. A Gemma-3-shaped model with a 16-position window (its window
//! layers' caches rings) decodes as the CPU reference over 120 positions
//! token by token, in prefill passes longer than the window, in greedy
//! blocks and with prompt lookup; saved and restored mid-way it goes on as
//! if uninterrupted; its cache refuses a rollback past what its rings hold,
//! shifts as the CPU reference or refuses a shift whose next window its
//! rings lost. In an engine its window layers' pages go back to their pool
//! as the window slides, through prefix reuse, forks and rollbacks: three
//! sequences decode as the CPU reference in a pool a fifth of what they
//! wrote.

mod common;

use common::max_abs_diff;
use kvgpu::arch::{Family, FAMILIES};
use kvgpu::cpu::CpuSession;
use kvgpu::gguf::{Gguf, GgufError, Value};
use kvgpu::{
    generate, Config, DType, Engine, EngineOptions, GpuModel, Length, Model, Sampler, Session,
    Tokenizer,
};

/// `llama-simple` (llama.cpp b11434, CPU) on each dressed file, greedy, BOS
/// added: the models README's "stories260K dressed as other architectures".
const DRESSED: [(&str, &str, usize, &str); 3] = [
    (
        "stories260K-as-qwen2.gguf",
        "The little dog",
        80,
        "The little dog was a little girl named Lily. She loved to play with her toys and her toys. One day, she saw a big box with a big box. It was a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"L",
    ),
    (
        "stories260K-as-qwen3.gguf",
        "Once upon a time",
        60,
        "Once upon a time, there was a little gir mommy. The boathers. The bir mommy. The bir mommy. She was aness. She was aness. She was anes and aness. She was an's",
    ),
    (
        "stories260K-as-phi3.gguf",
        "Tom and Sue went to the park",
        80,
        "Tom and Sue went to the park. They saw a big box with a big box. They wanted to play with it. They wanted to play with the box. They wanted to play with the box.\n\"Look, Mom!\" Tom said. \"Let's go to the park.\"\n\"Let's g",
    ),
];

/// GPU against CPU logits of a random model: f32 weights and cache, the
/// same sums in another order (a few ulps of logits of size ~1).
const LOGIT_TOLERANCE: f32 = 1e-4;

#[test]
fn dressed_stories_give_llama_cpp_reference_texts() {
    let gpu = require!(common::gpu());
    for (file, prompt, new_tokens, expect) in DRESSED {
        let path = require!(common::model_file(file));
        let (model, tok) = Model::load(path).unwrap();
        let tok = tok.expect("GGUF holds its tokenizer");
        let arch = file["stories260K-as-".len()..].trim_end_matches(".gguf");
        assert_eq!(model.config.family.arch, arch);
        let mut s = Session::new(&GpuModel::new(&gpu, &model).unwrap(), None).unwrap();
        let length = Length::NewTokens(new_tokens);
        let text = generate(&mut s, &tok, &mut Sampler::greedy(), prompt, length, |_| {})
            .unwrap()
            .text;
        assert_eq!(text, expect, "{file}");
    }
}

/// A small model of `family`: 4 query heads of 16 over 2 K/V heads (q_dim
/// 64 against dim 48), RoPE on the first 12 dimensions of each head; a
/// family with window layers attends over 16 positions there.
fn config(family: &'static Family) -> Config {
    Config {
        dim: 48,
        hidden_dim: 72,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_size: 16,
        vocab_size: 300,
        seq_len: 64,
        shared_classifier: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_theta_window: match family.block.window_pattern {
            Some(_) => 500.0,
            None => 10000.0,
        },
        sliding_window: match family.block.window_pattern {
            Some(_) => 16,
            None => 0,
        },
        rope_dim: 12,
        rope_freq_factors: None,
        family,
    }
}

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + seed * 11) % 300).collect()
}

#[test]
fn every_family_decodes_on_the_gpu_as_the_cpu_reference() {
    let gpu = require!(common::gpu());
    for family in FAMILIES {
        let model = Model::random(config(family), 5).unwrap();
        let gm = GpuModel::new(&gpu, &model).unwrap();
        let prompt = tokens(40, 1);
        let mut cpu = CpuSession::new(&model, None).unwrap();
        let expect: Vec<Vec<f32>> = prompt
            .iter()
            .map(|&t| cpu.forward(t).unwrap().to_vec())
            .collect();
        // Token by token (the decode step's kernels).
        let mut s = Session::new(&gm, None).unwrap();
        for (pos, (&t, e)) in prompt.iter().zip(&expect).enumerate() {
            let diff = max_abs_diff(s.forward(t).unwrap(), e);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{} decode at {pos}: {diff}",
                family.arch
            );
        }
        // One prefill pass (the matrix-matrix kernels), every position's logits.
        let mut s = Session::new(&gm, None).unwrap();
        let all = s.prefill_all(&prompt).unwrap();
        for (pos, e) in expect.iter().enumerate() {
            let got = &all[pos * 300..(pos + 1) * 300];
            let diff = max_abs_diff(got, e);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{} prefill at {pos}: {diff}",
                family.arch
            );
        }
    }
}

#[test]
fn every_family_decodes_in_an_engine_as_the_cpu_reference() {
    let gpu = require!(common::gpu());
    for family in FAMILIES {
        let model = Model::random(config(family), 6).unwrap();
        let gm = GpuModel::new(&gpu, &model).unwrap();
        // Three sequences at different positions share each pass.
        let prompts = [tokens(9, 2), tokens(3, 3), tokens(14, 4)];
        let mut engine = Engine::new(&gm, EngineOptions::default().pages(16)).unwrap();
        let ids: Vec<_> = prompts.iter().map(|p| engine.add(p).unwrap()).collect();
        let mut cpus: Vec<CpuSession> = prompts
            .iter()
            .map(|_| CpuSession::new(&model, None).unwrap())
            .collect();
        let mut expect: Vec<Vec<f32>> = prompts
            .iter()
            .zip(&mut cpus)
            .map(|(p, cpu)| p.iter().map(|&t| cpu.forward(t).unwrap().to_vec()).last())
            .map(Option::unwrap)
            .collect();
        let mut checked = [0; 3];
        while checked.iter().any(|&n| n < 6) {
            for id in engine.step().unwrap() {
                let i = ids.iter().position(|&x| x == id).unwrap();
                let got = engine.logits(id).unwrap().to_vec();
                let diff = max_abs_diff(&got, &expect[i]);
                assert!(
                    diff <= LOGIT_TOLERANCE,
                    "{} sequence {i} step {}: {diff}",
                    family.arch,
                    checked[i]
                );
                checked[i] += 1;
                let next = kvgpu::sampler::argmax(&got);
                engine.push(id, next).unwrap();
                expect[i] = cpus[i].forward(next).unwrap().to_vec();
            }
        }
    }
}

#[test]
fn every_family_writes_gguf_files_it_reads_back() {
    let dir = common::scratch("families");
    let tok = Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap();
    for family in FAMILIES {
        let model = Model::random(config(family), 7).unwrap();
        let bytes = model.to_gguf(&tok, DType::F32).unwrap();
        let g = Gguf::from_vec(bytes).unwrap();
        assert_eq!(g.string("general.architecture").unwrap(), Some(family.arch));
        // Phi-3 stores Q, K, V and gate, up fused, as its files do.
        let fused = g.tensor_info("blk.0.attn_qkv.weight").is_some();
        assert_eq!(fused, family.fused_qkv, "{}", family.arch);
        assert_eq!(
            g.tensor_info("blk.0.ffn_gate.weight").is_none(),
            family.fused_gate_up
        );
        let back = Model::from_gguf(&g).unwrap();
        assert_eq!(back.config, model.config);
        let (a, b) = (model.weights.tensors(), back.weights.tensors());
        assert_eq!(a.len(), b.len(), "{}", family.arch);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.to_f32(), y.to_f32(), "{}", family.arch);
        }
    }
}

/// A Llama model's GGUF metadata and tensors relabelled as `arch`.
fn relabelled(arch: &str) -> Vec<u8> {
    let dir = common::scratch("families_relabelled");
    let tok = Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap();
    let model = Model::random(config(Family::llama()), 8).unwrap();
    let g = Gguf::from_vec(model.to_gguf(&tok, DType::F32).unwrap()).unwrap();
    let metadata: Vec<(String, Value)> = g
        .metadata
        .iter()
        .map(|(k, v)| match (k.as_str(), k.strip_prefix("llama.")) {
            ("general.architecture", _) => (k.clone(), Value::String(arch.into())),
            (_, Some(rest)) => (format!("{arch}.{rest}"), v.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    model.to_gguf_with(&metadata, DType::F32)
}

#[test]
fn a_missing_tensor_and_an_unknown_architecture_are_named() {
    // Qwen2 needs Q/K/V biases, Qwen3 q/k norms: a Llama model has neither.
    for (arch, missing) in [
        ("qwen2", "blk.0.attn_q.bias"),
        ("qwen3", "blk.0.attn_q_norm.weight"),
    ] {
        let err = Model::from_gguf(&Gguf::from_vec(relabelled(arch)).unwrap()).unwrap_err();
        assert!(
            matches!(&err, kvgpu::Error::Gguf { kind: GgufError::MissingTensor(name), .. } if name == missing),
            "{arch}: {err}"
        );
    }
    // Phi-3 reads separate Q, K, V too, but its gate and up come fused.
    let err = Model::from_gguf(&Gguf::from_vec(relabelled("phi3")).unwrap()).unwrap_err();
    assert!(err.to_string().contains("blk.0.ffn_up.weight"), "{err}");
    // Gemma 3 needs its window, a key the Llama file does not have.
    let err = Model::from_gguf(&Gguf::from_vec(relabelled("gemma3")).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("gemma3.attention.sliding_window"),
        "{err}"
    );
    let err = Model::from_gguf(&Gguf::from_vec(relabelled("gptneox")).unwrap()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("\"gptneox\"") && message.contains("llama, qwen2, qwen3, phi3, gemma3"),
        "{message}"
    );
}

#[test]
fn half_split_rope_reordered_to_adjacent_rotates_the_same() {
    use kvgpu::rope::{Pairing, Rope};
    // A head of 10 with its first 6 dimensions rotating.
    let rope = |pairing| Rope {
        head_size: 10,
        rope_dim: 6,
        theta: 10000.0,
        freq_factors: None,
        pairing,
    };
    let order = Pairing::HalfSplit.adjacent_order(10, 6);
    assert_eq!(order, [0, 3, 1, 4, 2, 5, 6, 7, 8, 9]);
    let stored = common::random(20, 3);
    let mut half = stored.clone();
    rope(Pairing::HalfSplit).rotate(&mut half, &mut [], 7);
    let reordered = |v: &[f32]| -> Vec<f32> {
        v.chunks(10)
            .flat_map(|head| order.iter().map(|&r| head[r]))
            .collect()
    };
    let mut adjacent = reordered(&stored);
    rope(Pairing::Adjacent).rotate(&mut adjacent, &mut [], 7);
    assert_eq!(reordered(&half), adjacent);
}

/// Gemma 3's layout on a small scale: 6 layers, the first five attending
/// over a 16-position window (RoPE base 500), the last over everything.
fn windowed() -> Model {
    let gemma3 = Family::from_arch("gemma3").unwrap();
    let config = Config {
        n_layers: 6,
        seq_len: 160,
        ..config(gemma3)
    };
    Model::random(config, 9).unwrap()
}

/// Positions the window tests run: past the window several times, and
/// past the window layers' rings (16 + 64 - 1 rows) too.
const WINDOW_RUN: usize = 120;

/// The windowed model, on `gpu` too, and `WINDOW_RUN` tokens of `seed`.
fn windowed_on(gpu: &kvgpu::Gpu, seed: u32) -> (Model, GpuModel, Vec<u32>) {
    let model = windowed();
    let gm = GpuModel::new(gpu, &model).unwrap();
    (model, gm, tokens(WINDOW_RUN, seed))
}

/// Each position's logits of `prompt`, fed a token at a time to `forward`.
fn logits_of(prompt: &[u32], mut forward: impl FnMut(u32) -> Vec<f32>) -> Vec<Vec<f32>> {
    prompt.iter().map(|&t| forward(t)).collect()
}

#[test]
fn window_layers_decode_as_the_cpu_reference_in_every_kind_of_pass() {
    let gpu = require!(common::gpu());
    let (model, gm, prompt) = windowed_on(&gpu, 5);
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let expect = logits_of(&prompt, |t| cpu.forward(t).unwrap().to_vec());
    let mut s = Session::new(&gm, None).unwrap();
    let rows = s.cache().layer_rows();
    assert_eq!(rows, [79, 79, 79, 79, 79, 160], "rings of window + 63 rows");
    for (pos, (&t, e)) in prompt.iter().zip(&expect).enumerate() {
        let diff = max_abs_diff(s.forward(t).unwrap(), e);
        assert!(diff <= LOGIT_TOLERANCE, "decode at {pos}: {diff}");
    }
    // Passes of 64 tokens (four windows) and the rest, every position's logits.
    let mut s = Session::new(&gm, None).unwrap();
    let all = s.prefill_all(&prompt).unwrap();
    for (pos, e) in expect.iter().enumerate() {
        let diff = max_abs_diff(&all[pos * 300..(pos + 1) * 300], e);
        assert!(diff <= LOGIT_TOLERANCE, "prefill at {pos}: {diff}");
    }
    // Greedy blocks (several steps a submit) against the CPU's greedy run.
    let dir = common::scratch("window_greedy");
    let tok = Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap();
    let length = Length::NewTokens(100);
    let greedy = |d: &mut dyn kvgpu::Decoder| {
        let mut sampler = Sampler::greedy();
        kvgpu::generate_tokens(d, &tok, &mut sampler, &prompt[..3], length, |_| {}).unwrap()
    };
    let gpu_run = greedy(&mut Session::new(&gm, None).unwrap());
    let cpu_run = greedy(&mut CpuSession::new(&model, None).unwrap());
    assert!(gpu_run.positions > 80, "{}", gpu_run.positions);
    assert_eq!(gpu_run.tokens, cpu_run.tokens);
    // Prompt lookup: drafts checked in one pass, the rejected ones rolled
    // back within the rings.
    let session = Session::new(&gm, None).unwrap();
    let mut lookup = kvgpu::Lookup::new(session, 7).draft_always();
    assert_eq!(greedy(&mut lookup).tokens, cpu_run.tokens, "prompt lookup");
    assert!(lookup.stats().verify_passes > 0, "{:?}", lookup.stats());
}

#[test]
fn a_windowed_cache_saved_and_restored_goes_on_as_if_uninterrupted() {
    let gpu = require!(common::gpu());
    let (_, gm, prompt) = windowed_on(&gpu, 6);
    let mut whole = Session::new(&gm, None).unwrap();
    let expect = logits_of(&prompt, |t| whole.forward(t).unwrap().to_vec());
    // Saved at 50 and at 100 (the rings have wrapped), restored into a
    // fresh session, continued to the end: the same logits, bit for bit.
    for at in [50, 100] {
        let mut s = Session::new(&gm, None).unwrap();
        for &t in &prompt[..at] {
            s.forward(t).unwrap();
        }
        let path = common::scratch("window_snapshot").join(format!("at{at}.kvc"));
        s.save(&path, &prompt[..at], None, None, &[]).unwrap();
        let mut restored = Session::new(&gm, None).unwrap();
        restored.restore(&path).unwrap();
        assert_eq!(restored.len(), at);
        for pos in at..WINDOW_RUN {
            let got = restored.forward(prompt[pos]).unwrap();
            assert_eq!(got, &expect[pos][..], "saved at {at}, position {pos}");
        }
    }
}

#[test]
fn a_windowed_cache_rolls_back_only_as_far_as_its_rings_hold() {
    let gpu = require!(common::gpu());
    let (_, gm, prompt) = windowed_on(&gpu, 7);
    let mut s = Session::new(&gm, None).unwrap();
    s.prefill(&prompt[..110]).unwrap();
    // Rings of 79 rows hold positions 31..110; the token at 40 reads back to 25.
    let err = s.truncate(40).unwrap_err();
    assert!(
        matches!(
            err,
            kvgpu::Error::WindowRollback {
                requested: 40,
                oldest: 31,
                needed: 25
            }
        ),
        "{err}"
    );
    assert_eq!(
        s.len(),
        110,
        "a refused rollback leaves the cache as it was"
    );
    // Back to 60 (reading back to 45) is exact: as if decoded to 60 only.
    s.truncate(60).unwrap();
    let got = s.forward(prompt[60]).unwrap().to_vec();
    let mut fresh = Session::new(&gm, None).unwrap();
    fresh.prefill(&prompt[..60]).unwrap();
    let diff = max_abs_diff(fresh.forward(prompt[60]).unwrap(), &got);
    assert!(diff <= LOGIT_TOLERANCE, "{diff}");
    // Emptying it always works.
    s.truncate(0).unwrap();
}

#[test]
fn a_windowed_cache_shifts_as_the_cpu_reference_or_refuses_what_its_rings_lost() {
    let gpu = require!(common::gpu());
    let (model, gm, prompt) = windowed_on(&gpu, 10);
    let mut s = Session::new(&gm, None).unwrap();
    let mut cpu = CpuSession::new(&model, None).unwrap();
    s.prefill(&prompt).unwrap();
    for &t in &prompt {
        cpu.forward(t).unwrap();
    }
    // The rings (79 rows) hold positions 41..120. Keeping 30 and dropping
    // 80 would have the token at 40 read kept positions 25..30: refused.
    let err = s.shift(30, 80).unwrap_err();
    assert!(
        matches!(err, kvgpu::Error::WindowShift { oldest: 41, .. }),
        "{err}"
    );
    assert_eq!(s.len(), WINDOW_RUN, "a refused shift changes nothing");
    // Dropping 22..42 moves what the rings hold (41..120) and leaves
    // 42..120 for the whole-context layer; then the rings wrapped again,
    // dropping half.
    for (keep, discard) in [(2, 20), (4, 50)] {
        s.shift(keep, discard).unwrap();
        cpu.shift(keep, discard).unwrap();
        let mut next = kvgpu::sampler::argmax(cpu.forward(prompt[0]).unwrap());
        s.forward(prompt[0]).unwrap();
        for step in 0..20 {
            let expect = cpu.forward(next).unwrap().to_vec();
            let diff = max_abs_diff(s.forward(next).unwrap(), &expect);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "after shift({keep}, {discard}), step {step}: {diff}"
            );
            next = kvgpu::sampler::argmax(&expect);
        }
    }
}

#[test]
fn an_engine_returns_window_pages_to_its_pool_and_decodes_as_the_cpu_reference() {
    let gpu = require!(common::gpu());
    let (model, gm, _) = windowed_on(&gpu, 8);
    // Pages of 4 positions, passes of 8 tokens: a sequence holds at most
    // (15 + 8) / 4 + 2 = 7 window pages at once; the pool has 16, for
    // three sequences of 110 positions (84 window pages written).
    let options = EngineOptions::default()
        .page_size(4)
        .pass_tokens(8)
        .window_pages(16);
    let err = Engine::new(&gm, options.window_pages(4)).unwrap_err();
    assert!(err.to_string().contains("window_pages"), "{err}");
    let mut engine = Engine::new(&gm, options).unwrap();
    let first = tokens(40, 11);
    let a = engine.add(&first).unwrap();
    while engine.pending(a).unwrap() > 0 {
        engine.step().unwrap();
    }
    // Its first 36 positions' pages (9 whole ones) are taken, not run: the
    // window pages that the token at 36 reads (positions 21..36) included.
    let mut reused = first[..36].to_vec();
    reused.extend(tokens(6, 12));
    let b = engine.add(&reused).unwrap();
    assert_eq!(engine.pending(b).unwrap(), 6);
    let c = engine.add(&tokens(25, 13)).unwrap();
    let ids = [a, b, c];
    let mut cpus: Vec<CpuSession> = (0..3)
        .map(|_| CpuSession::new(&model, None).unwrap())
        .collect();
    // Each sequence's logits as the CPU computes them, a's already on the GPU.
    let mut expect: Vec<Vec<f32>> = ids
        .iter()
        .zip(&mut cpus)
        .map(|(&id, cpu)| {
            let prompt = engine.tokens(id).unwrap().to_vec();
            logits_of(&prompt, |t| cpu.forward(t).unwrap().to_vec()).pop()
        })
        .map(Option::unwrap)
        .collect();
    let mut ready = vec![(a, engine.logits(a).unwrap().to_vec())];
    while !ready.is_empty() || ids.iter().any(|&id| engine.pending(id).unwrap() > 0) {
        for (id, got) in ready.drain(..) {
            let i = ids.iter().position(|&x| x == id).unwrap();
            let len = engine.tokens(id).unwrap().len();
            let diff = max_abs_diff(&got, &expect[i]);
            assert!(diff <= LOGIT_TOLERANCE, "sequence {i} at {len}: {diff}");
            let held = engine.sequence_memory(id).unwrap().window_pages;
            assert!(held <= 7, "sequence {i} holds {held} window pages");
            if len < 110 {
                let next = kvgpu::sampler::argmax(&got);
                engine.push(id, next).unwrap();
                expect[i] = cpus[i].forward(next).unwrap().to_vec();
            }
        }
        for id in engine.step().unwrap() {
            ready.push((id, engine.logits(id).unwrap().to_vec()));
        }
    }
    let m = engine.memory();
    assert_eq!(m.window_pages.total, 16);
    assert_eq!(
        m.window_page_bytes,
        5 * m.page_bytes,
        "five window layers, one global"
    );
    assert!(engine.stats().reused >= 36);
    // A rollback past the window pages held is refused and changes nothing;
    // one within them goes on as the CPU reference.
    let err = engine.truncate(a, 40).unwrap_err();
    assert!(
        matches!(err, kvgpu::Error::WindowRollback { requested: 40, .. }),
        "{err}"
    );
    assert_eq!(engine.tokens(a).unwrap().len(), 110);
    engine.truncate(a, 108).unwrap();
    let prompt = engine.tokens(a).unwrap().to_vec();
    engine.push(a, 7).unwrap();
    engine.step().unwrap();
    let mut cpu = CpuSession::new(&model, None).unwrap();
    for &t in &prompt {
        cpu.forward(t).unwrap();
    }
    let diff = max_abs_diff(engine.logits(a).unwrap(), cpu.forward(7).unwrap());
    assert!(diff <= LOGIT_TOLERANCE, "after the rollback: {diff}");
    // A fork shares b's window pages; the next token of each writes its own
    // copy of the partial page both hold.
    let child = engine.fork(b).unwrap();
    assert_eq!(engine.memory().window_pages.shared, 5, "positions 92..110");
    for id in [b, child] {
        engine.push(id, 3).unwrap();
    }
    engine.step().unwrap();
    let expect = cpus[1].forward(3).unwrap();
    for id in [b, child] {
        let diff = max_abs_diff(engine.logits(id).unwrap(), expect);
        assert!(diff <= LOGIT_TOLERANCE, "{id} after the fork: {diff}");
    }
    assert_eq!(engine.stats().page_copies, 2, "a page of each pool");
    engine.remove(child).unwrap();
    for id in ids {
        engine.remove(id).unwrap();
    }
    let m = engine.memory();
    assert_eq!(
        (m.pages.held, m.window_pages.held),
        (0, 0),
        "every page back"
    );
}

#[test]
fn gemma3_270m_cache_at_32768_positions_takes_under_a_fifth_of_a_global_cache() {
    // Gemma 3 270M's shape: 18 layers, 1 K/V head of 256, window 512 on
    // five of every six layers.
    let gemma3 = Family::from_arch("gemma3").unwrap();
    let c = Config {
        dim: 640,
        hidden_dim: 2048,
        n_layers: 18,
        n_heads: 4,
        n_kv_heads: 1,
        head_size: 256,
        vocab_size: 262144,
        seq_len: 32768,
        sliding_window: 512,
        rope_dim: 256,
        ..config(gemma3)
    };
    let (whole, window) = kvgpu::KvCache::bytes_for(&c, 32768, 64, kvgpu::KvDtype::F32);
    // 3 global layers of 32768 rows and 15 rings of 512 + 63, K and V, 1 KiB a row.
    assert_eq!(whole, 3 * 32768 * 2 * 1024);
    assert_eq!(window, 15 * 575 * 2 * 1024);
    let all_global = 18 * 32768 * 2 * 1024;
    assert!(
        5 * (whole + window) <= all_global,
        "{} of {all_global}",
        whole + window
    );
}
