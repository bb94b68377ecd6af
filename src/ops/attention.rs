//! Causal grouped-query attention over the KV cache, split-K (flash-decoding)
//! for long contexts. See `shaders/attention.wgsl`; its second half is
//! [`attention_combine`](super::attention_combine).

use super::{cache_build, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::kv_cache::KvDtype;

/// `shaders/attention.wgsl` after `shaders/prelude.wgsl`.
pub const SHADER: Shader = Shader {
    name: "attention",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/kv.wgsl"),
        include_str!("../../shaders/attention.wgsl")
    ),
    needs: Needs {
        storage_buffers: 7,
        uniform_bytes: 36,
        textures: 0,
        workgroup_bytes: 1024 + 4 * MAX_SPLIT as u32,
        invocations: 64,
        subgroups: false,
    },
};

/// Most positions per split: the rows of a split are kept in workgroup
/// memory (`MAX_SPLIT` in attention.wgsl).
pub const MAX_SPLIT: usize = 256;

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
    /// Positions a token may attend to: a flat cache's rows, a paged
    /// sequence's context (and the stride of `scores`).
    pub capacity: u32,
    /// Values from one token's row of `out` to the next.
    pub out_stride: u32,
    /// Positions per split.
    pub split: u32,
    /// Splits of the cache (`ceil(capacity / split)`): the stride of `partials`.
    pub splits: u32,
    /// Positions a sliding-window layer attends to; 0: the whole context.
    pub window: u32,
    /// Rows of a flat cache (position p in row p % rows).
    pub rows: u32,
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
    /// Positions a token may take: a flat cache's rows, a paged sequence's context.
    pub capacity: usize,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
    /// Positions a token attends to, its own and those before it, on a
    /// sliding-window layer; 0: all of them.
    pub window: usize,
    /// Rows of a flat cache: position p is in row p % rows (a window
    /// layer's ring; `capacity` for the others). Unused by a paged pool.
    pub rows: usize,
}

impl Shape {
    /// The first position a token at `pos` attends to.
    pub fn first(&self, pos: usize) -> usize {
        match self.window {
            0 => 0,
            w => (pos + 1).saturating_sub(w),
        }
    }

    /// Most positions a token attends to.
    pub fn attended(&self) -> usize {
        match self.window {
            0 => self.capacity,
            w => w.min(self.capacity),
        }
    }
}

/// What attention reads and writes, for the n tokens of the pass in `step`.
pub struct Bindings<'a> {
    /// (n, out_stride) output rows, n_heads * head_size values used per row.
    pub out: &'a wgpu::Buffer,
    /// Values from one token's row of `out` to the next.
    pub out_stride: usize,
    /// (n, n_heads, head_size) rotated queries.
    pub q: &'a wgpu::Buffer,
    /// (capacity, n_kv_heads * head_size) keys, as `shape.kv_dtype`.
    pub k_cache: &'a wgpu::Buffer,
    /// (capacity, n_kv_heads * head_size) values, as `shape.kv_dtype`.
    pub v_cache: &'a wgpu::Buffer,
    /// (n, n_heads, capacity) f32 scratch for the scores.
    pub scores: &'a wgpu::Buffer,
    /// (n, n_heads, ceil(capacity / split), head_size + 2) split-K partial
    /// results (o, then max and sum), for `attention_combine`.
    pub partials: &'a wgpu::Buffer,
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// (2 n + tables) u32 each token's position and page table when
    /// `step` is paged (prelude.wgsl); unread for a flat cache.
    pub paging: &'a wgpu::Buffer,
    /// Whether the cache is a paged pool (the PAGED build) or flat.
    pub paged: bool,
    /// Heads, head size, capacity and cache storage.
    pub shape: Shape,
    /// Positions per split.
    pub split: usize,
    /// The build for passes of several tokens: a thread per token (64
    /// tokens a workgroup) instead of a workgroup per token.
    pub per_token: bool,
}

/// Query heads per workgroup (per thread in the build with a thread per
/// token): the largest divisor of the heads per K/V head up to 4 (they
/// share the K/V head, so each cache value read serves them all; four
/// accumulators at most).
pub fn heads_per_workgroup(shape: &Shape) -> usize {
    let group = shape.n_heads / shape.n_kv_heads;
    (1..=4)
        .rev()
        .find(|&d| group.is_multiple_of(d))
        .unwrap_or(1)
}

/// Tokens per workgroup of the PER_TOKEN build.
const TOKENS_PER_WORKGROUP: u32 = 64;

