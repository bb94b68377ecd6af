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

/// The number after `label` in `line`, e.g. 0.25 after "load " in "load 0.25 s".
fn number_after(line: &str, label: &str) -> f64 {
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {line}"))
        + label.len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line}"))
}

/// Start-up is visible: the stats line's parts (file, device, kernels and
/// their count, weights) make up its load time, and load and generation
/// its total, which is the process's wall time but for its start and exit;
/// `--json` carries the kernels too.
#[test]
fn the_stats_line_accounts_for_the_wall_time() {
    require!(common::stories());
    let started = std::time::Instant::now();
    let out = kvgpu(&["run", "-p", "Once upon a time", "-n", "16", "--temp", "0"]);
    let wall = started.elapsed().as_secs_f64();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let stats = stderr
        .lines()
        .find(|l| l.starts_with("adapter: "))
        .expect("a stats line");
    let load = number_after(stats, "| load ");
    let parts = [
        "(file ",
        ", device ",
        ", kernels ",
        ", weights and KV cache ",
    ]
    .map(|label| number_after(stats, label));
    let sum: f64 = parts.iter().sum();
    // Each printed to 0.01 s.
    assert!(
        (sum - load).abs() <= 0.03,
        "{parts:?} add to {sum}, not {load}: {stats}"
    );
    assert!(
        number_after(stats, " s: ") >= 10.0,
        "the kernels compiled: {stats}"
    );
    let generation = number_after(stats, " positions in ");
    let total = number_after(stats, "| total ");
    assert!(load + generation <= total + 0.02, "{stats}");
    assert!(
        load + generation >= 0.9 * total,
        "load and generation are most of the total: {stats}"
    );
    assert!(
        total <= wall && wall - total <= (0.1 * wall).max(0.3),
        "wall {wall} s: {stats}"
    );

    let out = kvgpu(&["run", "-p", "Once", "-n", "4", "--temp", "0", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let timings = &json["timings"];
    assert!(
        timings["kernels_compiled"].as_u64().unwrap() >= 10,
        "{json}"
    );
    assert!(timings["kernels_seconds"].as_f64().unwrap() > 0.0, "{json}");
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
    // -m with a bare file name: found in KVGPU_MODELS (its tokenizer beside
    // it), from a folder that does not hold it.
    let out = Command::new(env!("CARGO_BIN_EXE_kvgpu"))
        .args(["run", "-m", "stories260K.bin", "-n", "50", "--temp", "0"])
        .env("KVGPU_MODELS", &dir)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, format!("{}\n", first_50.text));
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
    // A state file that is the model file, or that cannot be written: refused
    // before anything is generated (nothing on stdout).
    for (state, expect) in [
        (path(&gguf), &["will not write", "input file"][..]),
        (
            "/nonexistent/x.kvs",
            &["cannot write /nonexistent/x.kvs"][..],
        ),
    ] {
        let out = kvgpu(&["run", "-m", path(&gguf), "-n", "4", "--save-state", state]);
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success() && stdout.is_empty(),
            "{stdout} {stderr}"
        );
        for e in expect {
            assert!(stderr.contains(e), "{e:?} not in {stderr}");
        }
    }
    assert_eq!(
        std::fs::read(&gguf).unwrap(),
        common::tiny_gguf(kvgpu::DType::F32)
    );
    fails_saying(
        &["run", "-m", path(&gguf), "-f", "/nonexistent/prompt.txt"],
        &["cannot read the prompt file /nonexistent/prompt.txt"],
    );
    // A download cut short, in the tensor data and in the metadata.
    let bytes = common::tiny_gguf(kvgpu::DType::F32);
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let end = (bytes.len() - 100).to_string();
    fails_saying(
        &["run", "-m", path(&cut)],
        &[
            path(&cut),
            &format!("file ends at byte {end} but tensor"),
            "truncated (incomplete download?)",
        ],
    );
    std::fs::write(&cut, &bytes[..2000]).unwrap();
    fails_saying(
        &["run", "-m", path(&cut)],
        &[path(&cut), "incomplete download?"],
    );
}

