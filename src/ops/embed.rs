//! Token embedding: each token's row of the table, decoded to f32. See
//! `shaders/embed.wgsl`.

use super::matvec::{bind_chunks, GpuTensor};
use super::{grid_64, Dispatch, Shader};
use crate::tensor::Tensor;

/// `shaders/embed.wgsl` after `shaders/dequant.wgsl`.
pub const SHADER: Shader = Shader {
    name: "embed",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/embed.wgsl")
    ),
};

/// Binds `out (n, stride)[.., ..cols] = table[tokens (n,)]`, one launch per
/// chunk of `table` (only the chunk holding a token writes its row).
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    stride: usize,
    table: &GpuTensor,
    tokens: &wgpu::Buffer,
) -> Dispatch {
    let groups = grid_64(table.cols as u32);
    bind_chunks(
        device,
        pipeline,
        table,
        &[tokens.as_entire_binding(), out.as_entire_binding()],
        stride,
        |_| groups,
    )
    .batched(1)
}

/// Host reference: row `token` of `table`.
pub fn cpu(out: &mut [f32], table: &Tensor, token: u32) {
    table.dequantize_row(token as usize, out);
}