/// The build of the kernel for a paged pool or a flat cache of `dtype`,
/// a thread or a workgroup per token, each taking `heads` query heads
/// ([`heads_per_workgroup`]).
pub fn variant(paged: bool, dtype: KvDtype, per_token: bool, heads: usize) -> Variant {
    let mut constants = cache_build(paged, dtype);
    constants.push(("PER_TOKEN", f64::from(u8::from(per_token))));
    constants.push(("HEADS", heads as f64));
    Variant {
        shader: SHADER,
        constants,
    }
}

/// The attention kernel, one pipeline per kind of cache and build,
/// compiled on first use.
#[derive(Debug)]
pub struct Attention {
    pipelines: Pipelines,
}

impl Attention {
    /// Prepares the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipelines: Pipelines::new(c, SHADER),
        }
    }

    /// Binds, for each token t of the pass (position `pos = step.pos + t`),
    /// `out[t] = attention(q[t], k_cache[0..=pos], v_cache[0..=pos])`, the
    /// positions cut into splits of `split`, one workgroup each: a token whose
    /// positions span several splits leaves its partial results in `partials`.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        assert!(
            (1..=MAX_SPLIT).contains(&b.split),
            "attention splits hold 1..={MAX_SPLIT} positions"
        );
        let s = b.shape;
        let splits = s.capacity.div_ceil(b.split);
        let params = Params {
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_size: s.head_size as u32,
            capacity: s.capacity as u32,
            out_stride: b.out_stride as u32,
            split: b.split as u32,
            splits: splits as u32,
            window: s.window as u32,
            rows: s.rows as u32,
        };
        // `heads` query heads of one K/V head a workgroup (along x), or a
        // thread (per_token).
        let heads = heads_per_workgroup(&s);
        let pipeline = self
            .pipelines
            .get(variant(b.paged, s.kv_dtype, b.per_token, heads).constants);
        Dispatch::new(
            device,
            &pipeline,
            bytemuck::bytes_of(&params),
            &[
                b.step, b.q, b.k_cache, b.v_cache, b.scores, b.out, b.partials, b.paging,
            ],
            [
                (s.n_heads / heads) as u32,
                s.attended().div_ceil(b.split) as u32,
                1,
            ],
        )
        .split_positions(b.split as u32)
        .batched(match b.per_token {
            true => TOKENS_PER_WORKGROUP,
            false => 1,
        })
    }
}

/// Host reference (llama2.c's multi-head attention loop) for the token at
/// `pos`, over positions `shape.first(pos)..=pos`; caches are (rows,
/// n_kv_heads * head_size), position p in row p % rows.
pub fn cpu(out: &mut [f32], q: &[f32], k_cache: &[f32], v_cache: &[f32], pos: usize, shape: Shape) {
    let hs = shape.head_size;
    let kv_dim = shape.n_kv_heads * hs;
    let kv_mul = shape.n_heads / shape.n_kv_heads;
    let first = shape.first(pos);
    let row = |t: usize| (first + t) % shape.rows * kv_dim;
    let mut att = vec![0f32; pos + 1 - first];
    for h in 0..shape.n_heads {
        let q = &q[h * hs..(h + 1) * hs];
        let kv_off = (h / kv_mul) * hs;
        for (t, a) in att.iter_mut().enumerate() {
            let k = &k_cache[row(t) + kv_off..][..hs];
            let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
            *a = dot / (hs as f32).sqrt();
        }
        softmax(&mut att);
        let o = &mut out[h * hs..(h + 1) * hs];
        o.fill(0.0);
        for (t, a) in att.iter().enumerate() {
            let v = &v_cache[row(t) + kv_off..][..hs];
            for (o, v) in o.iter_mut().zip(v) {
                *o += a * v;
            }
        }
    }
}

