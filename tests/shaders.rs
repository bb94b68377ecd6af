//! Every WGSL kernel parses and validates with naga (no GPU needed), and every
//! file in `shaders/` is one kvgpu compiles in.

use std::collections::BTreeSet;
use std::path::Path;

use kvgpu::ops::{LIBRARIES, SHADERS};

#[test]
fn every_shader_parses_and_validates() {
    let mut failures = Vec::new();
    for shader in SHADERS {
        let path = format!("shaders/{}.wgsl", shader.name);
        let module = match naga::front::wgsl::parse_str(shader.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e.emit_to_string_with_path(shader.source, &path));
                continue;
            }
        };
        // No optional features: the kernels must run on every adapter. The
        // one capability is `unpack2x16float`'s, which every wgpu adapter but
        // WebGL 2 has (wgpu's downlevel flag SHADER_F16_IN_F32).
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
        );
        if let Err(e) = validator.validate(&module) {
            failures.push(e.emit_to_string_with_path(shader.source, &path));
        }
        let has_main = module
            .entry_points
            .iter()
            .any(|ep| ep.name == "main" && ep.stage == naga::ShaderStage::Compute);
        if !has_main {
            failures.push(format!("{path}: no @compute fn main"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn shader_files() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn read_shader(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("shaders/{name}.wgsl"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_shader_file_is_registered() {
    let registered: BTreeSet<String> = SHADERS
        .iter()
        .map(|s| s.name.to_string())
        .chain(LIBRARIES.iter().map(|s| s.to_string()))
        .collect();
    assert_eq!(
        shader_files(),
        registered,
        "shaders/ and ops::SHADERS + LIBRARIES disagree"
    );
    for s in SHADERS {
        // The compiled source is the kernel file, after any libraries.
        assert!(
            s.source.ends_with(&read_shader(s.name)),
            "{} is registered with other source",
            s.name
        );
        let mut rest = s
            .source
            .strip_suffix(read_shader(s.name).as_str())
            .unwrap()
            .to_string();
        for lib in LIBRARIES {
            rest = rest.replace(&read_shader(lib), "");
        }
        assert!(
            rest.is_empty(),
            "{}: source has text from no shader file",
            s.name
        );
    }
    for lib in LIBRARIES {
        let text = read_shader(lib);
        assert!(
            SHADERS.iter().any(|s| s.source.contains(&text)),
            "library {lib} is used by no kernel"
        );
    }
}

#[test]
fn every_shader_documents_its_bindings() {
    for name in shader_files() {
        let source = read_shader(&name);
        let header: String = source.lines().take_while(|l| l.starts_with("//")).collect();
        for (at, _) in source.match_indices("@binding(") {
            let i: String = source[at + 9..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            assert!(
                header.contains(&format!("  {i} ")),
                "{name}.wgsl: header comment does not list binding {i}"
            );
        }
    }
}
