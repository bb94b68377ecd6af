//! Residual add: `x += y`. See `shaders/add.wgsl`.

use super::{grid_64, Dispatch, Shader};

/// `shaders/add.wgsl`.
pub const SHADER: Shader = Shader {
    name: "add",
    source: include_str!("../../shaders/add.wgsl"),
};

/// Matches WGSL `Params` in add.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Vector length.
    pub n: u32,
}

/// Binds `x (n,) += y (n,)`.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    n: usize,
) -> Dispatch {
    let params = Params { n: n as u32 };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[x, y],
        grid_64(n as u32),
    )
}

/// Host reference.
pub fn cpu(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}
