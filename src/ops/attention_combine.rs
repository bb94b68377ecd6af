//! The second half of split-K attention: merges the partial results of the
//! splits of a long context. See `shaders/attention_combine.wgsl`.

use super::{Dispatch, Needs, Pipelines, Shader, Variant};

/// `shaders/attention_combine.wgsl` after `shaders/prelude.wgsl`.
pub const SHADER: Shader = Shader {
    name: "attention_combine",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/attention_combine.wgsl")
    ),
    needs: Needs {
        storage_buffers: 3,
        uniform_bytes: 28,
        textures: 0,
        workgroup_bytes: 0,
        invocations: 64,
        subgroups: false,
    },
};

/// Matches WGSL `Params` in attention_combine.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Query heads.
    pub n_heads: u32,
    /// Size of one head.
    pub head_size: u32,
    /// Positions a token may take: a flat cache's rows, a paged sequence's context.
    pub capacity: u32,
    /// Values from one token's row of `out` to the next.
    pub out_stride: u32,
    /// Positions per split.
    pub split: u32,
    /// Splits of the cache.
    pub splits: u32,
    /// Positions a sliding-window layer attends to; 0: the whole context.
    pub window: u32,
}

/// What the merge reads and writes, for the n tokens of the pass in `step`.
pub struct Bindings<'a> {
    /// (n, out_stride) output rows, n_heads * head_size values used per row.
    pub out: &'a wgpu::Buffer,
    /// Values from one token's row of `out` to the next.
    pub out_stride: usize,
    /// (n, n_heads, ceil(capacity / split), head_size + 2) partial results
    /// as [`Attention`](super::attention::Attention) writes them.
    pub partials: &'a wgpu::Buffer,
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// (2 n + tables) u32 each token's position when `step` is paged
    /// (prelude.wgsl); unread for a flat cache.
    pub paging: &'a wgpu::Buffer,
    /// Whether the cache is a paged pool (the PAGED build) or flat.
    pub paged: bool,
    /// Query heads.
    pub n_heads: usize,
    /// Size of one head.
    pub head_size: usize,
    /// Positions a token may attend to.
    pub capacity: usize,
    /// Positions per split.
    pub split: usize,
    /// Positions a sliding-window layer attends to; 0: the whole context.
    pub window: usize,
}

/// The split-K merge kernel.
#[derive(Debug)]
pub struct AttentionCombine {
    pipeline: wgpu::ComputePipeline,
    /// The PAGED build, compiled on first use (by an `Engine`).
    paged: Pipelines,
}

impl AttentionCombine {
    /// Compiles the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipeline: super::pipeline(c, Variant::plain(SHADER)),
            paged: Pipelines::new(c, SHADER),
        }
    }

    /// Binds, for each token of the pass whose positions span more than one
    /// split, `out[t]` = the merge of its splits' results in `partials`.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let params = Params {
            n_heads: b.n_heads as u32,
            head_size: b.head_size as u32,
            capacity: b.capacity as u32,
            out_stride: b.out_stride as u32,
            split: b.split as u32,
            splits: b.capacity.div_ceil(b.split) as u32,
            window: b.window as u32,
        };
        let paged = b.paged.then(|| self.paged.get(super::paged()));
        Dispatch::new(
            device,
            paged.as_ref().unwrap_or(&self.pipeline),
            bytemuck::bytes_of(&params),
            &[b.step, b.partials, b.out, b.paging],
            [b.n_heads as u32, 1, 1],
        )
        .batched(1)
    }
}

