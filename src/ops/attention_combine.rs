//! The second half of split-K attention: merges the partial results of the
//! splits of a long context. See `shaders/attention_combine.wgsl`; the host
//! reference of the pair is [`attention::cpu`](super::attention::cpu).

use super::{Dispatch, Shader};

/// `shaders/attention_combine.wgsl`.
pub const SHADER: Shader = Shader {
    name: "attention_combine",
    source: include_str!("../../shaders/attention_combine.wgsl"),
};

/// Matches WGSL `Params` in attention_combine.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Query heads.
    pub n_heads: u32,
    /// Size of one head.
    pub head_size: u32,
    /// Rows in the cache.
    pub capacity: u32,
    /// Values from one token's row of `out` to the next.
    pub out_stride: u32,
    /// Positions per split.
    pub split: u32,
    /// Splits of the cache.
    pub splits: u32,
}

/// Binds, for each token of the pass in `step` whose positions span more
/// than one split of `split`, `out[t]` (rows `out_stride` apart) = the merge
/// of its splits' results in `partials` (n, n_heads, ceil(capacity / split),
/// head_size + 2), as written by [`attention::dispatch`](super::attention::dispatch).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    out_stride: usize,
    partials: &wgpu::Buffer,
    step: &wgpu::Buffer,
    n_heads: usize,
    head_size: usize,
    capacity: usize,
    split: usize,
) -> Dispatch {
    let params = Params {
        n_heads: n_heads as u32,
        head_size: head_size as u32,
        capacity: capacity as u32,
        out_stride: out_stride as u32,
        split: split as u32,
        splits: capacity.div_ceil(split) as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[step, partials, out],
        [n_heads as u32, 1, 1],
    )
    .batched(1)
}
