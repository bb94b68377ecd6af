//! Rotary position embedding of q and k, and the append of k and v to the
//! KV cache, in one kernel, with the work some families' blocks do to q and
//! k before RoPE (biases, per-head norms). See `shaders/rope_append.wgsl`.

use super::{cache_build, grid_64, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::kv_cache::KvDtype;

/// `shaders/rope_append.wgsl` after `shaders/prelude.wgsl`.
pub const SHADER: Shader = Shader {
    name: "rope_append",
    source: concat!(
        include_str!("../../shaders/prelude.wgsl"),
        include_str!("../../shaders/kv.wgsl"),
        include_str!("../../shaders/rope_append.wgsl")
    ),
    needs: Needs {
        storage_buffers: 7,
        uniform_bytes: 24,
        textures: 0,
        workgroup_bytes: 0,
        invocations: 64,
        subgroups: false,
    },
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
    /// Positions a token may take: a flat cache's rows, a paged sequence's context.
    pub capacity: u32,
    /// RMSNorm epsilon of the q/k norms.
    pub eps: f32,
    /// Rows of a flat cache: position p goes to row p % rows.
    pub rows: u32,
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
    /// Positions a token may take: a flat cache's rows, a paged sequence's context.
    pub capacity: usize,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
    /// Rows of a flat cache: position p goes to row p % rows (a window
    /// layer's ring; `capacity` for the others).
    pub rows: usize,
}

/// What the kernel reads and writes, for the n tokens of the pass in `step`.
pub struct Bindings<'a> {
    /// (n, q_dim) rotated queries.
    pub q: &'a wgpu::Buffer,
    /// (capacity, kv_dim) keys, as `shape.kv_dtype`: rows of the pass's positions written.
    pub k_cache: &'a wgpu::Buffer,
    /// (capacity, kv_dim) values, likewise.
    pub v_cache: &'a wgpu::Buffer,
    /// (n, q_dim + 2 kv_dim) the q, k and v projections side by side.
    pub qkv: &'a wgpu::Buffer,
    /// The pass's [`Step`](super::Step) uniform.
    pub step: &'a wgpu::Buffer,
    /// (positions, head_size / 2, 2) cos/sin, [`Rope::table`](crate::rope::Rope::table) on the GPU.
    pub table: &'a wgpu::Buffer,
    /// (2 n + tables) u32 each token's position and page table when
    /// `step` is paged (prelude.wgsl); unread for a flat cache.
    pub paging: &'a wgpu::Buffer,
    /// Whether the cache is a paged pool (the PAGED build) or flat.
    pub paged: bool,
    /// Widths and cache storage.
    pub shape: Shape,
    /// What the block does to q, k and v before RoPE.
    pub prep: Prep<'a>,
}

/// What a family's block does to q, k and v before RoPE ([`Block`](crate::arch::Block)).
#[derive(Clone, Copy)]
pub struct Prep<'a> {
    /// (q_dim + 2 kv_dim + 2 head_size) f32: q, k and v biases, then the norm
    /// weights of a q head and of a k head (adjacent order); unread (any
    /// small buffer) when neither flag is set.
    pub weights: &'a wgpu::Buffer,
    /// q, k and v add their biases.
    pub bias: bool,
    /// q and k are RMS-normed head by head.
    pub norm: bool,
    /// RMSNorm epsilon.
    pub eps: f32,
}

#[cfg(test)]
impl<'a> Prep<'a> {
    /// Nothing before RoPE (the Llama block); `placeholder` is bound unread.
    pub fn none(placeholder: &'a wgpu::Buffer) -> Self {
        Self {
            weights: placeholder,
            bias: false,
            norm: false,
            eps: 0.0,
        }
    }
}

/// The build of the kernel for a paged pool or a flat cache of `dtype`,
/// adding biases (`bias`) and norming q and k per head (`norm`) before RoPE.
pub fn variant(paged: bool, dtype: KvDtype, bias: bool, norm: bool) -> Variant {
    let mut constants = cache_build(paged, dtype);
    for (name, on) in [("QKV_BIAS", bias), ("QK_NORM", norm)] {
        if on {
            constants.push((name, 1.0));
        }
    }
    Variant {
        shader: SHADER,
        constants,
    }
}

/// The RoPE + append kernel, one pipeline per kind of cache (flat or
/// paged, and its storage type), compiled on first use.
#[derive(Debug)]
pub struct RopeAppend {
    pipelines: Pipelines,
}

