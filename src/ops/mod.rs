//! The compute kernels. Each op is one WGSL file in `shaders/` and one Rust
//! module here holding a struct that owns its pipeline(s), built once per
//! device, whose `bind` takes a named bindings struct and returns a
//! [`Dispatch`]; its `Params` (matching the WGSL struct); and `cpu`, its
//! reference on the host. `projection` holds what matvec, matmul and embed
//! share: the weights on the GPU ([`projection::GpuTensor`]) and dequant.wgsl's `Params`.

use crate::error::{Error, Result};
use crate::gpu::{buffer_init, Gpu};

pub use compile::{cache_build, drop_cases, paged, pipeline, Compiler, Constants, Pipelines};

pub mod argmax;
pub mod attention;
pub mod attention_combine;
mod compile;
pub mod embed;
pub mod kv_shift;
pub mod matmul;
pub mod matvec;
pub mod projection;
pub mod rmsnorm;
pub mod rope_append;

#[cfg(test)]
mod shader_checks;
#[cfg(test)]
mod testing;

/// A kernel's WGSL source, the file it came from, and what it needs of the
/// device.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// File stem in `shaders/`, e.g. "matvec".
    pub name: &'static str,
    /// WGSL source as compiled: the kernel file, after any library it uses.
    pub source: &'static str,
    /// What it needs of the device (a test checks this against the source).
    pub needs: Needs,
}

/// What a kernel needs of the device, checked against its limits before
/// anything is compiled ([`Kernels::check_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Storage buffers bound at once.
    pub storage_buffers: u32,
    /// Bytes of its largest uniform binding.
    pub uniform_bytes: u32,
    /// Sampled textures bound at once.
    pub textures: u32,
    /// Bytes of workgroup memory.
    pub workgroup_bytes: u32,
    /// Invocations per workgroup (all in x).
    pub invocations: u32,
    /// Subgroups of at least 8 invocations (wgpu's `SUBGROUP`): such a
    /// kernel is a faster build of another, used where the device has them
    /// ([`subgroups_of_8`]).
    pub subgroups: bool,
}

/// One pipeline kvgpu builds: a kernel and its pipeline-overridable constants.
#[derive(Clone, Debug)]
pub struct Variant {
    /// The kernel.
    pub shader: Shader,
    /// Pipeline-overridable constants, e.g. `("NORM", 1.0)`.
    pub constants: Constants,
}

impl Variant {
    /// `shader` with its constants' defaults.
    pub const fn plain(shader: Shader) -> Self {
        Self {
            shader,
            constants: Vec::new(),
        }
    }

    /// The WGSL this variant compiles: its shader's source, less the
    /// `case DTYPE_*` arms of weight-type switches for the types it does
    /// not read (its `DTYPE` and `UP_DTYPE`, F32 unless given). A shader
    /// holds every type's decoders; drivers would otherwise take each
    /// through their compilers before folding the constants (on lavapipe
    /// most of a matvec pipeline's compile time).
    pub fn source(&self) -> String {
        let source = self.shader.source;
        if !source.contains("override DTYPE") {
            return source.to_string();
        }
        let constant = |name: &str| {
            let given = self.constants.iter().find(|(n, _)| *n == name);
            given.map_or(0, |(_, v)| *v as u32)
        };
        drop_cases(source, &[constant("DTYPE"), constant("UP_DTYPE")])
    }

    /// The kernel's name and its constants, e.g. "matvec NORM=1".
    #[cfg(test)]
    pub fn name(&self) -> String {
        let mut name = self.shader.name.to_string();
        for (k, v) in &self.constants {
            name += &format!(" {k}={v}");
        }
        name
    }
}

/// Every pipeline [`Kernels::new`] builds (a test checks this against what
/// it builds, and translates each for every backend).
#[cfg(test)]
pub const VARIANTS: [Variant; 2] = [
    Variant::plain(argmax::SHADER),
    Variant::plain(attention_combine::SHADER),
];

