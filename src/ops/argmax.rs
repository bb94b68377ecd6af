//! Argmax of the logits on the GPU (greedy decoding reads back 4 bytes). See
//! `shaders/argmax.wgsl`; the host reference is [`crate::sampler::argmax`].

use super::{Dispatch, Shader};

/// `shaders/argmax.wgsl`.
pub const SHADER: Shader = Shader {
    name: "argmax",
    source: include_str!("../../shaders/argmax.wgsl"),
};

/// Matches WGSL `Params` in argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Vector length.
    pub n: u32,
}

/// Binds `out (1,) u32 = argmax(x (n,))`, lowest index on ties.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    x: &wgpu::Buffer,
    n: usize,
) -> Dispatch {
    let params = Params { n: n as u32 };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[x, out],
        [1, 1, 1],
    )
}

pub use crate::sampler::argmax as cpu;
