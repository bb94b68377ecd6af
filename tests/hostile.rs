//! Hostile input: chat templates (programs inside downloaded files) that
//! would run, nest or allocate without bound are refused as `ChatTemplate`
//! with the reason, while the features real templates use still work; both
//! tokenizers round-trip long runs of one letter, of spaces and of words,
//! on which the old quadratic merging took minutes; a snapshot of no
//! positions restores; non-finite logits are an error naming the position
//! and leave the cache as it was; a temperature too small for softmax
//! samples greedily; a context of two billion positions builds RoPE tables
//! for the session's capacity only.

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
