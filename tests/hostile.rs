//! Hostile input: chat templates (programs inside downloaded files) that
//! would run, nest or allocate without bound are refused as `ChatTemplate`
//! with the reason, while the features real templates use still work; both
//! tokenizers round-trip long runs of one letter, of spaces and of words,
//! on which the old quadratic merging took minutes; a snapshot of no
//! positions restores; non-finite logits are an error naming the position
//! and leave the cache as it was; a temperature too small for softmax
//! samples greedily; a context of two billion positions builds RoPE tables
//! for the session's capacity only; an engine sequence with non-finite
//! logits fails alone; a turn that cannot fit is refused before it is
//! tokenized; a llama2.c checkpoint is mapped, not read into memory.
//! (Templates rendered in a child process, bounded in memory and time:
//! tests/cli.rs.)

mod common;

use kvgpu::{Chat, Message, Tokenizer};

/// The tiny llama2.c tokenizer (300 pieces).
fn tokenizer() -> Tokenizer {
    let dir = common::scratch("hostile");
    Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap()
}

#[test]
fn templates_that_would_run_without_bound_are_refused_with_the_reason() {
    let tok = tokenizer();
    let cases = [
        // Ten billion loop steps.
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "instructions",
        ),
        // minijinja's own batch reserves the count (a 96 GB allocation).
        ("{{ range(10) | batch(4000000000) }}", "batch of 4000000000"),
        // 100 MB of output.
        (
            "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
            "bytes",
        ),
        // A macro calling itself.
        (
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "recursion",
        ),
    ];
    for (template, reason) in cases {
        let err = Chat::with_template(template, &tok, None).unwrap_err();
        assert!(
            matches!(err, kvgpu::Error::ChatTemplate(ref m) if m.contains(reason)),
            "{template}: {err}"
        );
    }
}

#[test]
fn templates_use_macros_loop_controls_tojson_and_todays_date() {
    let tok = tokenizer();
    let template = "{% macro turn(m) %}<{{ m.role }}>{{ m.content | tojson }}{% endmacro %}\
        {% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ turn(m) }}{% endfor %}\
        |{{ strftime_now('%Y') | length }}";
    let chat = Chat::with_template(template, &tok, Some("be \"brief\"")).unwrap();
    let messages = [
        Message::new("system", "be \"brief\""),
        Message::new("user", "hi"),
        Message::new("user", "never shown"),
    ];
    let text = chat.render(&messages, false).unwrap();
    assert_eq!(text, "<system>\"be \\\"brief\\\"\"<user>\"hi\"|4");
}

#[test]
fn long_runs_of_one_letter_spaces_and_words_round_trip_through_both_tokenizers() {
    // 200 KB each: the old quadratic merging took minutes on such texts.
    let words = "the quick brown fox jumps over the lazy dog, then rests. ".repeat(3500);
    let texts = ["a".repeat(200_000), " ".repeat(200_000), words];
    let mut tokenizers = Vec::new();
    if let Some((_, tok512)) = common::stories() {
        tokenizers.push(tok512);
    }
    if let Some(path) = common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf") {
        tokenizers.push(kvgpu::Model::load(path).unwrap().1.unwrap());
    }
    for tok in &tokenizers {
        for text in &texts {
            let tokens = tok.encode(text, true, false).unwrap();
            let mut back = Vec::with_capacity(text.len());
            for pair in tokens.windows(2) {
                back.extend_from_slice(tok.decode(pair[0], pair[1]).unwrap());
            }
            let start = &text[..10];
            assert!(
                back == text.as_bytes(),
                "{} tokens of {start:?}..",
                tokens.len()
            );
        }
        let words = tok.encode(&texts[2], true, false).unwrap().len();
        assert!(
            words < texts[2].len() * 2 / 3,
            "words merged to {words} tokens"
        );
    }
}

#[test]
fn a_snapshot_of_no_positions_restores() {
    let gpu = require!(common::gpu());
    let gm = kvgpu::GpuModel::new(&gpu, &common::tiny_model(32)).unwrap();
    let path = common::scratch("hostile").join("empty.kvc");
    let mut s = kvgpu::Session::new(&gm, None).unwrap();
    s.save(&path, &[], None, None, &[]).unwrap();
    s.forward(5).unwrap();
    s.restore(&path).unwrap();
    assert_eq!(s.len(), 0);
    let got = s.forward(7).unwrap().to_vec();
    let mut fresh = kvgpu::Session::new(&gm, None).unwrap();
    assert_eq!(fresh.forward(7).unwrap(), &got[..], "as a fresh session");
}

#[test]
fn non_finite_logits_are_an_error_naming_the_position_and_change_nothing() {
    let gpu = require!(common::gpu());
    let mut model = common::tiny_model(32);
    // One NaN in the final norm's weights: every logit NaN.
    let mut g = vec![1.0; 48];
    g[5] = f32::NAN;
    model.weights.rms_final = kvgpu::tensor::Tensor::from_f32(1, 48, &g);
    let gm = kvgpu::GpuModel::new(&gpu, &model).unwrap();
    let mut s = kvgpu::Session::new(&gm, None).unwrap();
    let nonfinite = |r: kvgpu::Result<_>, at| match r {
        Err(kvgpu::Error::NonFiniteLogits { position }) => assert_eq!(position, at),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("NaN logits accepted"),
    };
    nonfinite(s.forward(3).map(|_| ()), 0);
    nonfinite(s.forward_greedy(3).map(|_| ()), 0);
    nonfinite(s.greedy_block(3, 4, &[]).map(|_| ()), 0);
    nonfinite(s.prefill(&[3, 4, 5]).map(|_| ()), 2);
    nonfinite(s.prefill_all(&[3, 4, 5]).map(|_| ()), 0);
    assert_eq!(s.len(), 0, "the cache as it was");
    let mut cpu = kvgpu::cpu::CpuSession::new(&model, None).unwrap();
    nonfinite(cpu.forward(3).map(|_| ()), 0);
    assert_eq!(cpu.len(), 0);
}

