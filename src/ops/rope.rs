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

/// RoPE settings: which dimensions rotate and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Size of one head.
    pub head_size: usize,
    /// Leading dimensions of each head that rotate (even, at most head_size).
    pub rope_dim: usize,
    /// Base frequency.
    pub theta: f32,
    /// Llama-3-style divisors of each pair's frequency ((rope_dim / 2,)).
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Rotation angle of pair `pair` (dimensions 2 pair, 2 pair + 1) of a head
    /// at `pos`, as llama2.c computes it in f32: `pos / theta^(2 pair / rope_dim)`
    /// (divided by the pair's frequency factor); `None` past `rope_dim`.
    fn angle(&self, pos: usize, pair: usize) -> Option<f32> {
        if 2 * pair >= self.rope_dim {
            return None;
        }
        let mut freq = 1.0 / self.theta.powf((2 * pair) as f32 / self.rope_dim as f32);
        if let Some(f) = &self.freq_factors {
            freq /= f[pair];
        }
        Some(pos as f32 * freq)
    }

    /// The (cos, sin) of every (position, pair) angle: (positions, head_size / 2, 2)
    /// values; pairs past `rope_dim` get (1, 0), no rotation.
    pub fn table(&self, positions: usize) -> Vec<f32> {
        let mut t = Vec::with_capacity(positions * self.head_size);
        for pos in 0..positions {
            for pair in 0..self.head_size / 2 {
                let (sin, cos) = self.angle(pos, pair).map_or((0.0, 1.0), f32::sin_cos);
                t.extend([cos, sin]);
            }
        }
        t
    }
}

/// Binds the in-place rotation of `q (q_dim,)` and `k (kv_dim,)` at the
/// position held in `step`; `table` is [`Rope::table`]'s output on the GPU.
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
pub fn cpu(q: &mut [f32], k: &mut [f32], pos: usize, rope: &Rope) {
    for i in (0..q.len()).step_by(2) {
        let Some(angle) = rope.angle(pos, (i % rope.head_size) / 2) else {
            continue;
        };
        let (sin, cos) = angle.sin_cos();
        for v in [&mut *q, &mut *k] {
            if i < v.len() {
                let (a, b) = (v[i], v[i + 1]);
                v[i] = a * cos - b * sin;
                v[i + 1] = a * sin + b * cos;
            }
        }
    }
}
