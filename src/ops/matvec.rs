//! Projection of one token: `out = W x` (or `+=`, or SwiGLU of two
//! matrices), W (rows, cols) in any [`DType`](crate::tensor::DType), split
//! into row-chunks when larger than one texture. See `shaders/matvec_row.wgsl`.

use super::projection::{input_binding, GpuTensor, Mode};
use super::{grid, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::tensor::{DType, Tensor};

/// `shaders/matvec.wgsl` after `shaders/dequant.wgsl` and
/// `shaders/matvec_row.wgsl`: every thread reads its inputs.
pub const SHADER: Shader = Shader {
    name: "matvec",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matvec_row.wgsl"),
        include_str!("../../shaders/matvec.wgsl")
    ),
    needs: NEEDS,
};

/// The same product with each input read shared across a subgroup
/// (`shaders/matvec_subgroup.wgsl` in place of `shaders/matvec.wgsl`).
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "matvec_subgroup",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matvec_row.wgsl"),
        include_str!("../../shaders/matvec_subgroup.wgsl")
    ),
    needs: Needs {
        subgroups: true,
        ..NEEDS
    },
};

const NEEDS: Needs = Needs {
    storage_buffers: 1,
    uniform_bytes: 65536,
    textures: 2,
    workgroup_bytes: 0,
    invocations: 64,
    subgroups: false,
};

/// `shader`'s build for weights of `dtype` (and an up projection of `up`)
/// that normalises its input first when `norm` (overrides NORM, DTYPE,
/// UP_DTYPE).
pub fn variant(shader: Shader, norm: bool, dtype: DType, up: DType) -> Variant {
    Variant {
        shader,
        constants: vec![
            ("NORM", f64::from(u8::from(norm))),
            ("DTYPE", dtype.gpu_id() as f64),
            ("UP_DTYPE", up.gpu_id() as f64),
        ],
    }
}

/// What a one-token projection reads and writes.
pub struct Bindings<'a> {
    /// (rows,) output, set or added to as `mode` says.
    pub out: &'a wgpu::Buffer,
    /// (rows, cols) weights.
    pub w: &'a GpuTensor,
    /// (cols,) input: a UNIFORM buffer of at least
    /// [`INPUT_BYTES`](super::projection::INPUT_BYTES).
    pub x: &'a wgpu::Buffer,
    /// What is done with `W x`.
    pub mode: Mode<'a>,
    /// `Some((g, eps))`: x is first replaced by `rmsnorm(x) * g` (the NORM
    /// build); `g` (cols,) is a UNIFORM buffer of at least `INPUT_BYTES`
    /// (see [`norm_weights`](super::projection::norm_weights)).
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
}

/// A build of the matvec kernel ([`SHADER`] or [`SUBGROUP_SHADER`]), plain
/// and with the RMSNorm of its input, per storage type (see [`variant`];
/// compiled on first use).
#[derive(Debug)]
pub struct Matvec {
    shader: Shader,
    pipelines: Pipelines,
}

impl Matvec {
    /// Prepares `shader`'s build of the kernel.
    pub fn new(c: &super::Compiler, shader: Shader) -> Self {
        Self {
            shader,
            pipelines: Pipelines::new(c, shader),
        }
    }

    /// Binds the projection of one token, `out (rows,) = w (rows, cols) @ x
    /// (cols,)` as `mode` says, one launch per chunk of `w`.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let mut dispatch = Dispatch::none();
        for (mut params, c, up) in b.w.chunk_params(b.mode, b.w.rows) {
            let v = variant(self.shader, b.norm.is_some(), c.dtype, up.dtype);
            dispatch.set_pipeline(&self.pipelines.get(v.constants));
            params.eps = b.norm.map_or(0.0, |(_, eps)| eps);
            let resources = vec![
                wgpu::BindingResource::TextureView(&c.view),
                input_binding(b.x, 0, 0),
                b.out.as_entire_binding(),
                wgpu::BindingResource::TextureView(&up.view),
                input_binding(b.norm.map_or(b.x, |(g, _)| g), 0, 0),
            ];
            // One thread per row.
            let groups = grid(params.rows.div_ceil(64));
            dispatch.push_resources(device, bytemuck::bytes_of(&params), resources, groups);
        }
        dispatch
    }
}

