//! Projection: `out = W x`, W row-major (rows, cols). See `shaders/matvec.wgsl`.

use super::{grid, Dispatch, Shader};

/// `shaders/matvec.wgsl`.
pub const SHADER: Shader = Shader {
    name: "matvec",
    source: include_str!("../../shaders/matvec.wgsl"),
};

/// Matches WGSL `Params` in matvec.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Output length (rows of W).
    pub rows: u32,
    /// Input length (columns of W).
    pub cols: u32,
}

/// Binds `out (rows,) = w (rows, cols) @ x (cols,)`.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &wgpu::Buffer,
    x: &wgpu::Buffer,
    rows: usize,
    cols: usize,
) -> Dispatch {
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[w, x, out],
        grid((rows as u32).div_ceil(64)),
    )
}

/// Host reference: `out[r] = sum_c w[r * cols + c] * x[c]`, with cols = x.len().
pub fn cpu(out: &mut [f32], w: &[f32], x: &[f32]) {
    let cols = x.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = w[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(a, b)| a * b)
            .sum();
    }
}
