//! Checks of the kernels as a set: every WGSL file parses, validates and is
//! registered; each kernel's declared needs match its source; the pipelines
//! `Kernels::new` builds are the listed variants, and each translates for
//! Metal, DX12, Vulkan and GL (naga's backends, checked by spirv-val and
//! glslangValidator where installed); every kernel has tests beside it.

use std::collections::BTreeSet;
use std::path::Path;

use super::testing::require;
use super::{specialized_variants, Kernels, Needs, Variant, LIBRARIES, SHADERS, VARIANTS};

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
        if let Err(e) = validator(shader.needs).validate(&module) {
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

/// A validator with the capabilities a kernel may use: `unpack2x16float`'s,
/// which every wgpu adapter but WebGL 2 has (wgpu's downlevel flag
/// SHADER_F16_IN_F32), and subgroup operations for the builds that need
/// them (used only where the device has them); no other optional feature,
/// so that the kernels run on every adapter.
fn validator(needs: Needs) -> naga::valid::Validator {
    use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet};
    let mut capabilities = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if needs.subgroups {
        capabilities |= Capabilities::SUBGROUP;
    }
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    if needs.subgroups {
        v.subgroup_stages(ShaderStages::COMPUTE);
        // wgpu's SUBGROUP promises these on every backend (Vulkan: basic,
        // vote, arithmetic, ballot, shuffle, quad).
        let ops = SubgroupOperationSet::BASIC
            | SubgroupOperationSet::BALLOT
            | SubgroupOperationSet::ARITHMETIC;
        v.subgroup_operations(ops);
    }
    v
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

/// `Kernels::new` builds exactly [`VARIANTS`], so the translation test
/// below covers every pipeline that runs; a weight-reading kernel builds
/// its storage type's pipeline when first bound, and only then.
#[test]
fn kernels_build_exactly_the_listed_variants() {
    let gpu = require!(super::testing::gpu());
    let built = || super::testing::BUILT.with(|b| b.borrow_mut().drain(..).collect::<Vec<_>>());
    built();
    let kernels = gpu
        .scoped("compiling", || Kernels::new(&gpu, None))
        .unwrap();
    let mut listed: Vec<String> = VARIANTS.iter().map(|v| v.name()).collect();
    let mut first = built();
    first.sort();
    listed.sort();
    assert_eq!(first, listed);
    // A Q5_K table: its pipeline once, however often bound.
    let table = super::testing::random_tensor(crate::tensor::DType::Q5_K, 3, 256, 1);
    let table = gpu
        .scoped("upload", || {
            super::projection::GpuTensor::upload(&gpu.device, &gpu.queue, &table, 1 << 20, "t")
        })
        .unwrap()
        .unwrap();
    let out = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    for _ in 0..2 {
        let b = super::embed::Bindings {
            out: &out,
            stride: 256,
            table: &table,
            tokens: &out,
            next_norm: None,
            scale: 1.0,
        };
        gpu.scoped("binding", || kernels.embed.bind(&gpu.device, b))
            .unwrap();
    }
    let specialized = super::embed::variant(crate::tensor::DType::Q5_K, false);
    assert_eq!(built(), [specialized.name()]);
}

/// The parsed, validated module of `variant`, its constants applied.
fn module(variant: &Variant) -> (naga::Module, naga::valid::ModuleInfo) {
    let source = &variant.source();
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let info = validator(variant.shader.needs)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let constants = variant
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let entry = Some((naga::ShaderStage::Compute, "main"));
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, entry, &constants)
            .unwrap_or_else(|e| panic!("{}: constants: {e}", variant.name()));
    (module.into_owned(), info.into_owned())
}

