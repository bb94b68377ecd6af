//! Append to the KV cache: K and V of the new token into slot `pos`. See
//! `shaders/kv_append.wgsl`.

use super::{grid_64, Dispatch, Shader};
use crate::KvDtype;

/// `shaders/kv_append.wgsl`.
pub const SHADER: Shader = Shader {
    name: "kv_append",
    source: include_str!("../../shaders/kv_append.wgsl"),
};

/// Matches WGSL `Params` in kv_append.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Width of one cache row (n_kv_heads * head_size).
    pub kv_dim: u32,
    /// Rows in the cache.
    pub capacity: u32,
    /// 1 when the cache stores packed f16 pairs, 0 for f32.
    pub f16: u32,
}

/// Binds the write of `k, v (kv_dim,)` into row `step.pos` of
/// `k_cache, v_cache (capacity, kv_dim)` stored as `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    step: &wgpu::Buffer,
    kv_dim: usize,
    capacity: usize,
    dtype: KvDtype,
) -> Dispatch {
    let params = Params {
        kv_dim: kv_dim as u32,
        capacity: capacity as u32,
        f16: (dtype == KvDtype::F16) as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[step, k, v, k_cache, v_cache],
        grid_64(kv_dim as u32),
    )
}

/// Host reference: row `pos` of each cache becomes k / v, rounded to f16
/// when the cache stores f16 (the host cache itself stays f32).
pub fn cpu(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    k: &[f32],
    v: &[f32],
    pos: usize,
    dtype: KvDtype,
) {
    let n = k.len();
    let round = |x: &f32| match dtype {
        KvDtype::F32 => *x,
        KvDtype::F16 => half::f16::from_f32(*x).to_f32(),
    };
    for (dst, src) in k_cache[pos * n..(pos + 1) * n].iter_mut().zip(k) {
        *dst = round(src);
    }
    for (dst, src) in v_cache[pos * n..(pos + 1) * n].iter_mut().zip(v) {
        *dst = round(src);
    }
}
