//! Projection of one token: `out = W x` (or `+=`, or SwiGLU of two
//! matrices), W (rows, cols) in any [`DType`](crate::tensor::DType), split
//! into row-chunks when larger than one texture. See `shaders/matvec_row.wgsl`.

use super::projection::{input_binding, GpuTensor, Mode, NextNorm};
use super::{grid, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::kv_cache::KvDtype;
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
    storage_buffers: 5,
    uniform_bytes: 65536,
    textures: 2,
    workgroup_bytes: 256,
    invocations: 64,
    subgroups: false,
};

/// `shader`'s build for weights of `dtype` (and, `swiglu`, an up projection of `up`)
/// that scales each sum by `1 / rms(residual)` when `norm` (its input being
/// `x * g`: the RMSNorm before the projection), rotates and appends in its
/// epilogue when `rope`, and writes the next norm's input when `next_norm`
/// (overrides NORM, ROPE, NEXT_NORM, SWIGLU, DTYPE, UP_DTYPE).
pub fn variant(
    shader: Shader,
    norm: bool,
    rope: bool,
    next_norm: bool,
    swiglu: bool,
    dtype: DType,
    up: DType,
) -> Variant {
    let flag = |on: bool| f64::from(u8::from(on));
    Variant {
        shader,
        constants: vec![
            ("NORM", flag(norm)),
            ("ROPE", flag(rope)),
            ("NEXT_NORM", flag(next_norm)),
            ("SWIGLU", flag(swiglu)),
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
    /// [`INPUT_BYTES`](super::projection::INPUT_BYTES); with `norm`, the
    /// residual stream times the norm's weights, `x * g` (a [`NextNorm`]'s `xg`).
    pub x: &'a wgpu::Buffer,
    /// What is done with `W x`.
    pub mode: Mode<'a>,
    /// `Some((residual, eps))`: the product is `W (rmsnorm(residual) * g)`,
    /// computed as `(W xg) / rms(residual)` (the NORM build), `x` being
    /// `xg`; `residual` (cols,) is a UNIFORM buffer of at least `INPUT_BYTES`.
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
    /// `Some`: `mode` is `Add` (a residual add), and the epilogue also
    /// writes `xg = out * g` for the NORM projection that reads `out` next
    /// (the NEXT_NORM build).
    pub next_norm: Option<NextNorm<'a>>,
    /// `Some`: `w` is a QKV projection (q, then k, then v rows; row-chunks
    /// of even rows), `mode` is `Set`, and the epilogue does
    /// [`rope_append`](super::rope_append)'s work for the one token of the
    /// pass (the ROPE build): `out` (q_dim,) gets the rotated q, the
    /// caches' row `step.pos` the rotated k and v.
    pub rope: Option<RopeAppend<'a>>,
}

/// Where the ROPE build's epilogue writes (see [`Bindings::rope`]).
pub struct RopeAppend<'a> {
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// (capacity, head_size / 2, 2) cos/sin, [`Rope::table`](crate::rope::Rope::table) on the GPU.
    pub table: &'a wgpu::Buffer,
    /// (capacity, kv_dim) keys of a flat cache.
    pub k_cache: &'a wgpu::Buffer,
    /// (capacity, kv_dim) values, likewise.
    pub v_cache: &'a wgpu::Buffer,
    /// Widths and cache storage: f32 or f16 (quantized caches append in
    /// their own kernel, whose blocks span threads).
    pub shape: super::rope_append::Shape,
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
            let rope = b.rope.as_ref();
            debug_assert!(b.next_norm.is_none() || matches!(b.mode, Mode::Add));
            let v = variant(
                self.shader,
                b.norm.is_some(),
                rope.is_some(),
                b.next_norm.is_some(),
                matches!(b.mode, Mode::SwiGlu { .. } | Mode::GeGlu { .. }),
                c.dtype,
                up.dtype,
            );
            dispatch.set_pipeline(&self.pipelines.get(v.constants));
            params.eps = b.norm.map_or(0.0, |(_, eps)| eps);
            if let Some(r) = rope {
                debug_assert!(matches!(r.shape.kv_dtype, KvDtype::F32 | KvDtype::F16));
                debug_assert!(c.start % 2 == 0, "a chunk of QKV starts on an odd row");
                params.q_dim = r.shape.q_dim as u32;
                params.kv_dim = r.shape.kv_dim as u32;
                params.head_size = r.shape.head_size as u32;
                params.kv_dtype = r.shape.kv_dtype.gpu_id();
            }
            // Other builds bind x and out in the ROPE build's slots.
            let (step, table, k_cache, v_cache) = match rope {
                Some(r) => (r.step.as_entire_binding(), r.table, r.k_cache, r.v_cache),
                None => (input_binding(b.x, 0, 0), b.out, b.out, b.out),
            };
            // And x and out in the NEXT_NORM build's.
            let (next_g, xg) = match b.next_norm {
                Some(n) => (n.g, n.xg),
                None => (b.x, b.out),
            };
            let resources = vec![
                wgpu::BindingResource::TextureView(&c.view),
                input_binding(b.x, 0, 0),
                b.out.as_entire_binding(),
                wgpu::BindingResource::TextureView(&up.view),
                input_binding(b.norm.map_or(b.x, |(g, _)| g), 0, 0),
                step,
                table.as_entire_binding(),
                k_cache.as_entire_binding(),
                v_cache.as_entire_binding(),
                input_binding(next_g, 0, 0),
                xg.as_entire_binding(),
            ];
            // One thread per row.
            let groups = grid(params.rows.div_ceil(64));
            dispatch.push_resources(device, bytemuck::bytes_of(&params), resources, groups);
        }
        dispatch
    }
}

