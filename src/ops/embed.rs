//! Token embedding: the row of the current token, decoded to f32. See
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

/// Binds `out (cols,) = table[step.token]`, one launch per chunk of `table`
/// (only the chunk holding the token writes).
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    table: &GpuTensor,
    step: &wgpu::Buffer,
) -> Dispatch {
    let groups = grid_64(table.cols as u32);
    bind_chunks(device, pipeline, table, &[step, out], false, |_| groups)
}

/// Host reference: row `token` of `table`.
pub fn cpu(out: &mut [f32], table: &Tensor, token: u32) {
    table.dequantize_row(token as usize, out);
}