/// The weight-reading kernels' pipelines for every storage type (each
/// type once as `DTYPE` and once as `UP_DTYPE`, and every build of each
/// kernel), built on first use ([`Pipelines`]); the translation test
/// covers them all.
#[cfg(test)]
pub fn specialized_variants() -> Vec<Variant> {
    use crate::tensor::DType;
    let mut out = Vec::new();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let up = DType::ALL[(i + 1) % DType::ALL.len()];
        // NORM, ROPE, NEXT_NORM and SWIGLU each on and off across the types, in both builds.
        let (norm, rope, next_norm) = (i % 2 == 0, i % 4 < 2, i % 8 < 4);
        out.push(embed::variant(dtype, next_norm));
        out.push(matvec::variant(
            matvec::SHADER,
            norm,
            rope,
            next_norm,
            i % 2 == 1,
            dtype,
            up,
        ));
        out.push(matvec::variant(
            matvec::SUBGROUP_SHADER,
            !norm,
            !rope,
            !next_norm,
            i % 2 == 0,
            dtype,
            up,
        ));
        out.push(matmul::variant(matmul::SHADER, i % 2 == 1, dtype, up));
        out.push(matmul::variant(
            matmul::SUBGROUP_SHADER,
            i % 2 == 0,
            dtype,
            up,
        ));
    }
    out.push(Variant {
        shader: attention_combine::SHADER,
        constants: paged(),
    });
    out.push(rmsnorm::variant(false));
    out.push(rmsnorm::variant(true));
    // The kernels that touch the cache: every storage type, flat and paged;
    // attention in both builds, with 1 to 4 heads a workgroup (or thread).
    for (i, kv) in crate::kv_cache::KvDtype::ALL.into_iter().enumerate() {
        out.push(kv_shift::variant(kv));
        for paged in [false, true] {
            // The work before RoPE: none, biases, q/k norms, both.
            let prep = 2 * i + usize::from(paged);
            out.push(rope_append::variant(
                paged,
                kv,
                prep % 2 == 1,
                prep % 4 >= 2,
            ));
            let heads = 1 + (2 * i + usize::from(paged)) % 4;
            out.push(attention::variant(paged, kv, false, heads));
            out.push(attention::variant(paged, kv, true, 5 - heads));
        }
    }
    out
}

/// Every kernel kvgpu uses (a test checks this against `shaders/`).
pub const SHADERS: [Shader; 11] = [
    argmax::SHADER,
    attention::SHADER,
    attention_combine::SHADER,
    embed::SHADER,
    kv_shift::SHADER,
    matmul::SHADER,
    matmul::SUBGROUP_SHADER,
    matvec::SHADER,
    matvec::SUBGROUP_SHADER,
    rmsnorm::SHADER,
    rope_append::SHADER,
];

/// A hash of every kernel's source: a pipeline cache saved by a kvgpu
/// whose kernels differ is not read.
pub fn sources_hash() -> u64 {
    let mut h = crate::model::Fnv::default();
    for s in SHADERS {
        h.write(s.name.as_bytes());
        h.write(s.source.as_bytes());
    }
    h.0
}

/// WGSL files that are not kernels but are prepended to kernels' source:
/// `prelude` (the `Step` struct) to those that run the tokens of a pass,
/// `dequant` (weight decoding) to those that read weights, `kv` (cache
/// rows) to those that read or write the KV cache.
#[cfg(test)]
pub const LIBRARIES: [&str; 5] = ["dequant", "kv", "matmul_tile", "matvec_row", "prelude"];

/// Matches WGSL `Step` in shaders/prelude.wgsl: the pass's first position,
/// its number of tokens and the KV cache's page size (0: flat), padded to
/// 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// Position of the pass's first token (flat cache).
    pub pos: u32,
    /// Tokens in the pass.
    pub n: u32,
    /// Positions per page of a paged pool; 0 for a flat cache.
    pub page: u32,
    _pad: u32,
}

impl Step {
    /// A pass of `n` tokens from position `pos` over a flat cache.
    pub fn new(pos: usize, n: usize) -> Self {
        Self {
            pos: pos as u32,
            n: n as u32,
            page: 0,
            _pad: 0,
        }
    }

    /// A pass of `n` tokens over a pool of `page`-position pages, each
    /// token's position and page table in the kernels' `paging` binding.
    pub fn paged(n: usize, page: usize) -> Self {
        Self {
            pos: 0,
            n: n as u32,
            page: page as u32,
            _pad: 0,
        }
    }
}

/// Every kernel, compiled once per device.
#[derive(Debug)]
pub struct Kernels {
    pub argmax: argmax::Argmax,
    pub attention: attention::Attention,
    pub attention_combine: attention_combine::AttentionCombine,
    pub embed: embed::Embed,
    pub kv_shift: kv_shift::KvShift,
    pub matmul: matmul::Matmul,
    pub matmul_subgroup: matmul::Matmul,
    pub matvec: matvec::Matvec,
    pub matvec_subgroup: matvec::Matvec,
    pub rmsnorm: rmsnorm::RmsNorm,
    pub rope_append: rope_append::RopeAppend,
    /// Whether the device runs the subgroup builds ([`subgroups_of_8`]).
    subgroups: bool,
}