/// In-place softmax, max-subtracted, as run.c's `softmax`.
pub fn softmax(x: &mut [f32]) {
    let max = x
        .iter()
        .skip(1)
        .fold(x[0], |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention_combine;
    use crate::ops::testing::*;

    #[test]
    fn attention_matches_cpu_with_grouped_query_heads() {
        let b = require!(Bench::new());
        let shapes = [
            // (n_heads, n_kv_heads, head_size, capacity): grouped-query, multi-head,
            // a head wider than the workgroup, more positions than threads.
            (6, 2, 10, 37),
            (4, 4, 8, 131),
            (3, 1, 70, 9),
            (1, 1, 2, 1),
            // Two, four and five query heads a K/V head (four a workgroup,
            // two, one: five's largest divisor up to four).
            (4, 2, 12, 40),
            (8, 2, 8, 20),
            (10, 2, 16, 33),
            // Whole 32-value blocks for the quantized caches: one, three.
            (6, 2, 16, 37),
            (4, 4, 24, 131),
        ];
        // Every cache type over the whole context; F32 and Q8_0 also as a
        // sliding-window layer of a third of the positions, its cache a
        // ring of two thirds (position p in row p % rows).
        let whole = KvDtype::ALL.map(|t| (t, false));
        let windowed = [(KvDtype::F32, true), (KvDtype::Q8_0, true)];
        for (kv_dtype, windowed) in whole.into_iter().chain(windowed) {
            for (i, &(n_heads, n_kv_heads, head_size, capacity)) in shapes.iter().enumerate() {
                if !kv_dtype.fits(n_kv_heads * head_size) {
                    continue;
                }
                let (window, rows) = match windowed {
                    true => ((capacity / 3).max(1), (2 * capacity / 3).max(1)),
                    false => (0, capacity),
                };
                let shape = Shape {
                    n_heads,
                    n_kv_heads,
                    head_size,
                    capacity,
                    kv_dtype,
                    window,
                    rows,
                };
                let kv_dim = n_kv_heads * head_size;
                let seed = 10 * i as u64;
                // Large keys make large scores: the softmax must subtract the max.
                let kc: Vec<f32> = random(capacity * kv_dim, seed)
                    .iter()
                    .map(|v| v * 8.0)
                    .collect();
                let vc = random(capacity * kv_dim, seed + 1);
                let (kcb, vcb) = (
                    b.cache(&kc, kv_dim, kv_dtype),
                    b.cache(&vc, kv_dim, kv_dtype),
                );
                // The host reference reads what the GPU holds.
                let (kc, vc) = (
                    rounded(&kc, kv_dim, kv_dtype),
                    rounded(&vc, kv_dim, kv_dtype),
                );
                // (first position, tokens): single queries at the first, middle and
                // last positions; a pass of several causal queries.
                let passes = [
                    (0, 1),
                    (capacity / 2, 1),
                    (capacity - 1, 1),
                    (capacity / 3, capacity - capacity / 3),
                ];
                // Split-K: one split holding every position (no merge), and
                // splits of 4 positions merged by attention_combine.
                let runs = passes
                    .into_iter()
                    .flat_map(|p| [(p, capacity), (p, 4)])
                    .flat_map(|r| [(r, false), (r, true)]);
                for (((pos, n), split), per_token) in runs {
                    let q: Vec<f32> = random(n * n_heads * head_size, seed + pos as u64)
                        .iter()
                        .map(|v| v * 8.0)
                        .collect();
                    // Output rows 3 values wider than the heads.
                    let q_dim = n_heads * head_size;
                    let out_stride = q_dim + 3;
                    let (qb, ob) = (b.buffer(&q), b.buffer(&vec![f32::NAN; n * out_stride]));
                    let scores = b.buffer(&vec![0.0; n * n_heads * capacity]);
                    let splits = capacity.div_ceil(split);
                    let partials =
                        b.buffer(&vec![f32::NAN; n * n_heads * splits * (head_size + 2)]);
                    let step = b.step(pos, n);
                    let d = b.kernels.attention.bind(
                        &b.gpu.device,
                        Bindings {
                            out: &ob,
                            out_stride,
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
                            per_token,
                        },
                    );
                    // The grid's splits for the pass's positions only: the combine reads
                    // NaN where a split it needs was left out.
                    b.run_attending(&d, n, pos + n);
                    let combine = b.kernels.attention_combine.bind(
                        &b.gpu.device,
                        attention_combine::Bindings {
                            out: &ob,
                            out_stride,
                            partials: &partials,
                            step: &step,
                            paging: &b.u32s(&[0]),
                            paged: false,
                            n_heads,
                            head_size,
                            capacity,
                            split,
                            window,
                        },
                    );
                    b.run(&combine, n);
                    let mut expect = vec![0.0; n * q_dim];
                    for t in 0..n {
                        let (o, q) = (
                            &mut expect[t * q_dim..(t + 1) * q_dim],
                            &q[t * q_dim..(t + 1) * q_dim],
                        );
                        cpu(o, q, &kc, &vc, pos + t, shape);
                    }
                    let got = b.read(&ob);
                    assert!(got
                        .chunks(out_stride)
                        .all(|r| r[q_dim..].iter().all(|v| v.is_nan())));
                    let got: Vec<f32> = got
                        .chunks(out_stride)
                        .flat_map(|r| &r[..q_dim])
                        .copied()
                        .collect();
                    assert_close(
                        &got,
                        &expect,
                        &format!(
                            "attention {shape:?} at pos {pos}, {n} tokens, split {split}, \
                             a thread per token: {per_token}"
                        ),
                    );
                }
            }
        }
    }

    #[test]
    fn paged_attention_reads_each_tokens_own_sequence_through_its_page_table() {
        let b = require!(Bench::new());
        let (n_heads, n_kv_heads, head_size) = (4, 2, 16);
        let kv_dim = n_kv_heads * head_size;
        // Two sequences of 13 and 9 positions in pages of 3 and 4 rows; the
        // pass's tokens attend at their own positions, sequences mixed.
        let lens = [13, 9];
        let tokens = [(0, 12), (1, 8), (0, 5), (1, 0), (0, 3)];
        let capacity = 16;
        for kv_dtype in KvDtype::ALL {
            for page in [3, 4] {
                let shape = Shape {
                    n_heads,
                    n_kv_heads,
                    head_size,
                    capacity,
                    kv_dtype,
                    window: 0,
                    rows: capacity,
                };
                let ks: Vec<Vec<f32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(s, &len)| {
                        random(len * kv_dim, 70 + s as u64)
                            .iter()
                            .map(|v| v * 8.0)
                            .collect()
                    })
                    .map(|k: Vec<f32>| rounded(&k, kv_dim, kv_dtype))
                    .collect();
                let vs: Vec<Vec<f32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(s, &len)| {
                        rounded(&random(len * kv_dim, 80 + s as u64), kv_dim, kv_dtype)
                    })
                    .collect();
                let (kpool, paging, _) = paged_pool(&ks, kv_dim, page, &tokens);
                let (vpool, _, _) = paged_pool(&vs, kv_dim, page, &tokens);
                let n = tokens.len();
                let q_dim = n_heads * head_size;
                let q: Vec<f32> = random(n * q_dim, 90).iter().map(|v| v * 8.0).collect();
                for (split, per_token) in
                    [(capacity, false), (4, false), (capacity, true), (4, true)]
                {
                    let (qb, ob) = (b.buffer(&q), b.buffer(&vec![f32::NAN; n * q_dim]));
                    let scores = b.buffer(&vec![0.0; n * n_heads * capacity]);
                    let splits = capacity.div_ceil(split);
                    let partials =
                        b.buffer(&vec![f32::NAN; n * n_heads * splits * (head_size + 2)]);
                    let (kcb, vcb) = (
                        b.cache(&kpool, kv_dim, kv_dtype),
                        b.cache(&vpool, kv_dim, kv_dtype),
                    );
                    let (step, pagingb) = (b.paged_step(n, page), b.u32s(&paging));
                    let d = b.kernels.attention.bind(
                        &b.gpu.device,
                        Bindings {
                            out: &ob,
                            out_stride: q_dim,
                            q: &qb,
                            k_cache: &kcb,
                            v_cache: &vcb,
                            scores: &scores,
                            partials: &partials,
                            step: &step,
                            paging: &pagingb,
                            paged: true,
                            shape,
                            split,
                            per_token,
                        },
                    );
                    let attended = tokens.iter().map(|&(_, pos)| pos + 1).max().unwrap_or(0);
                    b.run_attending(&d, n, attended);
                    let combine = b.kernels.attention_combine.bind(
                        &b.gpu.device,
                        attention_combine::Bindings {
                            out: &ob,
                            out_stride: q_dim,
                            partials: &partials,
                            step: &step,
                            paging: &pagingb,
                            paged: true,
                            n_heads,
                            head_size,
                            capacity,
                            split,
                            window: 0,
                        },
                    );
                    b.run(&combine, n);
                    let mut expect = vec![0.0; n * q_dim];
                    for (t, &(s, pos)) in tokens.iter().enumerate() {
                        let o = &mut expect[t * q_dim..(t + 1) * q_dim];
                        cpu(
                            o,
                            &q[t * q_dim..(t + 1) * q_dim],
                            &ks[s],
                            &vs[s],
                            pos,
                            shape,
                        );
                    }
                    let what =
                        format!("paged attention {kv_dtype:?}, pages of {page}, split {split}, a thread per token: {per_token}");
                    assert_close(&b.read(&ob), &expect, &what);
                }
            }
        }
    }
}
