//! RMSNorm: `out = weight * x / sqrt(mean(x^2) + eps)`, or, as a residual
//! add, `out += weight * x / sqrt(mean(x^2) + eps)`. See `shaders/rmsnorm.wgsl`.

use super::projection::NextNorm;
use super::{Dispatch, Needs, Pipelines, Shader, Variant};

/// `shaders/rmsnorm.wgsl` after `shaders/prelude.wgsl`.
pub const SHADER: Shader = Shader {
    name: "rmsnorm",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/rmsnorm.wgsl")
    ),
    needs: Needs {
        storage_buffers: 5,
        uniform_bytes: 16,
        textures: 0,
        workgroup_bytes: 1024,
        invocations: 256,
        subgroups: false,
    },
};

/// Matches WGSL `Params` in rmsnorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Vector length.
    pub n: u32,
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// 1: only the pass's last token, into row 0 of `out`.
    pub last: u32,
    /// Values from one token's row to the next, in `x` and `out`.
    pub stride: u32,
}

/// Which rows a norm reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Every token's row, each into its own row of `out`.
    All,
    /// The pass's last token's row, into row 0 of `out` (the classifier's input).
    Last,
}

/// What a norm reads and writes, for the n tokens of the pass in `step`.
pub struct Bindings<'a> {
    /// (n, stride) normalised rows (only row 0 with [`Rows::Last`]).
    pub out: &'a wgpu::Buffer,
    /// (n, stride) input rows, `len` values used per row.
    pub x: &'a wgpu::Buffer,
    /// (len,) f32 weights.
    pub weight: &'a wgpu::Buffer,
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// Values normalised per row.
    pub len: usize,
    /// Values from one token's row to the next, in `x` and `out`.
    pub stride: usize,
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// Every token's row, or only the last.
    pub rows: Rows,
    /// `Some`: the normed rows are added to `out` (the residual stream),
    /// which then also goes times the next norm's weights into its `xg`
    /// (the RESIDUAL build).
    pub residual: Option<NextNorm<'a>>,
}

/// The build that adds the normed rows to the stream (`residual`) or not.
pub fn variant(residual: bool) -> Variant {
    Variant {
        shader: SHADER,
        constants: match residual {
            true => vec![("RESIDUAL", 1.0)],
            false => Vec::new(),
        },
    }
}

/// The RMSNorm kernel, its builds compiled on first use.
#[derive(Debug)]
pub struct RmsNorm {
    pipelines: Pipelines,
}

impl RmsNorm {
    /// Prepares the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipelines: Pipelines::new(c, SHADER),
        }
    }

    /// Binds `out[t] = rmsnorm(x[t]) * weight` (or, with `residual`, `out[t]
    /// += ..` and `xg[t] = out[t] * g`) row by row for the tokens of the
    /// pass, or only the last (into row 0).
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let params = Params {
            n: b.len as u32,
            eps: b.eps,
            last: (b.rows == Rows::Last) as u32,
            stride: b.stride as u32,
        };
        // Without a residual add, weight and out fill its slots.
        let (g, xg) = b.residual.map_or((b.weight, b.out), |n| (n.g, n.xg));
        let d = Dispatch::new(
            device,
            &self.pipelines.get(variant(b.residual.is_some()).constants),
            bytemuck::bytes_of(&params),
            &[b.x, b.weight, b.out, b.step, g, xg],
            [1, 1, 1],
        );
        match b.rows {
            Rows::All => d.batched(1),
            Rows::Last => d,
        }
    }
}

