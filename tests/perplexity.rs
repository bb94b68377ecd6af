//! Perplexity through the batched prefill (`Session::prefill_all`) against
//! the CPU reference decoding token by token: llama.cpp's chunking and
//! scoring (`kvgpu::perplexity`) over stories260K-f16.gguf, the same value
//! within 0.01%, and every scored row's logits within the decode tests'
//! tolerance.

mod common;

use kvgpu::cpu::CpuSession;
use kvgpu::perplexity::{chunks, first_scored, log_softmax, Perplexity};
use kvgpu::{GpuModel, Model, Session};

/// The model's own greedy story (models README), then a second paragraph:
/// enough tokens for three chunks of 64.
const TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"
Once upon a time, there was a little boy named Timmy. Timmy loved to play with his toys and eat sandwiches. One day, Timmy's mom told him it was time to rest for a while.";

#[test]
fn gpu_perplexity_equals_the_cpu_reference_within_a_hundredth_of_a_percent() {
    let path = require!(common::model_file("stories260K-f16.gguf"));
    let gpu = require!(common::gpu());
    let (model, tok) = Model::load(path).unwrap();
    let tok = tok.unwrap();
    let n_ctx = 64;
    let tokens = tok.encode(TEXT, tok.add_bos(), false).unwrap();
    let chunks = chunks(&tokens, n_ctx, Some(tok.bos()), 4);
    assert_eq!(chunks.len(), 3, "{} tokens", tokens.len());
    let vocab = model.config.vocab_size;
    let first = first_scored(n_ctx);
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut session = Session::new(&gm, Some(n_ctx)).unwrap();
    let (mut gpu_nll, mut cpu_nll) = (Vec::new(), Vec::new());
    let mut worst = 0f32;
    for chunk in &chunks {
        session.reset();
        session.feed(&chunk[..first]).unwrap();
        let rows = session.prefill_all(&chunk[first..n_ctx - 1]).unwrap();
        assert_eq!(rows.len(), (n_ctx - 1 - first) * vocab);
        let mut cpu = CpuSession::new(&model, Some(n_ctx)).unwrap();
        for (j, &t) in chunk[..n_ctx - 1].iter().enumerate() {
            let expect = cpu.forward(t).unwrap().to_vec();
            if j < first {
                continue;
            }
            let got = &rows[(j - first) * vocab..][..vocab];
            worst = worst.max(common::max_abs_diff(got, &expect));
            let next = chunk[j + 1] as usize;
            gpu_nll.push(-log_softmax(got)[next]);
            cpu_nll.push(-log_softmax(&expect)[next]);
        }
    }
    let (g, c) = (
        Perplexity::from_nll(&gpu_nll),
        Perplexity::from_nll(&cpu_nll),
    );
    eprintln!(
        "ppl gpu {} cpu {} (max logit difference {worst})",
        g.ppl, c.ppl
    );
    assert_eq!(g.count, 3 * 31);
    assert!(worst < 1e-3, "logits differ by {worst}");
    assert!(
        (g.ppl - c.ppl).abs() / c.ppl < 1e-4,
        "{} vs {}",
        g.ppl,
        c.ppl
    );
}

#[test]
fn prefill_all_refuses_what_does_not_fit_and_changes_nothing() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, Some(16)).unwrap();
    s.prefill_all(&[1, 2, 3]).unwrap();
    assert!(matches!(s.prefill_all(&[]), Err(kvgpu::Error::EmptyInput)));
    let e = s.prefill_all(&[5; 14]).unwrap_err();
    assert!(
        matches!(e, kvgpu::Error::PromptTooLong { tokens: 14, .. }),
        "{e}"
    );
    assert!(matches!(
        s.prefill_all(&[9999]),
        Err(kvgpu::Error::TokenOutOfRange { .. })
    ));
    assert_eq!(s.cache().len(), 3);
}
