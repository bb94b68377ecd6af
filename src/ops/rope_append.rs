//! Rotary position embedding of q and k, and the append of k and v to the
//! KV cache, in one kernel. See `shaders/rope_append.wgsl`.

use super::{grid_64, Dispatch, Shader};
use crate::KvDtype;

/// `shaders/rope_append.wgsl`.
pub const SHADER: Shader = Shader {
    name: "rope_append",
    source: include_str!("../../shaders/rope_append.wgsl"),
};

/// Matches WGSL `Params` in rope_append.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Length of q (n_heads * head_size).
    pub q_dim: u32,
    /// Length of k and v, the width of a cache row (n_kv_heads * head_size).
    pub kv_dim: u32,
    /// Size of one head.
    pub head_size: u32,
    /// Rows in the cache.
    pub capacity: u32,
    /// 1 when the cache stores packed f16 pairs, 0 for f32.
    pub f16: u32,
}

/// Shape of the q and k/v rows and of the cache.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Length of q.
    pub q_dim: usize,
    /// Length of k and v.
    pub kv_dim: usize,
    /// Size of one head.
    pub head_size: usize,
    /// Rows in the cache.
    pub capacity: usize,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
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

/// Binds, for each token t of the pass in `step` (position `step.pos + t`):
/// `q[t] = rope(qkv[t].q)`, cache row pos of `k_cache = rope(qkv[t].k)` and
/// of `v_cache = qkv[t].v`, where `qkv (n, q_dim + 2 kv_dim)` holds the
/// three projections side by side and `table` is [`Rope::table`] on the GPU.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    qkv: &wgpu::Buffer,
    step: &wgpu::Buffer,
    table: &wgpu::Buffer,
    shape: Shape,
) -> Dispatch {
    let params = Params {
        q_dim: shape.q_dim as u32,
        kv_dim: shape.kv_dim as u32,
        head_size: shape.head_size as u32,
        capacity: shape.capacity as u32,
        f16: (shape.kv_dtype == KvDtype::F16) as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[step, table, qkv, q, k_cache, v_cache],
        grid_64(shape.q_dim as u32 / 2),
    )
    .batched(1)
}

/// Host reference of the kernel for one token at `pos`: splits `qkv` into
/// q, k, v, rotates q and k ([`rotate`]) and appends k, v ([`append`]).
#[allow(clippy::too_many_arguments)]
pub fn cpu(
    q: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qkv: &[f32],
    pos: usize,
    rope: &Rope,
    dtype: KvDtype,
) {
    let (qs, kv) = qkv.split_at(q.len());
    let (k, v) = kv.split_at(kv.len() / 2);
    q.copy_from_slice(qs);
    let mut k = k.to_vec();
    rotate(q, &mut k, pos, rope);
    append(k_cache, v_cache, &k, v, pos, dtype);
}

/// Host reference (llama2.c's RoPE loop): rotates q, and k where `i < k.len()`.
pub fn rotate(q: &mut [f32], k: &mut [f32], pos: usize, rope: &Rope) {
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

/// Host reference: row `pos` of each cache becomes k / v, rounded to f16
/// when the cache stores f16 (the host cache itself stays f32).
pub fn append(
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