impl Kernels {
    /// Checks that the device's `limits` allow every kernel; the first
    /// shortfall is an [`Error::DeviceLimit`] naming the kernel.
    pub fn check_limits(limits: &wgpu::Limits) -> Result<()> {
        // A kernel that needs subgroups is built only where the device has them.
        for s in SHADERS.iter().filter(|s| !s.needs.subgroups) {
            let n = s.needs;
            let checks = [
                (
                    "storage buffers per shader stage",
                    n.storage_buffers,
                    limits.max_storage_buffers_per_shader_stage,
                ),
                (
                    "bytes per uniform buffer binding",
                    n.uniform_bytes,
                    limits.max_uniform_buffer_binding_size as u32,
                ),
                (
                    "sampled textures per shader stage",
                    n.textures,
                    limits.max_sampled_textures_per_shader_stage,
                ),
                (
                    "bytes of workgroup memory",
                    n.workgroup_bytes,
                    limits.max_compute_workgroup_storage_size,
                ),
                (
                    "invocations per workgroup",
                    n.invocations,
                    limits
                        .max_compute_invocations_per_workgroup
                        .min(limits.max_compute_workgroup_size_x),
                ),
            ];
            for (what, needs, allows) in checks {
                if needs > allows {
                    return Err(Error::DeviceLimit {
                        kernel: s.name,
                        what,
                        needs: needs as u64,
                        allows: allows as u64,
                    });
                }
            }
        }
        Ok(())
    }

    /// Compiles every kernel (those that read weights: as each storage
    /// type is first bound), through `cache` where the device has one.
    /// Call inside an error scope ([`crate::Gpu::scoped`]).
    pub fn new(gpu: &Gpu, cache: Option<&wgpu::PipelineCache>) -> Self {
        let device = &gpu.device;
        let compiling = &gpu.compiling;
        let c = Compiler {
            device,
            cache,
            compiling,
        };
        Self {
            argmax: argmax::Argmax::new(&c),
            attention: attention::Attention::new(&c),
            attention_combine: attention_combine::AttentionCombine::new(&c),
            embed: embed::Embed::new(&c),
            kv_shift: kv_shift::KvShift::new(&c),
            matmul: matmul::Matmul::new(&c, matmul::SHADER),
            matmul_subgroup: matmul::Matmul::new(&c, matmul::SUBGROUP_SHADER),
            matvec: matvec::Matvec::new(&c, matvec::SHADER),
            matvec_subgroup: matvec::Matvec::new(&c, matvec::SUBGROUP_SHADER),
            rmsnorm: rmsnorm::RmsNorm::new(&c),
            rope_append: rope_append::RopeAppend::new(&c),
            subgroups: subgroups_of_8(device),
        }
    }

    /// The matrix-matrix kernel for this device: the subgroup build where
    /// it has subgroups of at least 8, else the plain one.
    pub fn matmul_for_device(&self) -> &matmul::Matmul {
        match self.subgroups {
            true => &self.matmul_subgroup,
            false => &self.matmul,
        }
    }

    /// The matrix-vector kernel for this device, chosen as
    /// [`Kernels::matmul_for_device`].
    pub fn matvec_for_device(&self) -> &matvec::Matvec {
        match self.subgroups {
            true => &self.matvec_subgroup,
            false => &self.matvec,
        }
    }
}

/// Whether `device` runs kernels that need subgroups: wgpu's `SUBGROUP`
/// feature enabled, and no subgroup smaller than 8 invocations (their
/// input reads are shared 8 ways).
pub fn subgroups_of_8(device: &wgpu::Device) -> bool {
    device.features().contains(wgpu::Features::SUBGROUP)
        && device.adapter_info().subgroup_min_size >= 8
}

