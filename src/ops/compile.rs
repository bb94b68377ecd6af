//! Compiling the kernels: a variant's WGSL (its shader's, less the
//! decoders of weight types it does not read), its module, its pipeline,
//! each counted and timed on the device ([`crate::Gpu::compiled`]).

use std::sync::Arc;

use super::{Shader, Variant};
use crate::gpu::Compiling;

/// What the ops compile their pipelines with.
pub struct Compiler<'a> {
    pub(super) device: &'a wgpu::Device,
    pub(super) cache: Option<&'a wgpu::PipelineCache>,
    /// Counts what is compiled, and its time.
    pub(super) compiling: &'a Arc<Compiling>,
}

/// Compiles `variant`'s `main`.
pub fn pipeline(compiler: &Compiler, variant: Variant) -> wgpu::ComputePipeline {
    let module = module(compiler, variant.shader.name, &variant.source());
    pipeline_of(compiler, &module, variant)
}

/// A shader's WGSL (`source`, as [`Variant::source`] gives it) parsed and
/// validated, for the pipelines of its variants.
fn module(compiler: &Compiler, name: &str, source: &str) -> wgpu::ShaderModule {
    let started = std::time::Instant::now();
    let module = compiler
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
    compiler.compiling.add(0, started.elapsed());
    module
}

/// Compiles `variant`'s `main` from `module` (its source's).
fn pipeline_of(
    compiler: &Compiler,
    module: &wgpu::ShaderModule,
    variant: Variant,
) -> wgpu::ComputePipeline {
    #[cfg(test)]
    super::testing::BUILT.with(|b| b.borrow_mut().push(variant.name()));
    let Variant { shader, constants } = variant;
    let constants = &constants;
    let started = std::time::Instant::now();
    let pipeline = compiler
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.name),
            layout: None,
            module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: compiler.cache,
        });
    compiler.compiling.add(1, started.elapsed());
    pipeline
}

/// A kernel's pipelines by their constants, each compiled on first use: the
/// weight-reading kernels get one per storage type a model uses (a WGSL
/// override), so none carries the decoders of the other types.
#[derive(Debug)]
pub struct Pipelines {
    shader: Shader,
    device: wgpu::Device,
    cache: Option<wgpu::PipelineCache>,
    compiling: Arc<Compiling>,
    /// (source, its module): each source as [`Variant::source`] gave it,
    /// parsed once for all the pipelines built from it.
    modules: std::sync::Mutex<Vec<(String, wgpu::ShaderModule)>>,
    /// (constants, pipeline), in the order first asked for.
    built: std::sync::Mutex<Vec<(Constants, wgpu::ComputePipeline)>>,
}

/// Pipeline-overridable constants by name.
pub type Constants = Vec<(&'static str, f64)>;

/// The constants of the PAGED build of attention_combine (shaders/prelude.wgsl).
pub fn paged() -> Constants {
    vec![("PAGED", 1.0)]
}

/// The constants of a kernel that touches the KV cache, built for a paged
/// pool or a flat cache (shaders/prelude.wgsl) of `dtype` (kv.wgsl's
/// `KV_DTYPE`).
pub fn cache_build(paged: bool, dtype: crate::kv_cache::KvDtype) -> Constants {
    vec![
        ("PAGED", f64::from(u8::from(paged))),
        ("KV_DTYPE", f64::from(dtype.gpu_id())),
    ]
}

impl Pipelines {
    /// `shader`'s pipelines, compiled as asked for.
    pub fn new(c: &Compiler, shader: Shader) -> Self {
        Self {
            shader,
            device: c.device.clone(),
            cache: c.cache.cloned(),
            compiling: c.compiling.clone(),
            modules: Default::default(),
            built: Default::default(),
        }
    }

    /// The pipeline for `constants`, compiled the first time. Call inside
    /// an error scope.
    pub fn get(&self, constants: Constants) -> wgpu::ComputePipeline {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = built.iter().find(|(c, _)| *c == constants) {
            return p.clone();
        }
        let compiler = Compiler {
            device: &self.device,
            cache: self.cache.as_ref(),
            compiling: &self.compiling,
        };
        let variant = Variant {
            shader: self.shader,
            constants: constants.clone(),
        };
        let source = variant.source();
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let at = match modules.iter().position(|(s, _)| *s == source) {
            Some(at) => at,
            None => {
                let module = module(&compiler, self.shader.name, &source);
                modules.push((source, module));
                modules.len() - 1
            }
        };
        let p = pipeline_of(&compiler, &modules[at].1, variant);
        built.push((constants, p.clone()));
        p
    }
}

/// `source` without the switch arms `case DTYPE_A, DTYPE_B: { ... }` whose
/// labels are all weight types (`const DTYPE_*: u32 = Nu;` in the source)
/// and none of `keep`. An arm runs from its `case` line (which opens its
/// block) to the line whose brace closes it.
pub fn drop_cases(source: &str, keep: &[u32]) -> String {
    let value = |label: &str| {
        let decl = format!("const {label}: u32 = ");
        let at = source.find(&decl)? + decl.len();
        source[at..].split('u').next()?.parse::<u32>().ok()
    };
    let mut out = String::with_capacity(source.len());
    let mut skipping: Option<i64> = None;
    let mut depth = 0i64;
    for line in source.split_inclusive('\n') {
        let code = line.split("//").next().unwrap_or_default();
        let opened = depth;
        depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
        if let Some(level) = skipping {
            if depth <= level {
                skipping = None;
            }
            continue;
        }
        let arm = code
            .trim()
            .strip_prefix("case ")
            .and_then(|c| c.strip_suffix(": {"));
        let labels: Option<Vec<u32>> = arm.and_then(|a| {
            a.split(',')
                .map(str::trim)
                .map(|l| l.starts_with("DTYPE_").then(|| value(l)).flatten())
                .collect()
        });
        if labels.is_some_and(|l| !l.iter().any(|v| keep.contains(v))) {
            skipping = Some(opened);
            continue;
        }
        out.push_str(line);
    }
    out
}
