//! Rotary position embedding of q and k. See `shaders/rope.wgsl`.

use super::{grid_64, Dispatch, Shader};

/// `shaders/rope.wgsl`.
pub const SHADER: Shader = Shader {
    name: "rope",
    source: include_str!("../../shaders/rope.wgsl"),
};

/// Matches WGSL `Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Length of q (n_heads * head_size).
    pub q_dim: u32,
    /// Length of k (n_kv_heads * head_size).
    pub kv_dim: u32,
    /// Size of one head.
    pub head_size: u32,
}

/// The (cos, sin) of every (position, pair) angle, computed as llama2.c does
/// in f32: `freq = 1 / theta^(2i / head_size)`, angle = `pos * freq`.
/// Returns (positions, head_size / 2, 2) values.
pub fn table(positions: usize, head_size: usize, theta: f32) -> Vec<f32> {
    let mut t = Vec::with_capacity(positions * head_size);
    for pos in 0..positions {
        for i in (0..head_size).step_by(2) {
            let (sin, cos) = angle(pos, i, head_size, theta).sin_cos();
            t.extend([cos, sin]);
        }
    }
    t
}

/// Rotation angle of the pair starting at `head_dim` (even) within a head.
fn angle(pos: usize, head_dim: usize, head_size: usize, theta: f32) -> f32 {
    let freq = 1.0 / theta.powf(head_dim as f32 / head_size as f32);
    pos as f32 * freq
}

/// Binds the in-place rotation of `q (q_dim,)` and `k (kv_dim,)` at the
/// position held in `step`; `table` is [`table`]'s output on the GPU.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    step: &wgpu::Buffer,
    table: &wgpu::Buffer,
    q_dim: usize,
    kv_dim: usize,
    head_size: usize,
) -> Dispatch {
    let params = Params {
        q_dim: q_dim as u32,
        kv_dim: kv_dim as u32,
        head_size: head_size as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[step, table, q, k],
        grid_64(q_dim as u32 / 2),
    )
}

/// Host reference (llama2.c's RoPE loop): rotates q, and k where `i < k.len()`.
pub fn cpu(q: &mut [f32], k: &mut [f32], pos: usize, head_size: usize, theta: f32) {
    for i in (0..q.len()).step_by(2) {
        let (sin, cos) = angle(pos, i % head_size, head_size, theta).sin_cos();
        for v in [&mut *q, &mut *k] {
            if i < v.len() {
                let (a, b) = (v[i], v[i + 1]);
                v[i] = a * cos - b * sin;
                v[i + 1] = a * sin + b * cos;
            }
        }
    }
}
