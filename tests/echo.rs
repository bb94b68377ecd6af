//! The prompt is echoed exactly as typed, control-token text included, for
//! every kind of tokenizer (SentencePiece in GGUF, byte-level BPE, llama2.c),
//! and what is generated after it is what the same tokens give without the
//! echo; generated control tokens show only when asked (`--special`).
#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use kvgpu::{generate, generate_tokens, GpuModel, Length, Model, Sampler, Session, Tokenizer};

/// `generate`'s text for `prompt` (echo then continuation), and the
/// continuation alone from the same prompt tokens.
fn echoed(model: &Model, tok: &Tokenizer, prompt: &str, n: usize) -> (String, String) {
    let gpu = common::gpu().expect("checked by the caller");
    let gm = GpuModel::new(&gpu, model).unwrap();
    let length = Length::NewTokens(n);
    let mut s = Session::new(&gm, Some(256)).unwrap();
    let with_echo = generate(&mut s, tok, &mut Sampler::greedy(), prompt, length, |_| {})
        .unwrap()
        .text;
    let tokens = tok.encode_special(prompt, tok.add_bos(), false).unwrap();
    let mut s = Session::new(&gm, Some(256)).unwrap();
    let alone = generate_tokens(&mut s, tok, &mut Sampler::greedy(), &tokens, length, |_| {})
        .unwrap()
        .text;
    (with_echo, alone)
}

fn check(model: &Model, tok: &Tokenizer, prompt: &str, n: usize) {
    let (with_echo, alone) = echoed(model, tok, prompt, n);
    let rest = with_echo.strip_prefix(prompt);
    assert!(
        rest.is_some(),
        "{with_echo:?} does not start with {prompt:?}"
    );
    assert_eq!(rest.unwrap(), alone, "the continuation changed");
    assert!(!alone.is_empty());
}

#[test]
fn sentencepiece_gguf_echoes_control_token_text() {
    let (model, tok) = Model::load(require!(common::model_file("stories260K.gguf"))).unwrap();
    let tok = tok.unwrap();
    require!(common::gpu());
    // <s> and </s> are stories260K.gguf's control tokens; the spaces around
    // them and the newline are kept as typed.
    let prompt = "Once upon <s> a time</s>,\n  there";
    assert!(tok
        .encode_special(prompt, false, false)
        .unwrap()
        .contains(&tok.bos()));
    check(&model, &tok, prompt, 12);
}

#[test]
fn byte_level_bpe_echoes_control_token_text() {
    let path = require!(common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let (model, tok) = Model::load(path).unwrap();
    let tok = tok.unwrap();
    require!(common::gpu());
    let prompt =
        "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n";
    check(&model, &tok, prompt, 4);
}

#[test]
fn llama2c_tokenizer_echoes_the_prompt_as_typed() {
    let (model, tok) = require!(common::stories());
    require!(common::gpu());
    // llama2.c's vocabulary has no control tokens: "<s>" is plain text here.
    check(&model, &tok, "Zoo <s> and  the park", 12);
}

#[test]
fn special_shows_generated_control_tokens_and_only_then() {
    let path = require!(common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf"));
    require!(common::gpu());
    let prompt =
        "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n";
    let run = |special: bool| {
        let mut args = vec![
            "run",
            "-m",
            path.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "12",
        ];
        args.extend(["-p", prompt]);
        if special {
            args.push("--special");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_kvgpu"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The reply ends at <|im_end|>: printed with --special, left out without.
    let answer = "The capital of Japan is Tokyo.";
    let plain = run(false);
    assert!(
        plain.starts_with(&format!("{prompt}{answer}\n")),
        "{plain:?}"
    );
    let special = run(true);
    assert!(
        special.starts_with(&format!("{prompt}{answer}<|im_end|>\n")),
        "{special:?}"
    );
}
