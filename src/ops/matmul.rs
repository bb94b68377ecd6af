//! Projection of a prompt's tokens in one pass: `out[t] = W x[t]` (or `+=`,
//! or SwiGLU) for every token, tiled so each weight is read once per 8
//! tokens. See `shaders/matmul.wgsl`; the weights are a
//! [`GpuTensor`](super::matvec::GpuTensor) as for `matvec`.

use super::matvec::{bind_chunks, CpuMode, GpuTensor, Mode};
use super::{grid, Dispatch, Shader};
use crate::tensor::Tensor;

/// `shaders/matmul.wgsl` after `shaders/dequant.wgsl`.
pub const SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matmul.wgsl")
    ),
};

/// Tokens per workgroup; matches `TOKENS` in matmul.wgsl.
pub const TOKENS: u32 = 8;

/// Binds `out (n, rows) = x (n, cols) @ w (rows, cols)^T` as `mode` says, for
/// the `n` tokens of the pass (from `step`; the grid's z is set when
/// recorded), one launch per chunk of `w`.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &GpuTensor,
    x: &wgpu::Buffer,
    step: &wgpu::Buffer,
    mode: Mode,
) -> Dispatch {
    bind_chunks(
        device,
        pipeline,
        w,
        &[
            step.as_entire_binding(),
            x.as_entire_binding(),
            out.as_entire_binding(),
        ],
        mode,
        true,
        |rows| grid(rows.div_ceil(64)),
    )
    .batched(TOKENS)
}

/// Host reference: [`super::matvec::cpu`] for each token's row of `x` (n,
/// cols) into its row of `out` (n, rows).
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32], mode: CpuMode) {
    for (o, x) in out.chunks_mut(w.rows).zip(x.chunks(w.cols)) {
        super::matvec::cpu(o, w, x, mode);
    }
}
