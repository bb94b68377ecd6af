//! Real and synthetic GGUF models: the llama2.c reference texts from the GGUF
//! files with their own tokenizer, tokenizer agreement with tok512.bin,
//! quantized models against F32, a 128k-token F16 embedding larger than a
//! storage binding, and the byte-level BPE tokenizer against Hugging Face's
//! `tokenizers`.

mod common;

use common::{max_abs_diff, varied_strings};
use kvgpu::cpu::CpuSession;
use kvgpu::gguf::{Gguf, Value};
use kvgpu::rng::XorShift;
use kvgpu::sampler::argmax;
use kvgpu::tokenizer::{ByteBpe, PreTokenizer, TextStream};
use kvgpu::{generate, DType, GpuModel, Model, Sampler, Session, Tokenizer};

const GREEDY_START: &str =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
const GREEDY_END: &str = "Her mom said, \"Don't worry, Lily. We can help you.";
const SAMPLED: &str = "Once upon a time, there was a little boy named Timmy. Timmy loved to play with his toys and eat sandwiches. One day, Timmy's mom told him it was time to rest for a while. Timmy's friend Billy came over and took him a down.
Timmy's mom saw that Timmy was sad, but Timmy said, \"I didn't understand what is it! We need to find some leafs.\" Timmy thought about it and took a deep breath on a spoon. He hoped it was important to be kind and continued to find its image next time.
After they finished getting, Timmy's dad came up to his house and promised to help Timmy.";
const ZOO: &str = "Zoo was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but she didn't want to play with";

fn load(file: &str) -> Option<(Model, Tokenizer)> {
    let (m, t) = Model::load(common::model_file(file)?).unwrap();
    Some((m, t.expect("GGUF holds its tokenizer")))
}

fn run(
    model: &Model,
    tok: &Tokenizer,
    gpu: &kvgpu::Gpu,
    prompt: &str,
    steps: usize,
    sampler: Sampler,
) -> String {
    let mut s = Session::new(&GpuModel::new(gpu, model).unwrap(), None).unwrap();
    generate(&mut s, tok, &mut sampler.clone(), prompt, steps, |_| {})
        .unwrap()
        .text
}

/// Checks the greedy and "Zoo" references; returns the greedy text.
fn greedy_and_zoo(model: &Model, tok: &Tokenizer, gpu: &kvgpu::Gpu) -> String {
    let greedy = run(model, tok, gpu, "", 256, Sampler::greedy());
    assert!(
        greedy.starts_with(GREEDY_START) && greedy.trim_end().ends_with(GREEDY_END),
        "{greedy}"
    );
    let zoo = run(model, tok, gpu, "Zoo", 60, Sampler::greedy());
    assert_eq!(zoo.trim_end(), ZOO);
    greedy
}

#[test]
fn f32_gguf_gives_the_three_reference_texts() {
    let (model, tok) = require!(load("stories260K.gguf"));
    let gpu = require!(common::gpu());
    let greedy = greedy_and_zoo(&model, &tok, &gpu);
    assert_eq!(
        run(
            &model,
            &tok,
            &gpu,
            "",
            256,
            Sampler::new(1.0, 0.9, 133742).unwrap()
        )
        .trim_end(),
        SAMPLED
    );
    // And the greedy text is the .bin's, byte for byte.
    let (bin, tok512) = require!(common::stories());
    assert_eq!(greedy, run(&bin, &tok512, &gpu, "", 256, Sampler::greedy()));
}

#[test]
fn f16_gguf_gives_the_greedy_reference_texts() {
    let (model, tok) = require!(load("stories260K-f16.gguf"));
    let gpu = require!(common::gpu());
    greedy_and_zoo(&model, &tok, &gpu);
    // Sampling: F16-rounded weights move logits by up to ~6e-3, and at
    // position 81 two candidates' order flips, so the seeded text follows
    // the F16 model, not run.c's F32 one. The GPU must still agree with the
    // CPU reference on the same weights.
    let sampler = Sampler::new(1.0, 0.9, 133742).unwrap();
    let gpu_text = run(&model, &tok, &gpu, "", 256, sampler.clone());
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let cpu_text = generate(&mut cpu, &tok, &mut sampler.clone(), "", 256, |_| {})
        .unwrap()
        .text;
    assert_eq!(gpu_text, cpu_text);
    assert!(
        SAMPLED.starts_with(&gpu_text[..200]),
        "same text for the first positions"
    );
}

