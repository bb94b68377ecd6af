//! Every weight type end to end: a random two-layer model whose matrices
//! (embedding and classifier included) are stored as one type, written to
//! GGUF and read back, decodes on the GPU as the CPU reference does: an
//! 8-token prompt through the batched prefill (matmul), then 32 greedy
//! tokens (matvec), the same tokens and logits within a stated tolerance.

mod common;

use kvgpu::cpu::CpuSession;
use kvgpu::gguf::Gguf;
use kvgpu::sampler::argmax;
use kvgpu::{DType, GpuModel, Model, Session, Tokenizer};

/// Logits differ by summation order only (f32 on both sides): at most this
/// fraction of the largest logit's magnitude (the largest difference seen
/// when this was written was about 1e-6 of it, for every type).
const RELATIVE_TOLERANCE: f32 = 1e-5;

// Every type, in two tests that run side by side (each type's kernels
// compile on one core).
#[test]
fn the_first_half_of_the_weight_types_decodes_like_the_cpu_reference() {
    decodes_like_the_cpu_reference(&DType::ALL[..8]);
}

#[test]
fn the_second_half_of_the_weight_types_decodes_like_the_cpu_reference() {
    decodes_like_the_cpu_reference(&DType::ALL[8..]);
}

fn decodes_like_the_cpu_reference(dtypes: &[DType]) {
    let gpu = require!(common::gpu());
    let dir = common::scratch("weight_types");
    let tok = Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap();
    let config = kvgpu::Config {
        dim: 256,
        hidden_dim: 512,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_size: 64,
        vocab_size: 300,
        seq_len: 64,
        shared_classifier: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_theta_window: 10000.0,
        sliding_window: 0,
        rope_dim: 64,
        rope_freq_factors: None,
        family: kvgpu::arch::Family::llama(),
    };
    let prompt: Vec<u32> = "once upon a time"
        .bytes()
        .take(8)
        .map(|b| b as u32 + 3)
        .collect();
    for &dtype in dtypes {
        let model = Model::random_with(config.clone(), dtype, 11).unwrap();
        let bytes = model.to_gguf(&tok, dtype).unwrap();
        let model = Model::from_gguf(&Gguf::from_vec(bytes).unwrap()).unwrap();
        for t in [&model.weights.token_embedding, &model.weights.layers[1].w2] {
            assert_eq!(t.dtype, dtype);
        }
        let mut cpu = CpuSession::new(&model, None).unwrap();
        let gpu_model = GpuModel::new(&gpu, &model).unwrap();
        let mut s = Session::new(&gpu_model, None).unwrap();
        let mut expect = Vec::new();
        for &t in &prompt {
            expect = cpu.forward(t).unwrap().to_vec();
        }
        let mut got = s.prefill(&prompt).unwrap().to_vec();
        let mut worst = 0f32;
        let (mut cpu_tokens, mut gpu_tokens) = (Vec::new(), Vec::new());
        for step in 0..32 {
            let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = common::max_abs_diff(&got, &expect) / scale;
            worst = worst.max(diff);
            assert!(
                diff <= RELATIVE_TOLERANCE,
                "{dtype:?} step {step}: logits differ by {diff} of {scale}"
            );
            let (c, g) = (argmax(&expect), argmax(&got));
            cpu_tokens.push(c);
            gpu_tokens.push(g);
            expect = cpu.forward(c).unwrap().to_vec();
            got = s.forward(g).unwrap().to_vec();
        }
        assert_eq!(gpu_tokens, cpu_tokens, "{dtype:?}");
        eprintln!(
            "{dtype:?}: 32 greedy tokens equal, worst logit difference {worst:e} of the largest"
        );
    }
}
