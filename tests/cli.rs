//! The `kvgpu` binary as a user runs it: the reference texts through its
//! llama.cpp-style flags, and bad flags and files answered with a message
//! that names the problem and the file, and a non-zero exit code.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{GREEDY, ZOO};
use kvgpu::{generate, GpuModel, Length, Sampler, Session};

fn kvgpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvgpu"))
        .args(args)
        .output()
        .expect("the kvgpu binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

#[test]
fn run_reproduces_the_reference_texts() {
    let dir = require!(common::models_dir());
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let bin = dir.join("stories260K.bin");
    // -n 50: the greedy text's first 50 tokens (tok512.bin found beside the model).
    let out = kvgpu(&["run", "-m", path(&bin), "-n", "50", "--temp", "0"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let mut s = Session::new(&GpuModel::new(&gpu, &model).unwrap(), None).unwrap();
    let first_50 = generate(
        &mut s,
        &tok,
        &mut Sampler::greedy(),
        "",
        Length::NewTokens(50),
        |_| {},
    )
    .unwrap();
    assert_eq!(first_50.generated_tokens, 50);
    assert_eq!(stdout, format!("{}\n", first_50.text));
    assert!(GREEDY.starts_with(first_50.text.trim_end()));
    // No -m: stories260K found through KVGPU_MODELS; run.c's --steps 256.
    let out = Command::new(env!("CARGO_BIN_EXE_kvgpu"))
        .args(["run", "--steps", "256", "--temp", "0"])
        .env("KVGPU_MODELS", &dir)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("{GREEDY}\n"));
    // A prompt, and the summary line.
    let tokenizer = dir.join("tok512.bin");
    let out = kvgpu(&[
        "run",
        "-m",
        path(&bin),
        "--tokenizer",
        path(&tokenizer),
        "-p",
        "Zoo",
        "--steps",
        "60",
        "--temp",
        "0",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("{ZOO}\n"));
    assert!(stderr.contains("KV cache: 655360 bytes"), "{stderr}");
    assert!(stderr.contains("F32)"), "{stderr}");
}

/// Runs `args`, expects failure, and checks stderr names each of `expect`.
fn fails_saying(args: &[&str], expect: &[&str]) {
    let out = kvgpu(args);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{args:?}: {e:?} not in: {stderr}");
    }
}

#[test]
fn bad_files_and_flags_get_messages_naming_the_problem_and_the_file() {
    let dir = common::scratch("cli");
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    fails_saying(
        &["run", "-m", path(&empty)],
        &[path(&empty), "not a model file", "empty"],
    );
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "These are my shopping notes: eggs, flour, milk.\n").unwrap();
    fails_saying(
        &["run", "-m", path(&notes)],
        &[path(&notes), "not a model file"],
    );
    fails_saying(&["run", "-m", path(&dir)], &[path(&dir), "directory"]);
    let missing = dir.join("missing.gguf");
    fails_saying(
        &["run", "-m", path(&missing)],
        &[path(&missing), "No such file"],
    );
    // A GGUF model given as the tokenizer.
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, common::tiny_gguf(kvgpu::DType::F32)).unwrap();
    fails_saying(
        &["run", "-m", path(&gguf), "--tokenizer", path(&gguf)],
        &[path(&gguf), "not a llama2.c tokenizer", "GGUF"],
    );
    // A llama2.c checkpoint given as the tokenizer.
    let checkpoint = dir.join("tiny.bin");
    common::tiny_model(16).save_llama2c(&checkpoint).unwrap();
    fails_saying(
        &["run", "-m", path(&gguf), "--tokenizer", path(&checkpoint)],
        &[path(&checkpoint), "not a llama2.c tokenizer", "checkpoint"],
    );
    fails_saying(
        &[
            "quantize",
            "-m",
            path(&notes),
            "--type",
            "q8_0",
            "-o",
            "x.gguf",
        ],
        &[path(&notes), "not a model file"],
    );
    // Negative numbers are values: checked, not taken for flags.
    fails_saying(
        &["run", "-m", path(&gguf), "--temp", "-1"],
        &["temperature", "-1"],
    );
    fails_saying(
        &["run", "-m", path(&gguf), "-n", "-5"],
        &["-5", "--n-predict"],
    );
    fails_saying(&["run", "-m", path(&gguf), "--top-k", "0"], &["top-k"]);
    fails_saying(
        &["run", "-m", path(&gguf), "-n", "5", "--steps", "9"],
        &["--steps", "cannot be used with"],
    );
    fails_saying(&["run", "--frobnicate"], &["--frobnicate"]);
}

#[test]
fn too_many_new_tokens_are_announced_not_silently_cut() {
    require!(common::gpu());
    let dir = common::scratch("cli-long");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, common::tiny_gguf(kvgpu::DType::F32)).unwrap();
    // The tiny model's context is 16 positions.
    let out = kvgpu(&["run", "-m", path(&gguf), "-n", "100000", "--temp", "0"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: -n 100000") && stderr.contains("holds 16"),
        "{stderr}"
    );
    assert!(stderr.contains("generated tokens: 16"), "{stderr}");
    // A context the model does not have.
    fails_saying(
        &["run", "-m", path(&gguf), "-c", "100000", "-n", "1"],
        &["capacity 100000", "16"],
    );
}