impl RopeAppend {
    /// Prepares the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipelines: Pipelines::new(c, SHADER),
        }
    }

    /// Binds, for each token t of the pass (position `step.pos + t`):
    /// `q[t] = rope(prep(qkv[t].q))`, cache row pos of `k_cache =
    /// rope(prep(qkv[t].k))` and of `v_cache = prep(qkv[t].v)`.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let (s, prep) = (b.shape, b.prep);
        let params = Params {
            q_dim: s.q_dim as u32,
            kv_dim: s.kv_dim as u32,
            head_size: s.head_size as u32,
            capacity: s.capacity as u32,
            eps: prep.eps,
            rows: s.rows as u32,
        };
        let build = variant(b.paged, s.kv_dtype, prep.bias, prep.norm);
        Dispatch::new(
            device,
            &self.pipelines.get(build.constants),
            bytemuck::bytes_of(&params),
            &[
                b.step,
                b.table,
                b.qkv,
                b.q,
                b.k_cache,
                b.v_cache,
                b.paging,
                prep.weights,
            ],
            grid_64(s.q_dim as u32 / 2),
        )
        .batched(1)
    }
}

/// Host reference of what a block does to one token's q, k and v before
/// RoPE: each adds its part of `bias` (q_dim + 2 kv_dim), then each head of
/// q and of k is RMS-normed with `norm`'s weights (head_size of q's, then
/// head_size of k's).
pub fn prepare(
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
    bias: Option<&[f32]>,
    norm: Option<&[f32]>,
    eps: f32,
) {
    if let Some(bias) = bias {
        let (bq, bkv) = bias.split_at(q.len());
        let (bk, bv) = bkv.split_at(k.len());
        for (out, b) in [(&mut *q, bq), (&mut *k, bk), (&mut *v, bv)] {
            out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
    if let Some(g) = norm {
        let (gq, gk) = g.split_at(g.len() / 2);
        for (out, g) in [(q, gq), (k, gk)] {
            for head in out.chunks_mut(g.len()) {
                let x = head.to_vec();
                super::rmsnorm::cpu(head, &x, g, eps);
            }
        }
    }
}

/// Host reference of the kernel for one token at `pos`: splits `qkv` into
/// q, k, v, prepares them as `prep` = (bias, norm, eps) says ([`prepare`]),
/// rotates q and k ([`Rope::rotate`](crate::rope::Rope::rotate)) and
/// appends k, v ([`append`]).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub fn cpu(
    q: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qkv: &[f32],
    pos: usize,
    rope: &crate::rope::Rope,
    dtype: KvDtype,
    prep: (Option<&[f32]>, Option<&[f32]>, f32),
) {
    let (qs, kv) = qkv.split_at(q.len());
    let (k, v) = kv.split_at(kv.len() / 2);
    q.copy_from_slice(qs);
    let (mut k, mut v) = (k.to_vec(), v.to_vec());
    prepare(q, &mut k, &mut v, prep.0, prep.1, prep.2);
    rope.rotate(q, &mut k, pos);
    append(k_cache, v_cache, &k, &v, pos, dtype);
}

/// Host reference: row `pos` of each cache becomes k / v, rounded as the
/// cache stores them (f16, or quantized and back; the host cache itself
/// stays f32).
pub fn append(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    k: &[f32],
    v: &[f32],
    pos: usize,
    dtype: KvDtype,
) {
    let n = k.len();
    for (cache, row) in [(k_cache, k), (v_cache, v)] {
        let slot = &mut cache[pos * n..(pos + 1) * n];
        slot.copy_from_slice(row);
        dtype.round_row(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use crate::rope::{Pairing, Rope};

    #[test]
    fn rope_append_matches_cpu_and_writes_only_its_slots() {
        let b = require!(Bench::new());
        // Grouped-query: 12 query heads over 6 KV heads of size 16; full, partial
        // (first 6 dimensions) and Llama-3-style scaled rotations.
        // kv_dim 96: three quantized blocks, the last alone in its pair.
        // Each of the four builds of the work before RoPE (none, biases,
        // q/k norms, both) runs with every rotation and cache type.
        let (head_size, n_heads, n_kv_heads, capacity) = (16, 12, 6, 37);
        let (q_dim, kv_dim) = (n_heads * head_size, n_kv_heads * head_size);
        let width = q_dim + 2 * kv_dim;
        let rope = |rope_dim, theta, freq_factors| Rope {
            head_size,
            rope_dim,
            theta,
            freq_factors,
            pairing: Pairing::Adjacent,
        };
        let ropes = [
            rope(16, 10000.0, None),
            rope(6, 500000.0, None),
            rope(
                16,
                500000.0,
                Some(vec![1.0, 1.5, 2.0, 8.0, 32.0, 1.0, 4.0, 2.0]),
            ),
        ];
        // Biases of q, k, v, then norm weights of a q head and a k head.
        let prep_weights: Vec<f32> = random(width, 70)
            .into_iter()
            .chain(random(2 * head_size, 71).iter().map(|v| 1.0 + v))
            .collect();
        let prep_buffer = b.buffer(&prep_weights);
        let eps = 1e-5;
        for (r, rope) in ropes.into_iter().enumerate() {
            let table = b.buffer(&rope.table(capacity));
            for (i, kv_dtype) in KvDtype::ALL.into_iter().enumerate() {
                let (bias, norm) = ((r + i) % 2 == 1, (r + i) % 4 >= 2);
                let prep = Prep {
                    weights: &prep_buffer,
                    bias,
                    norm,
                    eps,
                };
                let cpu_prep = (
                    bias.then_some(&prep_weights[..width]),
                    norm.then_some(&prep_weights[width..]),
                    eps,
                );
                let shape = Shape {
                    q_dim,
                    kv_dim,
                    head_size,
                    capacity,
                    kv_dtype,
                    rows: capacity,
                };
                let run = |qkv: &[f32], kc: &[f32], vc: &[f32], pos: usize, n: usize| {
                    let (kcb, vcb) = (b.cache(kc, kv_dim, kv_dtype), b.cache(vc, kv_dim, kv_dtype));
                    let (qkvb, qb) = (b.buffer(qkv), b.buffer(&vec![f32::NAN; n * q_dim]));
                    let step = b.step(pos, n);
                    let d = b.kernels.rope_append.bind(
                        &b.gpu.device,
                        Bindings {
                            q: &qb,
                            k_cache: &kcb,
                            v_cache: &vcb,
                            qkv: &qkvb,
                            step: &step,
                            paging: &b.u32s(&[0]),
                            paged: false,
                            table: &table,
                            shape,
                            prep,
                        },
                    );
                    b.run(&d, n);
                    (
                        b.read(&qb),
                        b.read_cache(&kcb, kv_dim, kv_dtype),
                        b.read_cache(&vcb, kv_dim, kv_dtype),
                    )
                };
                // (first position, tokens): one token at the first and last slots, passes of several.
                for (pos, n) in [(0, 1), (capacity - 1, 1), (0, 5), (17, 11)] {
                    let qkv = random(n * width, pos as u64 + 50);
                    let kc0 = rounded(&random(capacity * kv_dim, 1), kv_dim, kv_dtype);
                    let vc0 = rounded(&random(capacity * kv_dim, 2), kv_dim, kv_dtype);
                    let (q, k, v) = run(&qkv, &kc0, &vc0, pos, n);
                    let (mut eq, mut ek, mut ev) = (vec![0.0; n * q_dim], kc0.clone(), vc0.clone());
                    for (t, row) in qkv.chunks(width).enumerate() {
                        let q = &mut eq[t * q_dim..(t + 1) * q_dim];
                        cpu(q, &mut ek, &mut ev, row, pos + t, &rope, kv_dtype, cpu_prep);
                    }
                    let what = format!(
                        "{kv_dtype:?} pos {pos} tokens {n} {rope:?} bias {bias} norm {norm}"
                    );
                    assert_close(&q, &eq, &format!("q {what}"));
                    // The pass's slots as the host rounds them (within
                    // cache_tolerance); the others untouched (as uploaded).
                    let stored = |c: &[f32]| rounded(c, kv_dim, kv_dtype);
                    for (name, got, expect, before) in
                        [("k", k, &ek, stored(&kc0)), ("v", v, &ev, stored(&vc0))]
                    {
                        for (i, (g, e)) in got.iter().zip(expect).enumerate() {
                            let slot = i / kv_dim;
                            if (pos..pos + n).contains(&slot) {
                                let block = &expect[i / 32 * 32..(i / 32 + 1) * 32];
                                let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                                assert!(
                                    (g - e).abs() <= cache_tolerance(kv_dtype, *e, scale),
                                    "{name} {what}: element {i}: {g} vs {e}"
                                );
                            } else {
                                assert_eq!(g, &before[i], "{name} {what}: slot {slot} touched");
                            }
                        }
                    }
                }
                // Positions past capacity write nothing (the host never asks for them).
                let kc0 = rounded(&random(capacity * kv_dim, 5), kv_dim, kv_dtype);
                let (_, k, v) = run(&random(3 * width, 6), &kc0, &kc0, capacity, 3);
                let stored = rounded(&kc0, kv_dim, kv_dtype);
                assert!(
                    k == stored && v == stored,
                    "write past capacity must be dropped"
                );
            }
        }
    }

    #[test]
    fn paged_append_writes_each_token_into_its_sequence_page() {
        let b = require!(Bench::new());
        let (q_dim, kv_dim, head_size) = (64, 32, 16);
        let width = q_dim + 2 * kv_dim;
        let rope = Rope {
            head_size,
            rope_dim: head_size,
            theta: 10000.0,
            freq_factors: None,
            pairing: Pairing::Adjacent,
        };
        let capacity = 16;
        let table = b.buffer(&rope.table(capacity));
        // Two sequences of 10 and 7 positions in pages of 4; the pass writes
        // position 9 of the first, 6 of the second and 2 of the first.
        let lens = [10, 7];
        let tokens = [(0, 9), (1, 6), (0, 2)];
        for kv_dtype in KvDtype::ALL {
            let caches: Vec<Vec<f32>> = lens
                .iter()
                .map(|&len| rounded(&random(len * kv_dim, len as u64), kv_dim, kv_dtype))
                .collect();
            let (pool, paging, pages) = paged_pool(&caches, kv_dim, 4, &tokens);
            let n = tokens.len();
            let qkv = random(n * width, 33);
            let (kcb, vcb) = (
                b.cache(&pool, kv_dim, kv_dtype),
                b.cache(&pool, kv_dim, kv_dtype),
            );
            let (qkvb, qb) = (b.buffer(&qkv), b.buffer(&vec![f32::NAN; n * q_dim]));
            let (step, pagingb) = (b.paged_step(n, 4), b.u32s(&paging));
            let shape = Shape {
                q_dim,
                kv_dim,
                head_size,
                capacity,
                kv_dtype,
                rows: capacity,
            };
            let d = b.kernels.rope_append.bind(
                &b.gpu.device,
                Bindings {
                    q: &qb,
                    k_cache: &kcb,
                    v_cache: &vcb,
                    qkv: &qkvb,
                    step: &step,
                    paging: &pagingb,
                    paged: true,
                    table: &table,
                    shape,
                    prep: Prep::none(&qkvb),
                },
            );
            b.run(&d, n);
            let (q, k, v) = (
                b.read(&qb),
                b.read_cache(&kcb, kv_dim, kv_dtype),
                b.read_cache(&vcb, kv_dim, kv_dtype),
            );
            // Each sequence's logical cache with its token's rows written by
            // the host reference, then laid out in its pages.
            let (mut ek, mut ev) = (caches.clone(), caches.clone());
            let mut eq = vec![0.0; n * q_dim];
            for (t, &(s, pos)) in tokens.iter().enumerate() {
                let row = &qkv[t * width..(t + 1) * width];
                let q = &mut eq[t * q_dim..(t + 1) * q_dim];
                cpu(
                    q,
                    &mut ek[s],
                    &mut ev[s],
                    row,
                    pos,
                    &rope,
                    kv_dtype,
                    (None, None, 0.0),
                );
            }
            let what = format!("paged append {kv_dtype:?}");
            assert_close(&q, &eq, &format!("q {what}"));
            for (name, got, expect) in [("k", &k, &ek), ("v", &v, &ev)] {
                for (s, cache) in expect.iter().enumerate() {
                    for (pos, row) in cache.chunks(kv_dim).enumerate() {
                        let at = pages[s][pos / 4] as usize * 4 + pos % 4;
                        let got = &got[at * kv_dim..][..kv_dim];
                        let scale = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                        for (g, e) in got.iter().zip(row) {
                            assert!(
                                (g - e).abs() <= cache_tolerance(kv_dtype, *e, scale),
                                "{name} {what}: sequence {s} position {pos}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
