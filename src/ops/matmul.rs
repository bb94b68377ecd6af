//! Projection of a prompt's tokens in one pass: `out[t] = W x[t]` (or `+=`,
//! or SwiGLU) for every token, tiled so each weight is read once per 8
//! tokens. See `shaders/matmul.wgsl`; the weights are a
//! [`GpuTensor`](super::matvec::GpuTensor) as for `matvec`.

use super::matvec::{input_binding, CpuMode, GpuTensor, Mode, MAX_COLS};
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

/// Most tokens per launch; matches the accumulators in matmul.wgsl.
pub const TILE: usize = 8;

/// The two builds of matmul.wgsl.
#[derive(Clone, Debug)]
pub struct Pipelines {
    /// Four rows per thread, 256 per workgroup (`FOUR_ROWS`).
    pub four_rows: wgpu::ComputePipeline,
    /// Two rows per thread, 128 per workgroup.
    pub two_rows: wgpu::ComputePipeline,
}

/// Rows per thread for a matrix of `rows`: four (each input value serves
/// more rows: 110M-shape prefill 1.3x on lavapipe), unless two leave fewer
/// rows computed in vain by threads whose later rows are past the end (a
/// 64-row matrix: 4x the work).
pub fn rows_per_thread(rows: usize) -> usize {
    // Rows computed, counting repeats: whole workgroups, then the last one's
    // threads (at most 64) times rows per thread.
    let work = |per: usize| rows / (64 * per) * 64 * per + (rows % (64 * per)).min(64) * per;
    if work(4) <= work(2) {
        4
    } else {
        2
    }
}

/// Binds `out (n, out_stride)[.., ..rows] = x (n, x_stride)[.., ..cols] @ w
/// (rows, cols)^T` as `mode` says, for up to `tokens` tokens of a pass (`n`
/// from `step`): per chunk of `w`, one launch per tile of up to 8 tokens,
/// each binding its tokens' rows of `x` as a 64 KiB uniform buffer (so
/// `x_stride` must be [`input_stride`](super::matvec::input_stride)`(cols)`
/// and `x` must hold [`INPUT_BYTES`](super::matvec::INPUT_BYTES) past the
/// last tile's first row).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipelines: &Pipelines,
    out: &wgpu::Buffer,
    out_stride: usize,
    w: &GpuTensor,
    x: &wgpu::Buffer,
    x_stride: usize,
    step: &wgpu::Buffer,
    mode: Mode,
    tokens: usize,
) -> Dispatch {
    let tile = (MAX_COLS / x_stride).clamp(1, TILE);
    let per_thread = rows_per_thread(w.rows) as u32;
    let pipeline = match per_thread {
        4 => &pipelines.four_rows,
        _ => &pipelines.two_rows,
    };
    let mut dispatch = Dispatch::empty(pipeline);
    for first in (0..tokens).step_by(tile) {
        for (mut params, view, up) in w.chunk_params(mode, out_stride) {
            params.x_stride = x_stride as u32;
            params.first_token = first as u32;
            params.tile = tile as u32;
            let resources = vec![
                wgpu::BindingResource::TextureView(view),
                step.as_entire_binding(),
                input_binding(x, first, x_stride),
                out.as_entire_binding(),
                wgpu::BindingResource::TextureView(up),
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

/// Host reference: [`super::matvec::cpu`] for each token's row of `x` (n,
/// cols) into its row of `out` (n, rows).
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32], mode: CpuMode) {
    for (o, x) in out.chunks_mut(w.rows).zip(x.chunks(w.cols)) {
        super::matvec::cpu(o, w, x, mode);
    }
}
