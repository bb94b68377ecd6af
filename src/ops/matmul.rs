//! Projection of a prompt's tokens in one pass: `out[t] = W x[t]` (or `+=`,
//! or SwiGLU) for every token, tiled so each weight is read once per 8
//! tokens. See `shaders/matmul_tile.wgsl`; the weights are a
//! [`GpuTensor`] as for `matvec`.

use super::projection::{input_binding, GpuTensor, Mode, MAX_COLS};
use super::{grid, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::tensor::DType;

/// `shaders/matmul.wgsl` after `shaders/prelude.wgsl`, `shaders/dequant.wgsl`
/// and `shaders/matmul_tile.wgsl`: every thread reads its inputs.
pub const SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matmul_tile.wgsl"),
        include_str!("../../shaders/matmul.wgsl")
    ),
    needs: NEEDS,
};

/// The same product with each input read shared across a subgroup
/// (`shaders/matmul_subgroup.wgsl` in place of `shaders/matmul.wgsl`).
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "matmul_subgroup",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matmul_tile.wgsl"),
        include_str!("../../shaders/matmul_subgroup.wgsl")
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

/// `shader`'s build for weights of `dtype` (and an up projection of `up`), four
/// rows per thread (256 per workgroup) or two (128) (overrides FOUR_ROWS,
/// DTYPE, UP_DTYPE).
pub fn variant(shader: Shader, four_rows: bool, dtype: DType, up: DType) -> Variant {
    Variant {
        shader,
        constants: vec![
            ("FOUR_ROWS", f64::from(u8::from(four_rows))),
            ("DTYPE", dtype.gpu_id() as f64),
            ("UP_DTYPE", up.gpu_id() as f64),
        ],
    }
}

/// Most tokens per launch; matches the accumulators in matmul_tile.wgsl.
pub const TILE: usize = 8;

/// What a prefill projection reads and writes, for up to `tokens` tokens
/// of a pass (n from `step`).
pub struct Bindings<'a> {
    /// (n, out_stride) output rows, `w.rows` values used per row.
    pub out: &'a wgpu::Buffer,
    /// Values from one token's row of `out` to the next.
    pub out_stride: usize,
    /// (rows, cols) weights.
    pub w: &'a GpuTensor,
    /// (n, x_stride) inputs, bound a tile of tokens at a time as a 64 KiB
    /// uniform buffer: `x_stride` must be
    /// [`input_stride`](super::projection::input_stride)`(cols)` and `x` must
    /// hold [`INPUT_BYTES`](super::projection::INPUT_BYTES) past the last
    /// tile's first row.
    pub x: &'a wgpu::Buffer,
    /// Values from one token's row of `x` to the next.
    pub x_stride: usize,
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// What is done with `W x`.
    pub mode: Mode<'a>,
    /// Most tokens a pass runs (a launch is bound per tile of them).
    pub tokens: usize,
}

/// A build of the matmul kernel ([`SHADER`] or [`SUBGROUP_SHADER`]): four
/// rows per thread (256 per workgroup, `FOUR_ROWS`) and two (128 per
/// workgroup), per storage type (see [`variant`]; compiled on first use).
#[derive(Debug)]
pub struct Matmul {
    shader: Shader,
    pipelines: Pipelines,
}

/// Rows per thread for a matrix of `rows`: four (each input value serves
/// more rows: 110M-shape prefill 1.3x on lavapipe), unless two leave fewer
/// rows computed in vain by threads whose later rows are past the end (a
/// 64-row matrix: 4x the work).
pub fn rows_per_thread(rows: usize) -> usize {
    // Rows computed, counting repeats: whole workgroups, then the last one's
    // threads (at most 64) times rows per thread.
    let work = |per: usize| rows / (64 * per) * 64 * per + (rows % (64 * per)).min(64) * per;
    if 4 * work(4) <= 5 * work(2) {
        4
    } else {
        2
    }
}

impl Matmul {
    /// Prepares `shader`'s build of the kernel.
    pub fn new(c: &super::Compiler, shader: Shader) -> Self {
        Self {
            shader,
            pipelines: Pipelines::new(c, shader),
        }
    }

    /// Binds `out (n, out_stride)[.., ..rows] = x (n, x_stride)[.., ..cols] @
    /// w (rows, cols)^T` as `mode` says: per chunk of `w`, one launch per tile
    /// of up to [`TILE`] tokens, each binding its tokens' rows of `x` as a
    /// 64 KiB uniform buffer.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let tile = (MAX_COLS / b.x_stride).clamp(1, TILE);
        let per_thread = rows_per_thread(b.w.rows) as u32;
        let mut dispatch = Dispatch::none();
        for first in (0..b.tokens).step_by(tile) {
            for (mut params, c, up) in b.w.chunk_params(b.mode, b.out_stride) {
                let v = variant(self.shader, per_thread == 4, c.dtype, up.dtype);
                dispatch.set_pipeline(&self.pipelines.get(v.constants));
                params.x_stride = b.x_stride as u32;
                params.first_token = first as u32;
                params.tile = tile as u32;
                let resources = vec![
                    wgpu::BindingResource::TextureView(&c.view),
                    b.step.as_entire_binding(),
                    input_binding(b.x, first, b.x_stride),
                    b.out.as_entire_binding(),
                    wgpu::BindingResource::TextureView(&up.view),
                ];
                let groups = grid(params.rows.div_ceil(64 * per_thread));
                dispatch.push_tile(
                    device,
                    bytemuck::bytes_of(&params),
                    resources,
                    groups,
                    first as u32,
                );
            }
        }
        dispatch
    }
}

/// Host reference: [`super::matvec::cpu`] for each token's row of `x` (n,
/// cols) into its row of `out` (n, rows).
#[cfg(test)]
pub fn cpu(out: &mut [f32], w: &crate::tensor::Tensor, x: &[f32], mode: super::matvec::CpuMode) {
    for (o, x) in out.chunks_mut(w.rows).zip(x.chunks(w.cols)) {
        super::matvec::cpu(o, w, x, mode);
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::matmul;
    use crate::ops::testing::*;

    #[test]
    fn matmul_matches_cpu_for_every_dtype() {
        // Four rows per thread where two would not leave less work in vain.
        let per_thread = [64, 172, 301, 576, 768, 1000, 2048].map(matmul::rows_per_thread);
        assert_eq!(per_thread, [2, 4, 2, 4, 4, 4, 4]);
        // Partial and whole tiles of 8 tokens.
        check_projections(&[2, 8, 13]);
    }
}
