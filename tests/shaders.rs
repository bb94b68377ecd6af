//! Every WGSL kernel parses and validates with naga (no GPU needed), and every
//! file in `shaders/` is one kvgpu compiles in.

use std::collections::BTreeSet;
use std::path::Path;

use kvgpu::ops::SHADERS;

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
        // No optional capabilities: the kernels must run on every adapter.
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
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

#[test]
fn every_shader_file_is_registered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let registered: BTreeSet<String> = SHADERS.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(on_disk, registered, "shaders/ and ops::SHADERS disagree");
    for s in SHADERS {
        let text = std::fs::read_to_string(dir.join(format!("{}.wgsl", s.name))).unwrap();
        assert_eq!(text, s.source, "{} is registered with other source", s.name);
    }
}

#[test]
fn every_shader_documents_its_bindings() {
    for s in SHADERS {
        let header: String = s
            .source
            .lines()
            .take_while(|l| l.starts_with("//"))
            .collect();
        let bindings = s.source.matches("@binding(").count();
        for i in 0..bindings {
            assert!(
                header.contains(&format!("  {i} ")),
                "{}.wgsl: header comment does not list binding {i}",
                s.name
            );
        }
    }
}