/// Host reference (llama2.c's `rmsnorm`).
pub fn cpu(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps;
    let scale = 1.0 / ss.sqrt();
    for ((o, &w), &v) in out.iter_mut().zip(weight).zip(x) {
        *o = w * (scale * v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn rmsnorm_matches_cpu() {
        let b = require!(Bench::new());
        for (n, tokens, seed) in [(1, 1, 1), (255, 3, 2), (1001, 2, 3)] {
            // Rows 7 values wider than the vector: the padding is neither read nor written.
            let stride = n + 7;
            let x: Vec<f32> = random(tokens * stride, seed)
                .iter()
                .map(|v| v * 30.0)
                .collect();
            let w = random(n, seed + 1);
            let mut expect = vec![0.0; tokens * n];
            for (o, x) in expect.chunks_mut(n).zip(x.chunks(stride)) {
                cpu(o, &x[..n], &w, 1e-5);
            }
            let (xb, wb, step) = (b.buffer(&x), b.buffer(&w), b.step(0, tokens));
            for rows in [Rows::All, Rows::Last] {
                let ob = b.buffer(&vec![f32::NAN; tokens * stride]);
                let d = b.kernels.rmsnorm.bind(
                    &b.gpu.device,
                    Bindings {
                        out: &ob,
                        x: &xb,
                        weight: &wb,
                        step: &step,
                        len: n,
                        stride,
                        eps: 1e-5,
                        rows,
                        residual: None,
                    },
                );
                b.run(&d, tokens);
                let got = b.read(&ob);
                let written = match rows {
                    Rows::All => tokens,
                    // Only the last token's row, into row 0.
                    Rows::Last => 1,
                };
                let values: Vec<f32> = got
                    .chunks(stride)
                    .take(written)
                    .flat_map(|r| &r[..n])
                    .copied()
                    .collect();
                let want = &expect[(tokens - written) * n..];
                assert_close(&values, want, &format!("rmsnorm {n} x {tokens} {rows:?}"));
                let untouched = got.chunks(stride).enumerate().all(|(t, r)| {
                    let from = if t < written { n } else { 0 };
                    r[from..].iter().all(|v| v.is_nan())
                });
                assert!(untouched, "rmsnorm {n} {rows:?} wrote outside its rows");
            }
        }
    }

    #[test]
    fn residual_build_adds_the_normed_rows_and_writes_the_next_norms_input() {
        let b = require!(Bench::new());
        let (n, tokens, stride) = (300, 3, 305);
        let x: Vec<f32> = random(tokens * stride, 4).iter().map(|v| v * 9.0).collect();
        let (w, next_g) = (random(n, 5), random(n, 6));
        let stream = random(tokens * stride, 7);
        let (xb, wb, gb) = (b.buffer(&x), b.buffer(&w), b.buffer(&next_g));
        let (ob, xgb) = (
            b.buffer(&stream),
            b.buffer(&vec![f32::NAN; tokens * stride]),
        );
        let step = b.step(0, tokens);
        let d = b.kernels.rmsnorm.bind(
            &b.gpu.device,
            Bindings {
                out: &ob,
                x: &xb,
                weight: &wb,
                step: &step,
                len: n,
                stride,
                eps: 1e-6,
                rows: Rows::All,
                residual: Some(NextNorm { g: &gb, xg: &xgb }),
            },
        );
        b.run(&d, tokens);
        let (got, xg) = (b.read(&ob), b.read(&xgb));
        let mut normed = vec![0.0; n];
        for t in 0..tokens {
            let row = t * stride..t * stride + n;
            cpu(&mut normed, &x[row.clone()], &w, 1e-6);
            let expect: Vec<f32> = stream[row.clone()]
                .iter()
                .zip(&normed)
                .map(|(s, y)| s + y)
                .collect();
            assert_close(&got[row.clone()], &expect, &format!("stream row {t}"));
            // xg is the stream as written, times g, exactly.
            for i in row.clone() {
                assert_eq!(xg[i].to_bits(), (got[i] * next_g[i - t * stride]).to_bits());
            }
            // The padding is neither read nor written.
            let pad = t * stride + n..(t + 1) * stride;
            assert_eq!(&got[pad.clone()], &stream[pad.clone()]);
            assert!(xg[pad].iter().all(|v| v.is_nan()));
        }
    }
}
