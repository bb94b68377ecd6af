//! The compute kernels. Each op is one WGSL file in `shaders/` and one Rust
//! module here holding its `Params` (matching the WGSL struct), the function
//! that binds it into a [`Dispatch`], and `cpu`, its reference on the host.

use wgpu::util::DeviceExt;

pub mod argmax;
pub mod attention;
pub mod attention_combine;
pub mod embed;
pub mod matmul;
pub mod matvec;
pub mod rmsnorm;
pub mod rope_append;

/// A kernel's WGSL source and the file it came from.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// File stem in `shaders/`, e.g. "matvec".
    pub name: &'static str,
    /// WGSL source as compiled: the kernel file, after any library it uses.
    pub source: &'static str,
}

/// Every kernel kvgpu uses (a test checks this against `shaders/`).
pub const SHADERS: [Shader; 8] = [
    argmax::SHADER,
    attention::SHADER,
    attention_combine::SHADER,
    embed::SHADER,
    matmul::SHADER,
    matvec::SHADER,
    rmsnorm::SHADER,
    rope_append::SHADER,
];

/// WGSL files that are not kernels but are prepended to kernels' source.
pub const LIBRARIES: [&str; 1] = ["dequant"];

/// The compute pipelines, built once per device and model.
#[derive(Clone, Debug)]
pub struct Kernels {
    /// [`argmax`]
    pub argmax: wgpu::ComputePipeline,
    /// [`attention`]
    pub attention: wgpu::ComputePipeline,
    /// [`attention_combine`]
    pub attention_combine: wgpu::ComputePipeline,
    /// [`embed`]
    pub embed: wgpu::ComputePipeline,
    /// [`matmul`], four and two rows per thread.
    pub matmul: matmul::Pipelines,
    /// [`matvec`]
    pub matvec: wgpu::ComputePipeline,
    /// [`matvec`] with the RMSNorm of its input (override `NORM`).
    pub matvec_norm: wgpu::ComputePipeline,
    /// [`rmsnorm`]
    pub rmsnorm: wgpu::ComputePipeline,
    /// [`rope_append`]
    pub rope_append: wgpu::ComputePipeline,
}

impl Kernels {
    /// Compiles every kernel. Call inside an error scope ([`crate::Gpu::scoped`]).
    pub fn new(device: &wgpu::Device) -> Self {
        let build_with = |shader: Shader, constants: &[(&str, f64)]| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(shader.name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            })
        };
        let build = |shader: Shader| build_with(shader, &[]);
        Self {
            argmax: build(argmax::SHADER),
            attention: build(attention::SHADER),
            attention_combine: build(attention_combine::SHADER),
            embed: build(embed::SHADER),
            matmul: matmul::Pipelines {
                four_rows: build(matmul::SHADER),
                two_rows: build_with(matmul::SHADER, &[("FOUR_ROWS", 0.0)]),
            },
            matvec: build(matvec::SHADER),
            matvec_norm: build_with(matvec::SHADER, &[("NORM", 1.0)]),
            rmsnorm: build(rmsnorm::SHADER),
            rope_append: build(rope_append::SHADER),
        }
    }
}

/// One kernel launch (or several, for a weight split into row-chunks), bound
/// once and recorded every step: the pipeline, a bind group per launch
/// (binding 0 = its params uniform, then the buffers in order) and the grid,
/// whose z, for a kernel that handles the tokens of a pass, is set from the
/// token count when recorded.
#[derive(Debug)]
pub struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    /// (bind group, grid, first token): a launch whose first token is not
    /// in the pass is skipped (matmul binds one launch per tile of tokens).
    launches: Vec<(wgpu::BindGroup, [u32; 3], u32)>,
    /// Tokens per workgroup along z; 0: not per token (z as bound).
    tokens_per_z: u32,
}

impl Dispatch {
    /// Binds `params` (uploaded into a small uniform buffer that the bind
    /// group keeps alive) and `buffers` for `pipeline`.
    pub fn new(
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Self {
        let mut d = Self::empty(pipeline);
        d.push(device, params, buffers, workgroups);
        d
    }

    /// A dispatch of `pipeline` with no launches yet.
    pub fn empty(pipeline: &wgpu::ComputePipeline) -> Self {
        Self {
            pipeline: pipeline.clone(),
            launches: Vec::new(),
            tokens_per_z: 0,
        }
    }

    /// Makes the grid's z `ceil(n / tokens)` for a pass of `n` tokens.
    pub fn batched(mut self, tokens: u32) -> Self {
        self.tokens_per_z = tokens;
        self
    }

    /// Adds another launch of the same pipeline with its own params and buffers.
    pub fn push(
        &mut self,
        device: &wgpu::Device,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) {
        let resources: Vec<wgpu::BindingResource> =
            buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.push_resources(device, params, resources, workgroups);
    }

    /// Adds a launch whose bindings 1.. are `resources` (buffers or textures).
    pub fn push_resources(
        &mut self,
        device: &wgpu::Device,
        params: &[u8],
        resources: Vec<wgpu::BindingResource>,
        workgroups: [u32; 3],
    ) {
        self.push_tile(device, params, resources, workgroups, 0);
    }

    /// [`Dispatch::push_resources`] for a launch that handles the tokens
    /// from `first_token` on: recorded only for passes with more tokens.
    pub fn push_tile(
        &mut self,
        device: &wgpu::Device,
        params: &[u8],
        resources: Vec<wgpu::BindingResource>,
        workgroups: [u32; 3],
        first_token: u32,
    ) {
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("kvgpu params"),
            contents: params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params.as_entire_binding())
            .chain(resources)
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.launches.push((bind_group, workgroups, first_token));
    }

    /// Number of kernel launches recorded for a pass of `n` tokens.
    pub fn launches(&self, n: u32) -> usize {
        self.launches.iter().filter(|l| l.2 < n).count()
    }

    /// Records the launch(es) into `pass` for a pass of `n` tokens (the
    /// pipeline is set once).
    pub fn record(&self, pass: &mut wgpu::ComputePass, n: u32) {
        pass.set_pipeline(&self.pipeline);
        for launch in self.launches.iter().filter(|l| l.2 < n) {
            self.dispatch(pass, launch, n);
        }
    }

    /// Records the `i`-th launch of a pass of `n` tokens alone (to time it
    /// in a pass of its own).
    pub fn record_launch(&self, pass: &mut wgpu::ComputePass, i: usize, n: u32) {
        let launch = self.launches.iter().filter(|l| l.2 < n).nth(i);
        pass.set_pipeline(&self.pipeline);
        self.dispatch(pass, launch.expect("launch index below launches(n)"), n);
    }

    fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        launch: &(wgpu::BindGroup, [u32; 3], u32),
        n: u32,
    ) {
        let (bind_group, [x, y, z], _) = launch;
        let z = match self.tokens_per_z {
            0 => *z,
            t => n.div_ceil(t),
        };
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(*x, *y, z);
    }
}

/// Largest workgroup count per grid dimension that every adapter accepts.
const MAX_GRID: u32 = 65535;

/// A grid of `n` workgroups, spilling into y when `n` exceeds one dimension's
/// limit (kernels then index `wg.x + wg.y * num_wg.x` and skip the excess).
pub fn grid(n: u32) -> [u32; 3] {
    if n <= MAX_GRID {
        [n, 1, 1]
    } else {
        [MAX_GRID, n.div_ceil(MAX_GRID), 1]
    }
}

/// A one-dimensional grid of `ceil(n / 64)` workgroups of 64 threads.
pub fn grid_64(n: u32) -> [u32; 3] {
    [n.div_ceil(64), 1, 1]
}