#[test]
fn bench_profiles_a_decode_step_at_the_positions_asked() {
    let dir = require!(common::models_dir());
    require!(common::gpu());
    let bench = |at: &str| {
        Command::new(env!("CARGO_BIN_EXE_kvgpu"))
            .args([
                "bench",
                "--models",
                "stories260K",
                "--tokens",
                "2",
                "--runs",
                "1",
            ])
            .args([
                "--no-cache-lengths",
                "",
                "--prompt",
                "2",
                "--profile-at",
                at,
            ])
            .env("KVGPU_MODELS", &dir)
            .output()
            .unwrap()
    };
    let out = bench("300,512");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Position 300 attends past one split (256 positions): the merge runs.
    let at_300 = stdout
        .split("at position 300 (512-position cache, least of 1 profiles)")
        .nth(1)
        .unwrap_or_else(|| panic!("no profile at position 300 in:\n{stdout}"));
    assert!(at_300.contains("| attention_combine | 5 |"), "{stdout}");
    // Past the context: left out.
    assert!(!stdout.contains("at position 512"), "{stdout}");
    let out = bench("16,x");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--profile-at 16,x: \"x\" is not a whole number"),
        "{stderr}"
    );
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
    // The prompt from a file (-f) is the prompt given with -p.
    let prompt = dir.join("prompt.txt");
    std::fs::write(&prompt, "<0x41> <s> x").unwrap();
    let from_file = kvgpu(&[
        "run",
        "-m",
        path(&gguf),
        "-f",
        path(&prompt),
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    let given = kvgpu(&[
        "run",
        "-m",
        path(&gguf),
        "-p",
        "<0x41> <s> x",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    assert!(from_file.status.success(), "{}", text(&from_file).1);
    assert_eq!(text(&from_file).0, text(&given).0);
    // llama.cpp's -n -1 (until an end token or a full context), with its
    // other flags: -s -1 (a random seed, printed), -ngl and -t (accepted,
    // noted), -ctk/-ctv (one KV type), -np (--parallel).
    let out = kvgpu(&[
        "run",
        "-m",
        path(&gguf),
        "-n",
        "-1",
        "-s",
        "-1",
        "-ngl",
        "99",
        "-t",
        "4",
        "-ctk",
        "f16",
        "-ctv",
        "f16",
        "--temp",
        "0.8",
        // The 16-position context fills whatever the random seed samples.
        "--ignore-eos",
    ]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for expect in [
        "generated tokens: 16",
        "seed: ",
        "-ngl is accepted",
        "-t is accepted",
        "F16",
    ] {
        assert!(stderr.contains(expect), "{expect:?} not in {stderr}");
    }
    assert!(!stderr.contains("warning"), "{stderr}");
    fails_saying(
        &["run", "-m", path(&gguf), "-ctk", "q8_0", "-ctv", "f16"],
        &["-ctk q8_0 and -ctv f16", "--kv-type"],
    );
    fails_saying(
        &["run", "-m", path(&gguf), "-cnv"],
        &["kvgpu chat -m MODEL"],
    );
    let out = kvgpu(&["run", "-m", path(&gguf), "-n", "4", "-np", "2", "-s", "5"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("--- continuation 2 (seed 6) ---"));
    // The largest count there is: the same, not wrapped round to a few.
    let most = u64::MAX.to_string();
    let out = kvgpu(&["run", "-m", path(&gguf), "-n", &most, "--temp", "0"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("generated tokens: 16"), "{stderr}");
    // As many sequences as would overflow the pool's size.
    fails_saying(
        &[
            "run",
            "-m",
            path(&gguf),
            "-n",
            "4",
            "--parallel",
            "576460752303423488",
        ],
        &["pages", "more bytes than can be counted"],
    );
    // The most positions to keep: refused, not wrapped round.
    fails_saying(
        &[
            "run",
            "-m",
            path(&gguf),
            "-n",
            "40",
            "--context-shift",
            "--keep",
            &most,
        ],
        &["cannot keep 18446744073709551615 positions"],
    );
    // A context the model does not have.
    fails_saying(
        &["run", "-m", path(&gguf), "-c", "100000", "-n", "1"],
        &["capacity 100000", "16"],
    );
}

/// llama.cpp's repetition penalties, greedy: the text equals a CPU
/// reference that applies llama.cpp's formula itself over the last 16
/// tokens run (the prompt's included), and differs from plain greedy.
#[test]
fn penalties_follow_llama_cpp_s_formula() {
    let (model, tok) = require!(common::stories());
    let dir = common::models_dir().unwrap();
    let checkpoint = dir.join("stories260K.bin");
    let prompt = "Once upon a time, there was a little";
    let (last_n, repeat, frequency, presence) = (16, 1.3f32, 0.1f32, 0.2f32);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            path(&checkpoint),
            "-p",
            prompt,
            "-n",
            "40",
            "--temp",
            "0",
        ];
        args.extend(extra);
        let out = kvgpu(&args);
        assert!(out.status.success(), "{}", text(&out).1);
        text(&out).0
    };
    let penalized = run(&[
        "--repeat-penalty",
        "1.3",
        "--repeat-last-n",
        "16",
        "--frequency-penalty",
        "0.1",
        "--presence-penalty",
        "0.2",
    ]);
    // The reference: the CPU model, the formula, argmax.
    let mut cpu = kvgpu::cpu::CpuSession::new(&model, None).unwrap();
    let mut fed = tok.encode(prompt, true, false).unwrap();
    for &t in &fed[..fed.len() - 1] {
        cpu.forward(t).unwrap();
    }
    let mut expected = prompt.to_string();
    let mut stream = kvgpu::tokenizer::TextStream::new();
    for _ in 0..40 {
        let last = *fed.last().unwrap();
        let mut logits = cpu.forward(last).unwrap().to_vec();
        let window = &fed[fed.len().saturating_sub(last_n)..];
        let mut seen: Vec<u32> = window.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            let count = window.iter().filter(|&&w| w == t).count() as f32;
            let l = &mut logits[t as usize];
            *l = if *l <= 0.0 { *l * repeat } else { *l / repeat };
            *l -= count * frequency + presence;
        }
        let next = kvgpu::sampler::argmax(&logits);
        if tok.is_end(next) {
            break;
        }
        expected += &stream.push(tok.decode(last, next).unwrap());
        fed.push(next);
    }
    expected += &stream.finish();
    assert_eq!(penalized.trim_end(), expected);
    assert_ne!(penalized, run(&[]), "the penalties change the text");
}

/// `--stop` ends the text before the first stop string (streamed and in
/// `--json`, whose object serde reads: text, ids, stop reason, timings).
#[test]
fn stop_strings_and_json_output() {
    let dir = require!(common::models_dir());
    require!(common::gpu());
    let checkpoint = dir.join("stories260K.bin");
    let prompt = "Once upon a time";
    let base = [
        "run",
        "-m",
        path(&checkpoint),
        "-p",
        prompt,
        "-n",
        "60",
        "--temp",
        "0",
    ];
    let run = |extra: &[&str]| {
        let out = kvgpu(&[&base[..], extra].concat());
        assert!(out.status.success(), "{}", text(&out).1);
        text(&out).0
    };
    let plain = run(&[]);
    let continuation = plain.strip_prefix(prompt).unwrap();
    let cut = continuation.find(". ").expect("a sentence ends");
    // Streamed: the text up to the stop string, which is not printed.
    let stopped = run(&["--stop", ". ", "--stop", "never said"]);
    assert_eq!(
        stopped.trim_end(),
        format!("{prompt}{}", &continuation[..cut])
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["--stop", ". ", "--json"])).unwrap();
    assert_eq!(json["stop_reason"], "stop");
    assert_eq!(json["stop"], ". ");
    assert_eq!(json["content"], &continuation[..cut]);
    assert_eq!(json["text"], format!("{prompt}{}", &continuation[..cut]));
    assert!(json["timings"]["first_token_seconds"].as_f64().unwrap() > 0.0);
    // Without a stop: the length, and the ids decode to the content.
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["stop_reason"], "length");
    assert_eq!(json["content"], continuation.trim_end_matches('\n'));
    let ids = json["tokens"].as_array().unwrap();
    assert_eq!(ids.len(), 60);
    assert_eq!(json["generated_tokens"], 60);
}

/// SmolLM2 as published: the prompt as typed, the end at EOS, and
/// `--ignore-eos` running on past it.
#[test]
fn run_stops_at_end_of_sequence_unless_told_to_ignore_it() {
    let model = require!(common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let prompt = "The capital of France is";
    let args = [
        "run",
        "-m",
        path(&model),
        "-p",
        prompt,
        "-n",
        "-1",
        "--temp",
        "0",
        "-c",
        "64",
    ];
    // -n -1: until the end token (29 tokens in; the context holds 64).
    let out = kvgpu(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "The capital of France is Paris.\n\nThe answer is: 2018-01-22 12:12:53.\n"
    );
    assert!(stderr.contains("generated tokens: 29 "), "{stderr}");
    let mut args = args.to_vec();
    args[6] = "32";
    let out = kvgpu(&[&args[..], &["--ignore-eos"]].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("generated tokens: 32 "), "{stderr}");
    assert!(stdout
        .starts_with("The capital of France is Paris.\n\nThe answer is: 2018-01-22 12:12:53."));
}

/// Scripted turns from a pipe: one reply each, each turn prefilling only
/// its own tokens; a line that is not UTF-8 and a failed `/save` between
/// them are reported and the conversation goes on.
#[test]
fn chat_reads_turns_from_stdin() {
    use std::io::Write;
    let model = require!(common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvgpu"))
        .args([
            "chat",
            "-m",
            path(&model),
            "--temp",
            "0",
            "-n",
            "16",
            "-c",
            "256",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Between the turns, a line that is not UTF-8, a /save that fails,
    // /help and an unknown command: each answered here, the conversation
    // going on.
    stdin
        .write_all(
            b"What is the capital of France?\n\xff\xfe?\n/save /nonexistent/x.kvs\n/help\n/frob\nAnd of Italy?\n",
        )
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("Paris") && stdout.contains("Rome"),
        "{stdout}"
    );
    let prefilled: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(prefilled.len(), 2, "{stderr}");
    assert!(
        stderr.contains("[skipped a line that is not UTF-8 text (bad byte at 0)]"),
        "{stderr}"
    );
    assert!(stderr.contains("[not saved: "), "{stderr}");
    // Commands answered here, never sent: /help lists them, /frob is unknown.
    assert!(
        stderr.contains("/clear         start a new conversation"),
        "{stderr}"
    );
    assert!(stderr.contains("[unknown command /frob"), "{stderr}");
    assert!(
        prefilled[1] < prefilled[0],
        "turn 2 ran only its own tokens: {stderr}"
    );
}

/// Templates rendered as the tool renders them, in a child process: one
/// that doubles a string until it holds gigabytes is stopped by the child's
/// memory limit, one that copies 100 MB strings a million times by the
/// time limit; each is a `ChatTemplate` error naming the bound, and a real
/// template renders as it does in this process.
#[test]
fn templates_render_in_a_child_bounded_in_memory_and_time() {
    let dir = common::scratch("cli_template");
    let tok = kvgpu::Tokenizer::load(common::tiny_tokenizer_file(&dir), 300).unwrap();
    let plain = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}";
    let here = kvgpu::Chat::with_template(plain, &tok, Some(" hi ")).unwrap();
    let expected = here.render(here.messages(), true).unwrap();
    kvgpu::chat::isolate_templates(env!("CARGO_BIN_EXE_kvgpu"), &["render-template"]);
    let child = kvgpu::Chat::with_template(plain, &tok, Some(" hi ")).unwrap();
    assert_eq!(child.render(child.messages(), true).unwrap(), expected);
    assert_eq!(expected, "<system>hi");
    let cases = [
        // 1 MB doubled 12 times: 4 GB, past the child's 1 GiB.
        (
            "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(12) %}\
             {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "MiB of memory",
        ),
        // A million 100 MB copies: hours.
        (
            "{% set big = 'x' * 50000000 %}{% for i in range(1000) %}\
             {% for j in range(1000) %}{% set t = big ~ big %}{% endfor %}{% endfor %}",
            "longer than 10 s",
        ),
        // The in-process bounds hold in the child too.
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "instructions",
        ),
    ];
    for (template, reason) in cases {
        let err = kvgpu::Chat::with_template(template, &tok, None).unwrap_err();
        assert!(
            matches!(err, kvgpu::Error::ChatTemplate(ref m) if m.contains(reason)),
            "{template}: {err}"
        );
    }
}

/// Perplexity of a short text, then KL divergence of a run against itself.
#[test]
fn perplexity_and_kl_divergence_against_a_base() {
    let dir = require!(common::models_dir());
    let scratch = common::scratch("cli_perplexity");
    let text_file = scratch.join("text.txt");
    std::fs::write(&text_file, common::GREEDY).unwrap();
    let base = scratch.join("base.kl");
    let model = dir.join("stories260K.bin");
    let args = [
        "perplexity",
        "-m",
        path(&model),
        "-f",
        path(&text_file),
        "-c",
        "64",
    ];
    let out = kvgpu(&[&args[..], &["--kl-divergence-base", path(&base)]].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let ppl = |s: &str| -> f64 {
        let at = s.find("PPL = ").expect("a PPL line") + 6;
        s[at..].split(' ').next().unwrap().parse().unwrap()
    };
    // The model's own greedy text: very predictable.
    let p = ppl(&stdout);
    assert!(p > 1.0 && p < 3.0, "{stdout}");
    let out = kvgpu(
        &[
            &args[..],
            &["--kl-divergence-base", path(&base), "--kl-divergence"],
        ]
        .concat(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Same top p: 100.000 %"), "{stdout}");
    let kld: f64 = stdout
        .split("Mean KLD: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(kld < 1e-4, "{stdout}");
    // A base made from another chunking is refused, naming it.
    fails_saying(
        &[
            "perplexity",
            "-m",
            path(&model),
            "-f",
            path(&text_file),
            "-c",
            "32",
            "--kl-divergence-base",
            path(&base),
            "--kl-divergence",
        ],
        &["base.kl", "-c 64"],
    );
    // A header claiming 2^32 - 1 chunks (a 500 GB token list before any
    // row): refused by the file's size, nothing allocated.
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let huge = scratch.join("huge.kl");
    std::fs::write(&huge, &bytes).unwrap();
    let compare = ["--kl-divergence-base", path(&huge), "--kl-divergence"];
    let args = [&args[..], &compare].concat();
    fails_saying(&args, &["huge.kl", "4294967295 chunks", "truncated"]);
    // A file cut short is refused before the run, not at its end.
    std::fs::write(&huge, &std::fs::read(&base).unwrap()[..1000]).unwrap();
    fails_saying(&args, &["huge.kl", "1000 bytes", "truncated"]);
}

/// quantize writes the new types and refuses those it cannot write.
#[test]
fn quantize_writes_q5_1_and_names_the_types_it_writes() {
    let dir = require!(common::models_dir());
    let scratch = common::scratch("cli_quantize");
    let out_file = scratch.join("q5_1.gguf");
    let model = dir.join("stories260K.bin");
    let out = kvgpu(&[
        "quantize",
        "-m",
        path(&model),
        "--type",
        "q5_1",
        "-o",
        path(&out_file),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (m, _) = kvgpu::Model::load(&out_file).unwrap();
    assert_eq!(m.weights.layers[0].wq.dtype, kvgpu::DType::Q5_1);
    let out = kvgpu(&["run", "-m", path(&out_file), "-n", "8", "--temp", "0"]);
    assert!(out.status.success(), "{}", text(&out).1);
    fails_saying(
        &[
            "quantize",
            "-m",
            path(&model),
            "--type",
            "q4_k",
            "-o",
            path(&out_file),
        ],
        &["q4_k", "q5_1"],
    );
    // Onto the file it reads (mapped): refused before anything is written.
    let before = std::fs::metadata(&out_file).unwrap().len();
    fails_saying(
        &[
            "quantize",
            "-m",
            path(&out_file),
            "--type",
            "q8_0",
            "-o",
            path(&out_file),
        ],
        &["will not write", "input file"],
    );
    assert_eq!(std::fs::metadata(&out_file).unwrap().len(), before);
}

/// 100 tokens, saved; a new process restores them and runs 100 more: the
/// text equals 200 tokens in one run, greedy and seeded.
#[test]
fn save_and_restore_across_processes_continue_byte_for_byte() {
    let dir = require!(common::models_dir());
    let scratch = common::scratch("cli_state");
    let model = dir.join("stories260K.bin");
    let state = scratch.join("state.kvs");
    for temp in ["0", "1.0"] {
        let base = [
            "run",
            "-m",
            path(&model),
            "--temp",
            temp,
            "-s",
            "7",
            "--ignore-eos",
        ];
        let whole = kvgpu(&[&base[..], &["-n", "200"]].concat());
        let first = kvgpu(&[&base[..], &["-n", "100", "--save-state", path(&state)]].concat());
        // The saved sampler goes on; the flags given here do not matter.
        let rest = kvgpu(&[
            "run",
            "-m",
            path(&model),
            "--temp",
            "0.5",
            "-s",
            "1",
            "--ignore-eos",
            "-n",
            "100",
            "--load-state",
            path(&state),
        ]);
        for out in [&whole, &first, &rest] {
            assert!(out.status.success(), "{}", text(out).1);
        }
        let joined = format!("{}{}", text(&first).0.trim_end_matches('\n'), text(&rest).0);
        assert_eq!(joined, text(&whole).0, "temperature {temp}");
    }
    // A damaged file is named and refused.
    let mut bytes = std::fs::read(&state).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&state, bytes).unwrap();
    fails_saying(
        &[
            "run",
            "-m",
            path(&model),
            "-n",
            "5",
            "--load-state",
            path(&state),
        ],
        &["state.kvs", "cut short"],
    );
}

#[test]
fn parallel_continuations_equal_runs_with_their_seeds() {
    let dir = require!(common::models_dir());
    let bin = dir.join("stories260K.bin");
    let common = [
        "run",
        "-m",
        path(&bin),
        "-p",
        "Once upon a time",
        "-n",
        "30",
        "--temp",
        "1",
    ];
    let out = kvgpu(&[&common[..], &["--parallel", "3", "-s", "40"]].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 continuations"), "{stderr}");
    for (i, seed) in ["40", "41", "42"].iter().enumerate() {
        let solo = kvgpu(&[&common[..], &["-s", seed]].concat());
        let (solo_text, _) = text(&solo);
        let header = format!("--- continuation {} (seed {seed}) ---\n", i + 1);
        assert!(
            stdout.contains(&format!("{header}{solo_text}")),
            "continuation {} differs from `run -s {seed}`:\n{stdout}\nvs\n{solo_text}",
            i + 1
        );
    }
    let zero = kvgpu(&[&common[..], &["--parallel", "0"]].concat());
    assert!(!zero.status.success());
    assert!(text(&zero).1.contains("--parallel takes at least 1"));
}
