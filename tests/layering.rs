//! The crate's modules form layers, and code only reaches down (and no
//! file grows past 700 lines): a module
//! may use its own layer's helpers and anything in the layers below it,
//! never a layer above (so there is no import cycle). The list is the one in
//! README.md's "Where things live"; a new module must be placed in it.

use std::path::Path;

/// Bottom to top. Modules in one entry do not use each other.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["files", "frame_budget", "perplexity", "rng"],
    &["test_util"],
    &["rope", "tensor"],
    &["arch"],
    &["gguf"],
    &["tokenizer"],
    &["model"],
    &["gpu"],
    &["kv_cache", "readback"],
    &["ops"],
    &["gpu_model", "sampler"],
    &["pass", "pool"],
    &["session"],
    &["profile", "snapshot"],
    &["cpu"],
    &["shift"],
    &["generate"],
    &["chat", "engine", "lookup"],
    &["parallel"],
    &["lib"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS and README"))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_only_use_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        // src/bin/ holds the command-line tool: another crate, using kvgpu's public API.
        if rel.starts_with("bin") {
            continue;
        }
        // src/ops/matvec.rs belongs to `ops`, src/session.rs to `session`.
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let own = layer(&module);
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let root = used.is_empty() || used.starts_with(|c: char| c.is_ascii_uppercase());
                if root && module != "lib" {
                    // A root re-export hides which module it comes from.
                    wrong.push(format!(
                        "{}:{}: `crate::{used}...`: name the module",
                        rel.display(),
                        n + 1
                    ));
                } else if !used.is_empty() && used != module && layer(&used) >= own {
                    wrong.push(format!(
                        "{}:{}: {module} uses crate::{used}, which is not below it",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Each file one job: none in `src/` grows past 700 lines.
#[test]
fn no_source_file_is_over_700_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 700)
        .map(|(f, n)| format!("{}: {n} lines", f.display()))
        .collect();
    assert!(long.is_empty(), "split these: {}", long.join(", "));
}