#[test]
fn gguf_tokenizer_encodes_like_tok512() {
    let (_, gguf_tok) = require!(load("stories260K.gguf"));
    let (_, tok512) = require!(common::stories());
    for text in varied_strings(4000, 1) {
        assert_eq!(
            gguf_tok.encode(&text, true, false).unwrap(),
            tok512.encode(&text, true, false).unwrap(),
            "{text:?}"
        );
    }
}

/// Top-1 agreement of `dtype` weights with the F32 model, teacher-forced on
/// the F32 greedy sequence for 256 positions (quantized on the GPU).
fn agreement(dtype: DType) -> Option<f64> {
    let dir = common::models_dir()?;
    let gpu = common::gpu()?;
    let (model, _) = Model::load(dir.join("stories260K.bin")).unwrap();
    let tok = Tokenizer::load(dir.join("tok512.bin"), 512).unwrap();
    // Quantized through the same path as `kvgpu quantize`.
    let bytes = model.to_gguf(&tok, dtype).unwrap();
    let quant = Model::from_gguf(&Gguf::from_vec(bytes).unwrap()).unwrap();
    assert!(quant.weights.layers[0].wq.dtype == dtype);
    let mut reference = CpuSession::new(&model, None).unwrap();
    let mut s = Session::new(&GpuModel::new(&gpu, &quant).unwrap(), None).unwrap();
    let (mut token, mut agree) = (tok.bos(), 0);
    for _ in 0..256 {
        let next = argmax(reference.forward(token).unwrap());
        agree += (s.forward_greedy(token).unwrap() == next) as usize;
        token = next;
    }
    Some(agree as f64 / 256.0)
}

#[test]
fn q8_0_agrees_with_f32_at_least_97_percent() {
    let a = require!(agreement(DType::Q8_0));
    eprintln!("Q8_0 top-1 agreement with F32: {:.1}%", 100.0 * a);
    assert!(a >= 0.97, "{a}");
}

#[test]
fn q4_0_agrees_with_f32_at_least_80_percent() {
    let a = require!(agreement(DType::Q4_0));
    eprintln!("Q4_0 top-1 agreement with F32: {:.1}%", 100.0 * a);
    assert!(a >= 0.80, "{a}");
}

#[test]
fn embedding_of_128k_tokens_larger_than_a_storage_binding() {
    let gpu = require!(common::gpu());
    let (vocab, dim, hidden) = (128_256usize, 2048usize, 64usize);
    // F16 bits with random sign and mantissa, magnitude in [1/64, 1/32).
    let mut rng = XorShift::new(99);
    let mut f16s = |n: usize| -> Vec<u8> {
        (0..n / 2)
            .flat_map(|_| {
                let r = rng.next_u32();
                ((r & 0x83FF_83FF) | 0x2400_2400).to_le_bytes()
            })
            .collect()
    };
    let emb = f16s(vocab * dim);
    let (wq, wkv, wo) = (f16s(dim * dim), f16s(dim * 512), f16s(dim * dim));
    let (w13, w2) = (f16s(dim * hidden), f16s(hidden * dim));
    let norm: Vec<u8> = (0..dim).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    let u = |v: usize| Value::U32(v as u32);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("llama.vocab_size".into(), u(vocab)),
        ("llama.context_length".into(), u(8)),
        ("llama.embedding_length".into(), u(dim)),
        ("llama.block_count".into(), u(1)),
        ("llama.feed_forward_length".into(), u(hidden)),
        ("llama.attention.head_count".into(), u(16)),
        ("llama.attention.head_count_kv".into(), u(4)),
    ];
    let d = dim as u64;
    let tensors: Vec<(String, Vec<u64>, DType, &[u8])> = vec![
        (
            "token_embd.weight".into(),
            vec![d, vocab as u64],
            DType::F16,
            &emb,
        ),
        ("blk.0.attn_norm.weight".into(), vec![d], DType::F32, &norm),
        ("blk.0.attn_q.weight".into(), vec![d, d], DType::F16, &wq),
        ("blk.0.attn_k.weight".into(), vec![d, 512], DType::F16, &wkv),
        ("blk.0.attn_v.weight".into(), vec![d, 512], DType::F16, &wkv),
        (
            "blk.0.attn_output.weight".into(),
            vec![d, d],
            DType::F16,
            &wo,
        ),
        ("blk.0.ffn_norm.weight".into(), vec![d], DType::F32, &norm),
        (
            "blk.0.ffn_gate.weight".into(),
            vec![d, hidden as u64],
            DType::F16,
            &w13,
        ),
        (
            "blk.0.ffn_down.weight".into(),
            vec![hidden as u64, d],
            DType::F16,
            &w2,
        ),
        (
            "blk.0.ffn_up.weight".into(),
            vec![d, hidden as u64],
            DType::F16,
            &w13,
        ),
        ("output_norm.weight".into(), vec![d], DType::F32, &norm),
    ];
    let path = common::scratch("big_embedding").join("big.gguf");
    std::fs::write(&path, kvgpu::gguf::write(&metadata, &tensors, 32)).unwrap();
    drop((emb, wq, wkv, wo, w13, w2));
    let g = Gguf::open(&path).unwrap();
    let model = Model::from_gguf(&g).unwrap();
    assert!(model.config.shared_classifier);
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, None).unwrap();
    let binding = gpu.device.limits().max_storage_buffer_binding_size;
    assert!(
        model.weights.token_embedding.bytes().len() as u64 > binding,
        "the table is larger than one storage binding"
    );
    let mut cpu = CpuSession::new(&model, None).unwrap();
    // Tokens in the first, a middle and the last chunk.
    for token in [0, 70_001, 128_255] {
        let got = s.forward(token).unwrap().to_vec();
        let expect = cpu.forward(token).unwrap();
        let diff = max_abs_diff(&got, expect);
        assert!(diff <= 1e-3, "token {token}: logits differ by {diff}");
    }
    let _ = std::fs::remove_file(&path);
}