/// Host reference: `out = w x`, `out += w x` or `out = act(w x) * (up x)`
/// by dequantizing each row and taking its dot product with `x` (for a
/// NORM matvec, pass `rmsnorm::cpu`'s output as `x`).
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32], mode: CpuMode) {
    let mut y = vec![0.0; out.len()];
    w.matvec(x, &mut y);
    match mode {
        CpuMode::Set => out.copy_from_slice(&y),
        CpuMode::Add => out.iter_mut().zip(y).for_each(|(o, y)| *o += y),
        CpuMode::Gated { up, activation } => {
            let mut u = vec![0.0; out.len()];
            up.matvec(x, &mut u);
            for ((o, g), u) in out.iter_mut().zip(y).zip(u) {
                *o = activation.apply(g) * u;
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
    /// `out = act(W x) * (up x)`.
    Gated {
        /// The up projection.
        up: &'a Tensor,
        /// The gate's activation.
        activation: crate::arch::Activation,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Activation;
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
    fn qkv_with_rope_append_matches_matvec_then_rope_append() {
        use crate::ops::rope_append::{self, Shape};
        use crate::rope::Rope;
        let b = require!(Bench::new());
        // The ROPE build: q = rope(Wq x) into out, rope(Wk x) and Wv x into
        // the caches' row pos; every other row untouched. 9 query heads over
        // 3 KV heads of 16 (SmolLM2's grouping): 240 rows, 4 workgroups, or
        // row-chunks of 18 (Q8_0) and 4 rows (F16).
        let (head_size, n_heads, n_kv_heads, capacity) = (16, 9, 3, 7);
        let (q_dim, kv_dim) = (n_heads * head_size, n_kv_heads * head_size);
        let rows = q_dim + 2 * kv_dim;
        let rope = Rope {
            head_size,
            rope_dim: head_size,
            theta: 10000.0,
            freq_factors: None,
            pairing: crate::rope::Pairing::Adjacent,
        };
        let table = b.buffer(&rope.table(capacity));
        for (dtype, cols, limit) in [
            (DType::F32, 64, 128 << 20),
            (DType::Q4_1, 160, 128 << 20),
            (DType::Q8_0, 96, 2048),
            (DType::F16, 40, 4 * 80 + 1),
        ] {
            let w = random_tensor(dtype, rows, cols, 3);
            let gw = upload(&b, &w, limit);
            let x = random(cols, 5);
            let mut qkv = vec![0.0; rows];
            matvec::cpu(&mut qkv, &w, &x, CpuMode::Set);
            for kv_dtype in [KvDtype::F32, KvDtype::F16] {
                let shape = Shape {
                    q_dim,
                    kv_dim,
                    head_size,
                    capacity,
                    kv_dtype,
                    rows: capacity,
                };
                for ((build, matvec, _), pos) in builds(&b)
                    .into_iter()
                    .flat_map(|b| [(b, 0), (b, capacity - 1), (b, 4)])
                {
                    let k0 = rounded(&random(capacity * kv_dim, 1), kv_dim, kv_dtype);
                    let v0 = rounded(&random(capacity * kv_dim, 2), kv_dim, kv_dtype);
                    let (kcb, vcb) = (
                        b.cache(&k0, kv_dim, kv_dtype),
                        b.cache(&v0, kv_dim, kv_dtype),
                    );
                    let (ob, xb, step) = (
                        b.buffer(&vec![f32::NAN; q_dim]),
                        b.input(&x),
                        b.step(pos, 1),
                    );
                    let d = matvec.bind(
                        &b.gpu.device,
                        Bindings {
                            out: &ob,
                            w: &gw,
                            x: &xb,
                            mode: Mode::Set,
                            norm: None,
                            next_norm: None,
                            rope: Some(RopeAppend {
                                step: &step,
                                table: &table,
                                k_cache: &kcb,
                                v_cache: &vcb,
                                shape,
                            }),
                        },
                    );
                    b.run(&d, 1);
                    let (mut eq, mut ek, mut ev) = (vec![0.0; q_dim], k0.clone(), v0.clone());
                    let no_prep = (None, None, 0.0);
                    rope_append::cpu(
                        &mut eq, &mut ek, &mut ev, &qkv, pos, &rope, kv_dtype, no_prep,
                    );
                    let what =
                        format!("{dtype:?} {rows}x{cols} {kv_dtype:?} pos {pos} ({build} build)");
                    assert_close(&b.read(&ob), &eq, &format!("q {what}"));
                    let read = |c| b.read_cache(c, kv_dim, kv_dtype);
                    for (name, got, expect, before) in
                        [("k", read(&kcb), ek, k0), ("v", read(&vcb), ev, v0)]
                    {
                        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                            if i / kv_dim == pos {
                                // f32 sums in another order, then rounded as the cache stores them.
                                let tolerance =
                                    1e-4 * (1.0 + e.abs()) + cache_tolerance(kv_dtype, *e, e.abs());
                                assert!(
                                    (g - e).abs() <= tolerance,
                                    "{name} {what}: element {i}: {g} vs {e}"
                                );
                            } else {
                                assert_eq!(g, &before[i], "{name} {what}: element {i} touched");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matvec_with_rmsnorm_matches_norm_then_matvec() {
        let b = require!(Bench::new());
        // The NORM pipeline: out = W (rmsnorm(x) * g), from x * g and x, for
        // the set and SwiGLU modes, float and block types, odd widths.
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
            let xg: Vec<f32> = x.iter().zip(&g).map(|(x, g)| x * g).collect();
            let gated = |activation| CpuMode::Gated {
                up: &up,
                activation,
            };
            for ((build, matvec, _), act) in builds(&b).into_iter().flat_map(|b| {
                [
                    (b, None),
                    (b, Some(Activation::Silu)),
                    (b, Some(Activation::GeluTanh)),
                ]
            }) {
                let swiglu = act.is_some();
                let (mode, cpu_mode) = match act {
                    Some(a) => (Mode::gated(a, &gup), gated(a)),
                    None => (Mode::Set, CpuMode::Set),
                };
                let ob = b.buffer(&vec![f32::NAN; rows]);
                let (xb, xgb) = (b.input(&x), b.input(&xg));
                let d = matvec.bind(
                    &b.gpu.device,
                    Bindings {
                        out: &ob,
                        w: &gw,
                        x: &xgb,
                        mode,
                        norm: Some((&xb, 1e-5)),
                        next_norm: None,
                        rope: None,
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
                        "{dtype:?} {rows}x{cols} {act:?} ({build} build): element {i}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn residual_add_writes_the_next_norms_input() {
        let b = require!(Bench::new());
        // The NEXT_NORM pipeline: out += W x, and xg = out * g bit for bit
        // (the NORM projection's input); in row-chunks too (Q8_0, 2 KiB).
        for (dtype, rows, cols, limit) in [
            (DType::F32, 37, 75, 128 << 20),
            (DType::Q4_1, 130, 64, 128 << 20),
            (DType::Q8_0, 70, 96, 2048),
        ] {
            let w = random_tensor(dtype, rows, cols, 3);
            let gw = upload(&b, &w, limit);
            let x = random(cols, 5);
            let (before, g) = (random(rows, 7), random(rows, 6));
            let gb = norm_weights(&b.gpu.device, "g", &g);
            let mut expect = before.clone();
            matvec::cpu(&mut expect, &w, &x, CpuMode::Add);
            for (build, matvec, _) in builds(&b) {
                let (ob, xb) = (b.buffer(&before), b.input(&x));
                let xgb = b.buffer(&vec![f32::NAN; rows]);
                let d = matvec.bind(
                    &b.gpu.device,
                    Bindings {
                        out: &ob,
                        w: &gw,
                        x: &xb,
                        mode: Mode::Add,
                        norm: None,
                        next_norm: Some(NextNorm { g: &gb, xg: &xgb }),
                        rope: None,
                    },
                );
                b.run(&d, 1);
                let got = b.read(&ob);
                let what = format!("{dtype:?} {rows}x{cols} ({build} build)");
                let bound = magnitude(&w, &x);
                for (i, (o, e)) in got.iter().zip(&expect).enumerate() {
                    let tolerance = 1e-5 * (1.0 + bound[i] + e.abs());
                    assert!(
                        (o - e).abs() <= tolerance,
                        "{what}: element {i}: {o} vs {e}"
                    );
                }
                for (i, (s, o)) in b.read(&xgb).iter().zip(&got).enumerate() {
                    assert_eq!(s.to_bits(), (o * g[i]).to_bits(), "{what}: xg {i}");
                }
            }
        }
    }
}