/// Each kernel's declared [`Needs`] are what its source declares.
#[test]
fn needs_match_the_shaders() {
    let mut wrong = Vec::new();
    for s in SHADERS {
        let (m, _) = module(&Variant::plain(s));
        let mut found = Needs {
            storage_buffers: 0,
            uniform_bytes: 0,
            textures: 0,
            workgroup_bytes: 0,
            invocations: 0,
            subgroups: false,
        };
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(m.to_ctx()).unwrap();
        for (_, g) in m.global_variables.iter() {
            let size = layouter[g.ty].size;
            match g.space {
                naga::AddressSpace::Storage { .. } => found.storage_buffers += 1,
                naga::AddressSpace::Uniform => found.uniform_bytes = found.uniform_bytes.max(size),
                naga::AddressSpace::WorkGroup => found.workgroup_bytes += size,
                naga::AddressSpace::Handle => found.textures += 1,
                _ => {}
            }
        }
        let main = m.entry_points.iter().find(|e| e.name == "main").unwrap();
        found.invocations = main.workgroup_size.iter().product();
        found.subgroups = main.function.arguments.iter().any(|a| {
            matches!(
                a.binding,
                Some(naga::Binding::BuiltIn(naga::BuiltIn::SubgroupInvocationId))
            )
        });
        if s.needs != found {
            wrong.push(format!(
                "{}: declares {:?}, its source {found:?}",
                s.name, s.needs
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Where a host validator is installed (`spirv-val` from spirv-tools,
/// `glslangValidator` from glslang-tools): its verdict on `file`, or
/// `None` when absent (a failure under CI, which installs both).
fn host_validate(tool: &str, args: &[&str], file: &Path) -> Option<Result<(), String>> {
    let run = std::process::Command::new(tool)
        .args(args)
        .arg(file)
        .output();
    match run {
        Ok(out) if out.status.success() => Some(Ok(())),
        Ok(out) => Some(Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true and {tool} cannot run ({e}): .ci/run installs it");
            }
            eprintln!("SKIPPED: {tool} not found ({e}); the translation itself was checked");
            None
        }
    }
}

/// Every pipeline kvgpu builds (every storage type of the weight-reading
/// kernels), translated by naga for Metal (MSL),
/// DX12 (HLSL, shader model 5.1), Vulkan (SPIR-V, checked by
/// spirv-val) and GL ES 3.1 (GLSL, checked by glslangValidator): what
/// wgpu does on those backends, without their hardware. Subgroup builds:
/// MSL 2.4, shader model 6.0, SPIR-V 1.3, and no GL (wgpu offers
/// subgroups on none of its GL adapters).
#[test]
fn every_variant_translates_for_every_backend() {
    let dir = std::env::temp_dir().join(format!("kvgpu-translate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    let mut fail = |variant: &Variant, backend: &str, e: String| {
        failures.push(format!("{} ({backend}): {e}", variant.name()))
    };
    let variants: Vec<Variant> = VARIANTS.into_iter().chain(specialized_variants()).collect();
    for (i, v) in variants.iter().enumerate() {
        let (m, info) = module(v);
        let stage = naga::ShaderStage::Compute;
        // Metal.
        // Subgroup builds need the versions that have subgroup operations
        // (wgpu offers SUBGROUP on those alone, and never on GL).
        let subgroups = v.shader.needs.subgroups;
        let options = naga::back::msl::Options {
            lang_version: if subgroups { (2, 4) } else { (2, 1) },
            ..Default::default()
        };
        let pipeline = naga::back::msl::PipelineOptions {
            entry_point: Some((stage, "main".into())),
            ..Default::default()
        };
        if let Err(e) = naga::back::msl::write_string(&m, &info, &options, &pipeline) {
            fail(v, "msl", e.to_string());
        }
        // DX12.
        let mut hlsl = String::new();
        let options = naga::back::hlsl::Options {
            shader_model: if subgroups {
                naga::back::hlsl::ShaderModel::V6_0
            } else {
                naga::back::hlsl::ShaderModel::V5_1
            },
            ..Default::default()
        };
        let pipeline = naga::back::hlsl::PipelineOptions {
            entry_point: Some((stage, "main".into())),
        };
        let mut writer = naga::back::hlsl::Writer::new(&mut hlsl, &options, &pipeline);
        if let Err(e) = writer.write(&m, &info, None) {
            fail(v, "hlsl", e.to_string());
        }
        // Vulkan.
        let options = naga::back::spv::Options {
            lang_version: if subgroups { (1, 3) } else { (1, 0) },
            ..Default::default()
        };
        let pipeline = naga::back::spv::PipelineOptions {
            shader_stage: stage,
            entry_point: "main".into(),
        };
        match naga::back::spv::write_vec(&m, &info, &options, Some(&pipeline)) {
            Err(e) => fail(v, "spv", e.to_string()),
            Ok(words) => {
                let file = dir.join(format!("{i}.spv"));
                std::fs::write(&file, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
                let env = if subgroups { "vulkan1.1" } else { "vulkan1.0" };
                let args = ["--target-env", env];
                if let Some(Err(e)) = host_validate("spirv-val", &args, &file) {
                    fail(v, "spirv-val", e);
                }
            }
        }
        // GL ES 3.1.
        if subgroups {
            continue;
        }
        let mut glsl = String::new();
        let options = naga::back::glsl::Options {
            version: naga::back::glsl::Version::Embedded {
                version: 310,
                is_webgl: false,
            },
            ..Default::default()
        };
        let pipeline = naga::back::glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: "main".into(),
            multiview: None,
        };
        let written = naga::back::glsl::Writer::new(
            &mut glsl,
            &m,
            &info,
            &options,
            &pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write());
        match written {
            Err(e) => fail(v, "glsl", e.to_string()),
            Ok(_) => {
                let file = dir.join(format!("{i}.comp"));
                std::fs::write(&file, &glsl).unwrap();
                if let Some(Err(e)) = host_validate("glslangValidator", &[], &file) {
                    fail(v, "glslangValidator", e);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each op's file defines its CPU twin and holds tests, and a test binds
/// each of its kernels (in that file or through the shared projection
/// harness).
#[test]
fn every_kernel_has_a_test_beside_it() {
    let harness = include_str!("testing.rs");
    let sources = [
        ("argmax", include_str!("argmax.rs")),
        ("attention", include_str!("attention.rs")),
        ("attention_combine", include_str!("attention_combine.rs")),
        ("embed", include_str!("embed.rs")),
        ("kv_shift", include_str!("kv_shift.rs")),
        ("matmul", include_str!("matmul.rs")),
        ("matmul_subgroup", include_str!("matmul.rs")),
        ("matvec", include_str!("matvec.rs")),
        ("matvec_subgroup", include_str!("matvec.rs")),
        ("rmsnorm", include_str!("rmsnorm.rs")),
        ("rope_append", include_str!("rope_append.rs")),
    ];
    for s in SHADERS {
        let (_, source) = sources
            .iter()
            .find(|(name, _)| *name == s.name)
            .unwrap_or_else(|| panic!("kernel {} has no op file listed here", s.name));
        let tests = source
            .split("#[cfg(test)]\nmod tests")
            .nth(1)
            .unwrap_or_else(|| panic!("kernel {} has no tests module", s.name));
        // `kernels.NAME.bind(`, or `kernels.NAME` handed to a binding helper.
        let named = |text: &str| {
            let name = format!("kernels.{}", s.name);
            text.match_indices(&name).any(|(at, _)| {
                let next = text[at + name.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        };
        assert!(
            source.contains("pub fn cpu(")
                && tests.contains("#[test]")
                && (named(tests) || named(harness)),
            "kernel {}: needs a CPU twin, tests beside it, and a test that binds it",
            s.name
        );
    }
}

/// A variant's source keeps the weight-type arms of its own types (and
/// every `default`), drops the others', and is what the translation test
/// compiles (it parses and validates for every type pair there).
#[test]
fn variants_compile_only_their_weight_types_decoders() {
    let toy = "const DTYPE_F32: u32 = 0u;\nconst DTYPE_Q8_0: u32 = 3u;\nconst DTYPE_Q4_0: u32 = 4u;\n\
        fn f(d: u32) -> u32 {\n    switch d {\n        case DTYPE_F32: {\n            if true {\n                return 1u;\n            }\n            return 2u;\n        }\n\
        case DTYPE_Q8_0, DTYPE_Q4_0: { // two\n            return 3u;\n        }\n        default: {\n            return 4u;\n        }\n    }\n}\n";
    let kept = super::drop_cases(toy, &[3]);
    assert!(
        !kept.contains("case DTYPE_F32") && !kept.contains("1u") && !kept.contains("2u"),
        "{kept}"
    );
    assert!(
        kept.contains("case DTYPE_Q8_0, DTYPE_Q4_0") && kept.contains("default"),
        "{kept}"
    );
    assert_eq!(super::drop_cases(toy, &[0, 4]), toy);
    let names = [
        "DTYPE_F32",
        "DTYPE_F16",
        "DTYPE_Q8_0",
        "DTYPE_Q4_K",
        "DTYPE_Q6_K",
    ];
    for v in specialized_variants() {
        let source = v.source();
        let full = v.shader.source;
        if !full.contains("override DTYPE") {
            assert_eq!(source, full, "{}", v.name());
            continue;
        }
        assert!(source.len() < full.len(), "{}: nothing dropped", v.name());
        let types: Vec<u32> = ["DTYPE", "UP_DTYPE"]
            .iter()
            .map(|n| {
                v.constants
                    .iter()
                    .find(|(k, _)| k == n)
                    .map_or(0, |(_, x)| *x as u32)
            })
            .collect();
        for (id, name) in [0, 1, 3, 5, 6].into_iter().zip(names) {
            let arm = format!("case {name}:");
            let wanted = types.contains(&id);
            let arms_in_full = full.matches(&arm).count();
            assert_eq!(
                source.matches(&arm).count(),
                if wanted { arms_in_full } else { 0 },
                "{}: {arm}",
                v.name()
            );
        }
    }
}