/// One kernel launch (or several, for a weight split into row-chunks), bound
/// once and recorded every step: the pipeline, a bind group per launch
/// (binding 0 = its params uniform, then the buffers in order) and the grid,
/// whose z, for a kernel that handles the tokens of a pass, is set from the
/// token count when recorded.
#[derive(Debug)]
pub struct Dispatch {
    /// The pipelines its launches use (one, unless the chunks of a
    /// weight differ in storage type); the last is the one `push` binds for.
    pipelines: Vec<wgpu::ComputePipeline>,
    /// (pipeline index, bind group, grid, first token): a launch whose
    /// first token is not in the pass is skipped (matmul binds one launch
    /// per tile of tokens).
    launches: Vec<(usize, wgpu::BindGroup, [u32; 3], u32)>,
    /// Tokens per workgroup along z; 0: not per token (z as bound).
    tokens_per_z: u32,
    /// Positions per workgroup along y (split-K attention's splits); 0: y as bound.
    positions_per_y: u32,
}

/// `attended` for a launch recorded outside a forward pass: every
/// workgroup of the grid as bound.
pub const WHOLE_GRID: u32 = u32::MAX;

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

    /// A dispatch with no pipeline or launches yet: call
    /// [`Dispatch::set_pipeline`] before adding launches.
    pub fn none() -> Self {
        Self {
            pipelines: Vec::new(),
            launches: Vec::new(),
            tokens_per_z: 0,
            positions_per_y: 0,
        }
    }

    /// A dispatch of `pipeline` with no launches yet.
    pub fn empty(pipeline: &wgpu::ComputePipeline) -> Self {
        Self {
            pipelines: vec![pipeline.clone()],
            launches: Vec::new(),
            tokens_per_z: 0,
            positions_per_y: 0,
        }
    }

    /// Makes later launches use `pipeline` (a chunk of another storage type).
    pub fn set_pipeline(&mut self, pipeline: &wgpu::ComputePipeline) {
        if self.pipelines.last() != Some(pipeline) {
            self.pipelines.push(pipeline.clone());
        }
    }

    /// Makes the grid's z `ceil(n / tokens)` for a pass of `n` tokens.
    pub fn batched(mut self, tokens: u32) -> Self {
        self.tokens_per_z = tokens;
        self
    }

    /// Makes the grid's y `ceil(attended / positions)` (at most as bound)
    /// for a pass whose tokens attend to at most `attended` positions: the
    /// splits past the pass's last position would have nothing to do, and
    /// every empty workgroup still costs a launch on software adapters.
    pub fn split_positions(mut self, positions: u32) -> Self {
        self.positions_per_y = positions;
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
        let params = buffer_init(device, "kvgpu params", params, wgpu::BufferUsages::UNIFORM);
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params.as_entire_binding())
            .chain(resources)
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        let pipeline = self.pipelines.len() - 1;
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipelines[pipeline].get_bind_group_layout(0),
            entries: &entries,
        });
        self.launches
            .push((pipeline, bind_group, workgroups, first_token));
    }

    /// Number of kernel launches recorded for a pass of `n` tokens.
    pub fn launches(&self, n: u32) -> usize {
        self.launches.iter().filter(|l| l.3 < n).count()
    }

    /// Records the launch(es) into `pass` for a pass of `n` tokens that
    /// attend to at most `attended` positions each (each pipeline set once
    /// per run of launches that use it).
    pub fn record(&self, pass: &mut wgpu::ComputePass, n: u32, attended: u32) {
        let mut set = None;
        for launch in self.launches.iter().filter(|l| l.3 < n) {
            if set != Some(launch.0) {
                pass.set_pipeline(&self.pipelines[launch.0]);
                set = Some(launch.0);
            }
            self.dispatch(pass, launch, n, attended);
        }
    }

    /// Records the `i`-th launch of a pass of `n` tokens alone (to time it
    /// in a pass of its own).
    pub fn record_launch(&self, pass: &mut wgpu::ComputePass, i: usize, n: u32, attended: u32) {
        let launch = self.launches.iter().filter(|l| l.3 < n).nth(i);
        let launch = launch.expect("launch index below launches(n)");
        pass.set_pipeline(&self.pipelines[launch.0]);
        self.dispatch(pass, launch, n, attended);
    }

    fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        launch: &(usize, wgpu::BindGroup, [u32; 3], u32),
        n: u32,
        attended: u32,
    ) {
        let (_, bind_group, [x, y, z], _) = launch;
        let y = match self.positions_per_y {
            0 => *y,
            p => attended.div_ceil(p).clamp(1, *y),
        };
        let z = match self.tokens_per_z {
            0 => *z,
            t => n.div_ceil(t),
        };
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(*x, y, z);
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
