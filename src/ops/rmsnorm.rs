//! RMSNorm: `out = weight * x / sqrt(mean(x^2) + eps)`. See `shaders/rmsnorm.wgsl`.

use super::{Dispatch, Shader};

/// `shaders/rmsnorm.wgsl`.
pub const SHADER: Shader = Shader {
    name: "rmsnorm",
    source: include_str!("../../shaders/rmsnorm.wgsl"),
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

/// Binds `out (tokens, stride)[.., ..n] = rmsnorm(x (tokens, stride)[.., ..n])
/// * weight (n,)` row by row for the tokens of the pass in `step`, or only
/// the last (`rows`).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    step: &wgpu::Buffer,
    n: usize,
    stride: usize,
    eps: f32,
    rows: Rows,
) -> Dispatch {
    let params = Params {
        n: n as u32,
        eps,
        last: (rows == Rows::Last) as u32,
        stride: stride as u32,
    };
    let d = Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[x, weight, out, step],
        [1, 1, 1],
    );
    match rows {
        Rows::All => d.batched(1),
        Rows::Last => d,
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