/// Host reference for one token and head: `partials` holds the `used`
/// splits' results, each `head_size + 2` values (o_s = sum e^(score - m_s)
/// v, then m_s, the split's max score, and l_s = sum e^(score - m_s));
/// `out (head_size,) = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s`,
/// M = max_s m_s.
#[cfg(test)]
pub fn cpu(out: &mut [f32], partials: &[f32], used: usize) {
    let hs = out.len();
    let splits: Vec<&[f32]> = partials.chunks(hs + 2).take(used).collect();
    let big_m = splits.iter().map(|p| p[hs]).fold(f32::MIN, f32::max);
    let l: f32 = splits
        .iter()
        .map(|p| (p[hs] - big_m).exp() * p[hs + 1])
        .sum();
    for (i, o) in out.iter_mut().enumerate() {
        let acc: f32 = splits.iter().map(|p| (p[hs] - big_m).exp() * p[i]).sum();
        *o = acc / l;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvDtype;
    use crate::ops::attention;
    use crate::ops::testing::*;

    #[test]
    fn attention_combine_matches_cpu_on_the_partials_attention_wrote() {
        let b = require!(Bench::new());
        // Grouped-query heads; splits of 4 and 5 positions over 23, the last
        // split partly filled; a pass of tokens of which the first fits one
        // split (left to attention, untouched here).
        let (n_heads, n_kv_heads, head_size, capacity) = (6, 2, 10, 23);
        let shape = attention::Shape {
            n_heads,
            n_kv_heads,
            head_size,
            capacity,
            kv_dtype: KvDtype::F32,
            window: 0,
            rows: capacity,
        };
        let kv_dim = n_kv_heads * head_size;
        let q_dim = n_heads * head_size;
        let kc: Vec<f32> = random(capacity * kv_dim, 1)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        let (kcb, vcb) = (b.buffer(&kc), b.buffer(&random(capacity * kv_dim, 2)));
        for split in [4, 5] {
            let (pos, n) = (split - 1, capacity - split + 1);
            let q: Vec<f32> = random(n * q_dim, 3).iter().map(|v| v * 8.0).collect();
            let splits = capacity.div_ceil(split);
            let (qb, step) = (b.buffer(&q), b.step(pos, n));
            let scores = b.buffer(&vec![0.0; n * n_heads * capacity]);
            let partials = b.buffer(&vec![f32::NAN; n * n_heads * splits * (head_size + 2)]);
            let att = b.buffer(&vec![f32::NAN; n * q_dim]);
            let d = b.kernels.attention.bind(
                &b.gpu.device,
                attention::Bindings {
                    out: &att,
                    out_stride: q_dim,
                    q: &qb,
                    k_cache: &kcb,
                    v_cache: &vcb,
                    scores: &scores,
                    partials: &partials,
                    step: &step,
                    paging: &b.u32s(&[0]),
                    paged: false,
                    shape,
                    split,
                    per_token: false,
                },
            );
            b.run_attending(&d, n, pos + n);
            let out = b.buffer(&vec![f32::NAN; n * q_dim]);
            let combine = b.kernels.attention_combine.bind(
                &b.gpu.device,
                Bindings {
                    out: &out,
                    out_stride: q_dim,
                    partials: &partials,
                    step: &step,
                    paging: &b.u32s(&[0]),
                    paged: false,
                    n_heads,
                    head_size,
                    capacity,
                    split,
                    window: 0,
                },
            );
            b.run(&combine, n);
            let (got, parts) = (b.read(&out), b.read(&partials));
            for t in 0..n {
                let used = (pos + t + 1).div_ceil(split);
                let row = &got[t * q_dim..(t + 1) * q_dim];
                if used == 1 {
                    assert!(row.iter().all(|v| v.is_nan()), "one split: not merged");
                    continue;
                }
                let mut expect = vec![0.0; q_dim];
                for h in 0..n_heads {
                    let at = (t * n_heads + h) * splits * (head_size + 2);
                    let o = &mut expect[h * head_size..(h + 1) * head_size];
                    cpu(o, &parts[at..], used);
                }
                assert_close(row, &expect, &format!("split {split} token {t}"));
                // And the merge is attention over every position.
                let mut direct = vec![0.0; q_dim];
                let qt = &q[t * q_dim..(t + 1) * q_dim];
                attention::cpu(&mut direct, qt, &kc, &b.read(&vcb), pos + t, shape);
                assert_close(
                    row,
                    &direct,
                    &format!("split {split} token {t} vs attention"),
                );
            }
        }
    }
}