/// A byte-level BPE trained by Hugging Face `tokenizers` on a small corpus,
/// with the given pre-tokenizer; returns it and kvgpu's tokenizer built from
/// its vocabulary and merges.
fn trained_pair(pre: &str) -> (tokenizers::Tokenizer, Tokenizer) {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

    let mut corpus: Vec<String> = varied_strings(600, 7);
    corpus.extend(
        [
            "The quick brown fox jumps over the lazy dog. It's 2024, and we've got 1234567 reasons!",
            "Once upon a time, there was a little girl named Lily. She loved to play outside.",
            "def main():\n    print('hello world')  # comment\n\n\treturn 0",
            "日本語のテキストと한국어 텍스트, émigré naïve café — “quotes” and ‘single’.",
        ]
        .iter()
        .map(|s| s.repeat(3)),
    );
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(false);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "gpt2" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap()
            .into(),
            byte_level.use_regex(false).into(),
        ])
        .into(),
        _ => unreachable!(),
    };
    let mut hf = tokenizers::TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(pre_tokenizer))
    .build()
    .unwrap();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(700)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    hf.train(&mut trainer, corpus.iter()).unwrap();
    let hf: tokenizers::Tokenizer = hf.into();

    let model = serde_json::to_value(hf.get_model()).unwrap();
    let vocab = hf.get_vocab(false);
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id as usize] = t;
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    assert!(merges.len() > 100, "trained {} merges", merges.len());
    let types = vec![1i64; tokens.len()];
    let ours = Tokenizer::byte_bpe(ByteBpe {
        tokens: &tokens,
        types: &types,
        merges: &merges,
        pre: PreTokenizer::named(pre).unwrap(),
        bos: 0,
        eos: 0,
        unknown: None,
        add_bos: false,
    })
    .unwrap();
    (hf, ours)
}

fn check_byte_bpe(pre: &str) {
    let (hf, ours) = trained_pair(pre);
    for text in varied_strings(3000, 11) {
        let expect = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        let got = ours.encode(&text, false, false).unwrap();
        assert_eq!(got, expect, "{pre}: {text:?}");
        let mut stream = TextStream::new();
        let mut back = String::new();
        for w in got.windows(1) {
            back += &stream.push(ours.decode(u32::MAX, w[0]).unwrap());
        }
        back += &stream.finish();
        assert_eq!(back, text, "{pre}: round trip");
    }
}

#[test]
fn gpt2_byte_bpe_agrees_with_hf_tokenizers() {
    check_byte_bpe("gpt2");
}

#[test]
fn llama3_byte_bpe_agrees_with_hf_tokenizers() {
    check_byte_bpe("llama-bpe");
}

#[test]
fn smollm_byte_bpe_agrees_with_hf_tokenizers() {
    check_byte_bpe("smollm");
}

#[test]
fn control_tokens_in_text_stay_whole() {
    let (_, tok) = require!(load("stories260K.gguf"));
    // "<s>" and "</s>" are control tokens 1 and 2 in the GGUF vocabulary.
    let plain = tok.encode("a<s>b", false, false).unwrap();
    assert!(!plain.contains(&1), "{plain:?}");
    let special = tok.encode_special("a<s>b</s>", false, false).unwrap();
    assert!(
        special.contains(&1) && special.ends_with(&[2]),
        "{special:?}"
    );
}