#[test]
fn an_engine_sequence_with_non_finite_logits_fails_alone() {
    let gpu = require!(common::gpu());
    // Token 9's embedding row is NaN: only sequences holding it are lost.
    let mut model = common::tiny_model(32);
    let e = &model.weights.token_embedding;
    let mut rows = e.to_f32();
    rows[9 * e.cols..10 * e.cols].fill(f32::NAN);
    model.weights.token_embedding = kvgpu::tensor::Tensor::from_f32(e.rows, e.cols, &rows);
    let gm = kvgpu::GpuModel::new(&gpu, &model).unwrap();
    let options = kvgpu::EngineOptions::default()
        .context(32)
        .page_size(8)
        .pages(8);
    let mut engine = kvgpu::Engine::new(&gm, options).unwrap();
    let bad = engine.add(&[1, 5, 9]).unwrap();
    let good = engine.add(&[1, 5, 7]).unwrap();
    assert!(matches!(
        engine.logits(good),
        Err(kvgpu::Error::NoLogits { .. })
    ));
    let ready = engine.step().unwrap();
    assert_eq!(ready.len(), 2);
    assert!(matches!(
        engine.logits(bad),
        Err(kvgpu::Error::NonFiniteLogits { position: 2 })
    ));
    let mut cpu = kvgpu::cpu::CpuSession::new(&model, None).unwrap();
    cpu.forward(1).unwrap();
    cpu.forward(5).unwrap();
    let expect = cpu.forward(7).unwrap();
    let diff = common::max_abs_diff(engine.logits(good).unwrap(), expect);
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn a_temperature_too_small_for_softmax_samples_greedily() {
    let logits: Vec<f32> = common::random(300, 4).iter().map(|v| v * 10.0).collect();
    let mut sampler = kvgpu::Sampler::new(1e-45, 1.0, 9).unwrap();
    for _ in 0..5 {
        assert_eq!(sampler.sample(&logits), kvgpu::sampler::argmax(&logits));
    }
}

#[test]
fn a_context_of_two_billion_positions_builds_tables_for_the_session_only() {
    let gpu = require!(common::gpu());
    // Its RoPE table for the whole context would be 68 GB.
    let huge = kvgpu::GpuModel::new(&gpu, &common::tiny_model(i32::MAX as usize)).unwrap();
    let small = kvgpu::GpuModel::new(&gpu, &common::tiny_model(32)).unwrap();
    let options = kvgpu::SessionOptions::default().capacity(32);
    let mut a = kvgpu::Session::with_options(&huge, options).unwrap();
    let mut b = kvgpu::Session::new(&small, None).unwrap();
    for t in [1, 7, 9, 200] {
        assert_eq!(a.forward(t).unwrap(), b.forward(t).unwrap());
    }
}

#[test]
fn a_prompt_that_cannot_fit_however_it_tokenizes_is_refused_first() {
    let mut tokenizers = vec![tokenizer()];
    if let Some((_, tok512)) = common::stories() {
        tokenizers.push(tok512);
    }
    if let Some(path) = common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf") {
        tokenizers.push(kvgpu::Model::load(path).unwrap().1.unwrap());
    }
    // The bound is a lower bound on every tokenizer.
    for tok in &tokenizers {
        for text in common::varied_strings(500, 3) {
            let tokens = tok.encode_special(&text, false, false).unwrap().len();
            assert!(tok.min_tokens(&text) <= tokens, "{text:?}");
        }
    }
    // A 1 MB line for a 32-position chat: refused, the conversation as it was.
    let gpu = require!(common::gpu());
    let gm = kvgpu::GpuModel::new(&gpu, &common::tiny_model(32)).unwrap();
    let mut session = kvgpu::Session::new(&gm, None).unwrap();
    let tok = &tokenizers[0];
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let mut chat = Chat::with_template(template, tok, None).unwrap();
    let mut sampler = kvgpu::Sampler::greedy();
    let line = "a b c ".repeat(170_000);
    let err = chat.send(&mut session, tok, &mut sampler, &line, 4, |_| {});
    assert!(matches!(
        err,
        Err(kvgpu::Error::ContextFull { capacity: 32 })
    ));
    assert!(chat.messages().is_empty() && session.is_empty());
    let turn = chat.send(&mut session, tok, &mut sampler, "a b", 4, |_| {});
    assert_eq!(turn.unwrap().prefilled, 4, "<s> a ' ' b");
}

/// This process's resident memory in bytes (Linux).
#[cfg(target_os = "linux")]
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn a_llama2c_checkpoint_is_mapped_not_read_into_memory() {
    // A 2 GB checkpoint of zeros (sparse on disk): reading it would make
    // this process 2 GB larger; mapping it, only the pages touched.
    let header: [i32; 7] = [2048, 5632, 10, 16, 16, 32000, 64];
    let config = kvgpu::Config::from_llama2c_header(header).unwrap();
    let size = config.llama2c_file_size().unwrap();
    assert!(size > 2 << 30, "{size}");
    let path = common::scratch("hostile").join("big.bin");
    let file = std::fs::File::create(&path).unwrap();
    let bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_len(size).unwrap();
    let before = resident_bytes();
    let model = kvgpu::Model::load_llama2c(&path).unwrap();
    let grew = resident_bytes().saturating_sub(before);
    assert_eq!(model.weights.layers.len(), 10);
    assert!(grew < 256 << 20, "loading took {grew} bytes");
    let _ = std::fs::remove_file(&path);
}