/// Host reference: `out = w x`, `out += w x` or `out = silu(w x) * (up x)`
/// by dequantizing each row and taking its dot product with `x` (for a
/// NORM matvec, pass `rmsnorm::cpu`'s output as `x`).
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32], mode: CpuMode) {
    let mut y = vec![0.0; out.len()];
    w.matvec(x, &mut y);
    match mode {
        CpuMode::Set => out.copy_from_slice(&y),
        CpuMode::Add => out.iter_mut().zip(y).for_each(|(o, y)| *o += y),
        CpuMode::SwiGlu { up } => {
            let mut u = vec![0.0; out.len()];
            up.matvec(x, &mut u);
            for ((o, g), u) in out.iter_mut().zip(y).zip(u) {
                *o = silu(g) * u;
            }
        }
    }
}

/// [`Mode`] for the host reference.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub enum CpuMode<'a> {
    /// `out = W x`.
    Set,
    /// `out += W x`.
    Add,
    /// `out = silu(W x) * (up x)`.
    SwiGlu {
        /// The up projection.
        up: &'a Tensor,
    },
}

/// llama2.c's SiLU: `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x * (1.0 / (1.0 + (-x).exp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matvec;
    use crate::ops::projection::norm_weights;
    use crate::ops::rmsnorm;
    use crate::ops::testing::*;
    use crate::tensor::DType;

    #[test]
    fn matvec_matches_cpu_for_every_dtype() {
        check_projections(&[1]);
        // 4200001 rows (65627 workgroups) spill the grid into its y dimension.
        let b = require!(Bench::new());
        let w = random_tensor(DType::F32, 4_200_001, 1, 3);
        let p = Projection {
            w,
            up: None,
            what: "f32 4200001x1".into(),
        };
        let gw = upload(&b, &p.w, 128 << 20);
        let x = random(1, 4);
        let got = project(
            &b,
            builds(&b)[0],
            &p,
            &gw,
            None,
            &x,
            &vec![f32::NAN; p.w.rows],
            false,
        );
        let mut expect = vec![0.0; p.w.rows];
        matvec::cpu(&mut expect, &p.w, &x, CpuMode::Set);
        assert_close(&got, &expect, &p.what);
    }

    #[test]
    fn matvec_with_rmsnorm_matches_norm_then_matvec() {
        let b = require!(Bench::new());
        // The NORM pipeline: out = W (rmsnorm(x) * g), for the set and SwiGLU
        // modes, float and block types, odd widths.
        for (dtype, rows, cols) in [
            (DType::F32, 37, 75),
            (DType::F16, 130, 64),
            (DType::Q8_0, 70, 96),
            (DType::Q4_K, 9, 256),
        ] {
            let w = random_tensor(dtype, rows, cols, 3);
            let up = random_tensor(DType::F16, rows, cols, 4);
            let x: Vec<f32> = random(cols, 5).iter().map(|v| v * 20.0).collect();
            let g = random(cols, 6);
            let mut normed = vec![0.0; cols];
            rmsnorm::cpu(&mut normed, &x, &g, 1e-5);
            let (gw, gup) = b
                .gpu
                .scoped("upload", || {
                    GpuTensor::upload_pair(&b.gpu.device, &b.gpu.queue, &w, &up, 128 << 20, "t")
                })
                .unwrap()
                .unwrap();
            let gb = norm_weights(&b.gpu.device, "g", &g);
            for ((build, matvec, _), swiglu) in
                builds(&b).into_iter().flat_map(|b| [(b, false), (b, true)])
            {
                let (mode, cpu_mode) = match swiglu {
                    true => (Mode::SwiGlu { up: &gup }, CpuMode::SwiGlu { up: &up }),
                    false => (Mode::Set, CpuMode::Set),
                };
                let ob = b.buffer(&vec![f32::NAN; rows]);
                let xb = b.input(&x);
                let d = matvec.bind(
                    &b.gpu.device,
                    Bindings {
                        out: &ob,
                        w: &gw,
                        x: &xb,
                        mode,
                        norm: Some((&gb, 1e-5)),
                    },
                );
                b.run(&d, 1);
                let mut expect = vec![0.0; rows];
                matvec::cpu(&mut expect, &w, &normed, cpu_mode);
                // f32 sums in another order: relative to the sum of |terms| (for
                // SwiGLU, of both projections).
                let mut bound = magnitude(&w, &normed);
                if swiglu {
                    let mu = magnitude(&up, &normed);
                    bound = bound
                        .iter()
                        .zip(mu)
                        .map(|(m, u)| (1.0 + m) * (1.0 + u))
                        .collect();
                }
                for (i, (g, e)) in b.read(&ob).iter().zip(&expect).enumerate() {
                    let tolerance = 1e-5 * (1.0 + bound[i] + e.abs());
                    assert!(
                        (g - e).abs() <= tolerance,
                        "{dtype:?} {rows}x{cols} swiglu {swiglu} ({build} build): element {i}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
