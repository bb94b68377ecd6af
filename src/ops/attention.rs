//! Causal grouped-query attention over the KV cache. See `shaders/attention.wgsl`.

use super::{Dispatch, Shader};
use crate::KvDtype;

/// `shaders/attention.wgsl`.
pub const SHADER: Shader = Shader {
    name: "attention",
    source: include_str!("../../shaders/attention.wgsl"),
};

/// Matches WGSL `Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads (divides n_heads).
    pub n_kv_heads: u32,
    /// Size of one head.
    pub head_size: u32,
    /// Rows in the cache (and the stride of `scores`).
    pub capacity: u32,
    /// 1 when the cache stores packed f16 pairs, 0 for f32.
    pub f16: u32,
    /// Values from one token's row of `out` to the next.
    pub out_stride: u32,
    /// Positions per split.
    pub split: u32,
    /// Splits of the cache (`ceil(capacity / split)`): the grid's y.
    pub splits: u32,
}

/// Shape of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_size: usize,
    /// Rows in the cache.
    pub capacity: usize,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
}

/// Binds, for each token t of the pass in `step` (position `pos = step.pos +
/// t`), `out[t] (n_heads, head_size; rows out_stride apart) =
/// attention(q[t] (n_heads, head_size), k_cache[0..=pos], v_cache[0..=pos])`
/// with `scores (n, n_heads, capacity)` as scratch, the positions cut into
/// splits of `split`, one workgroup each: a token whose positions span
/// several splits leaves its partial results in `partials (n, n_heads,
/// ceil(capacity / split), head_size + 2)` for
/// [`attention_combine`](super::attention_combine).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    out_stride: usize,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    scores: &wgpu::Buffer,
    partials: &wgpu::Buffer,
    step: &wgpu::Buffer,
    shape: Shape,
    split: usize,
) -> Dispatch {
    let splits = shape.capacity.div_ceil(split);
    let params = Params {
        n_heads: shape.n_heads as u32,
        n_kv_heads: shape.n_kv_heads as u32,
        head_size: shape.head_size as u32,
        capacity: shape.capacity as u32,
        f16: (shape.kv_dtype == KvDtype::F16) as u32,
        out_stride: out_stride as u32,
        split: split as u32,
        splits: splits as u32,
    };
    Dispatch::new(
        device,
        pipeline,
        bytemuck::bytes_of(&params),
        &[step, q, k_cache, v_cache, scores, out, partials],
        [shape.n_heads as u32, splits as u32, 1],
    )
    .batched(1)
}

/// Host reference (llama2.c's multi-head attention loop) for the token at
/// `pos`; caches are (capacity, n_kv_heads * head_size).
pub fn cpu(out: &mut [f32], q: &[f32], k_cache: &[f32], v_cache: &[f32], pos: usize, shape: Shape) {
    let hs = shape.head_size;
    let kv_dim = shape.n_kv_heads * hs;
    let kv_mul = shape.n_heads / shape.n_kv_heads;
    let mut att = vec![0f32; pos + 1];
    for h in 0..shape.n_heads {
        let q = &q[h * hs..(h + 1) * hs];
        let kv_off = (h / kv_mul) * hs;
        for (t, a) in att.iter_mut().enumerate() {
            let k = &k_cache[t * kv_dim + kv_off..][..hs];
            let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
            *a = dot / (hs as f32).sqrt();
        }
        crate::sampler::softmax(&mut att);
        let o = &mut out[h * hs..(h + 1) * hs];
        o.fill(0.0);
        for (t, a) in att.iter().enumerate() {
            let v = &v_cache[t * kv_dim + kv_off..][..hs];
            for (o, v) in o.iter_mut().zip(v) {
                *o += a * v;
            }
        }
    }
}
