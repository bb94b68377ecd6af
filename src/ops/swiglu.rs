//! SwiGLU: `gate = silu(gate) * up`. See `shaders/swiglu.wgsl`.

use super::{grid_64, Dispatch, Shader};

/// `shaders/swiglu.wgsl`.
pub const SHADER: Shader = Shader {
    name: "swiglu",
    source: include_str!("../../shaders/swiglu.wgsl"),
};

/// Matches WGSL `Params` in swiglu.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Vector length.
    pub n: u32,
}

/// Binds `gate (n,) = silu(gate) * up (n,)`.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    n: usize,
) -> Dispatch {
    let params = Params { n: n as u32 };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[gate, up],
        grid_64(n as u32),
    )
}

/// Host reference (llama2.c's SwiGLU loop).
pub fn cpu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g * (1.0 / (1.0 + (-*g).exp())) * u;
    }
}
