//! The crate's modules form layers, and code only reaches down (and no
//! file grows past 700 lines): a module
//! may use its own layer's helpers and anything in the layers below it,
//! never a layer above (so there is no import cycle). The layers are read
//! from README.md's "Where things live" table; a new module must be placed in it.

use std::path::Path;

/// The layers, bottom to top: each module's number in README.md's table
/// (a row's first column, and the `src/NAME.rs` or `src/NAME/` paths it
/// names; `lib` is above them all).
fn layers() -> Vec<(String, usize)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    for row in readme.lines() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(Ok(layer)) = cells.get(1).map(|c| c.parse::<usize>()) else {
            continue;
        };
        for path in cells[2].split('`').filter(|p| p.starts_with("src/")) {
            let name = path["src/".len()..]
                .split(['/', '.'])
                .next()
                .unwrap_or_default();
            out.push((name.to_string(), layer));
        }
    }
    let top = out.iter().map(|(_, l)| *l).max().unwrap_or(0);
    out.push(("lib".to_string(), top + 1));
    out
}

fn layer(layers: &[(String, usize)], module: &str) -> usize {
    layers
        .iter()
        .find(|(m, _)| m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to README.md's table"))
}

#[test]
fn the_readme_table_has_every_module_and_in_order() {
    let layers = layers();
    // Numbered bottom to top without gaps, and naming the modules lib.rs declares.
    let numbers: Vec<usize> = layers.iter().map(|(_, l)| *l).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "{numbers:?}"
    );
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        let decl = line.trim_start_matches("pub ").trim();
        if let Some(name) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            layer(&layers, name);
        }
    }
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
    let layers = layers();
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
        let own = layer(&layers, &module);
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
                } else if !used.is_empty() && used != module && layer(&layers, &used) >= own {
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
