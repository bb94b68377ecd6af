//! One forward pass on the GPU, as run.c's `forward` but for a pass of n
//! tokens: the activations it works in ([`Activations`], allocated once per
//! session), every dispatch bound once to them ([`Dispatches::bind`]), and
//! the order they run in ([`Dispatches::each`]). `bind` and `each` read in
//! the same order with the same comments.

use crate::gpu_model::GpuModel;
use crate::kv_cache::{KvCache, KvDtype};
use crate::ops::projection::{input_stride, GpuTensor, Mode, NextNorm, MAX_COLS};
use crate::ops::rmsnorm::Rows;
use crate::ops::{
    argmax, attention, attention_combine, embed, matmul, matvec, rmsnorm, rope_append, Dispatch,
    WHOLE_GRID,
};

/// Bytes per f32.
const F32: u64 = 4;

/// Positions per split of split-K attention: a token attending to more runs
/// one workgroup per split and head, then a merge (`attention_combine`).
pub const ATTENTION_SPLIT: usize = 256;

/// Largest vocabulary whose classifier takes the final RMSNorm in, in a
/// decode step: every workgroup of the classifier (64 rows) sums x's
/// squares again, which for SmolLM2's 49152 rows cost more than the launch
/// it saves (9.2 against 10.9 tok/s, medians of 5 alternated runs on
/// lavapipe); stories260K's 512 rows save the launch.
const NORMED_CLASSIFIER_ROWS: usize = 4096;

/// Passes one session can record between two submits of the encoders it
/// records into (and steps of one GPU-resident greedy block): each pass
/// takes its own slot for its position and tokens.
pub const PASSES_PER_SUBMIT: usize = 64;

/// What a pass reads back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Readback {
    /// Nothing (prompt tokens: only their K/V are needed; no classifier runs).
    Nothing,
    /// The argmax token, 4 bytes.
    Argmax,
    /// All logits, vocab_size x 4 bytes.
    Logits,
}

/// The buffers a pass of up to `batch` tokens works in. Rows of activations
/// that feed projections are `input_stride` values apart and bind as 64 KiB
/// uniform buffers from any token's row (matvec: row 0).
#[derive(Debug)]
pub(crate) struct Activations {
    /// [`Step`](crate::ops::Step) uniform: the pass's first position and token count.
    pub step: wgpu::Buffer,
    /// (batch,) u32 tokens of the pass.
    pub tokens: wgpu::Buffer,
    /// (paging_words,) u32 each token's position and its sequence's page
    /// table, for a pass over a paged pool (prelude.wgsl); one unread word
    /// for a flat cache.
    pub paging: wgpu::Buffer,
    /// (paging_words,) the same positions and the sliding-window layers'
    /// page tables (an engine's window pool); one unread word for a model
    /// without such layers.
    pub window_paging: wgpu::Buffer,
    /// (batch, sd) residual stream.
    pub x: wgpu::Buffer,
    /// (batch, sd) x times the weights of the RMSNorm that reads it next,
    /// written beside x by whichever kernel wrote it: the input of a decode
    /// step's projections, which normalise it themselves.
    pub xg: wgpu::Buffer,
    /// (batch, sd) normed input of a block in a pass of several tokens.
    pub xb: wgpu::Buffer,
    /// (batch, q_dim + 2 kv_dim) q, k, v projections.
    pub qkv: wgpu::Buffer,
    /// (batch, q_dim) rotated q.
    pub q: wgpu::Buffer,
    /// (batch, sq) attention output, sq = input_stride(q_dim).
    pub att: wgpu::Buffer,
    /// (batch, sh) SwiGLU output.
    pub hb: wgpu::Buffer,
    /// (batch, n_heads, capacity) attention scores.
    pub scores: wgpu::Buffer,
    /// (batch, n_heads, splits, head_size + 2) split-K partial results.
    pub partials: wgpu::Buffer,
    /// (vocab_size,) logits of the pass's last token.
    pub logits: wgpu::Buffer,
    /// (1,) u32 argmax of the logits.
    pub next: wgpu::Buffer,
    /// (PASSES_PER_SUBMIT,) [`Step`](crate::ops::Step)s, one slot per pass
    /// recorded since the last submit, copied into `step` as each pass starts.
    pub step_slots: wgpu::Buffer,
    /// (PASSES_PER_SUBMIT, batch) u32 tokens, likewise copied into `tokens`.
    pub token_slots: wgpu::Buffer,
}

impl Activations {
    /// Allocates the buffers of a pass of up to `batch` tokens, each
    /// attending to at most `capacity` positions, with `paging_words` of
    /// page tables (1 for a flat cache). Call inside an error scope.
    pub fn new(model: &GpuModel, batch: usize, capacity: usize, paging_words: usize) -> Self {
        let c = model.config();
        let device = &model.gpu().device;
        let buffer = |label, len: usize, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: len as u64 * F32,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        let act = |label, len| buffer(label, batch * len, U::STORAGE);
        let input = |label, stride: usize| {
            let values = (batch - 1) * stride + MAX_COLS;
            buffer(label, values, U::STORAGE | U::UNIFORM)
        };
        let gathered = |label, stride: usize| {
            let values = (batch - 1) * stride + MAX_COLS;
            buffer(
                label,
                values,
                U::STORAGE | U::UNIFORM | U::COPY_SRC | U::COPY_DST,
            )
        };
        let (d, q, kv, hs) = (c.dim, c.q_dim(), c.kv_dim(), c.head_size);
        let (sd, sq, sh) = (input_stride(d), input_stride(q), input_stride(c.hidden_dim));
        let splits = capacity.div_ceil(ATTENTION_SPLIT);
        Self {
            step: buffer("step", 4, U::UNIFORM | U::COPY_DST),
            tokens: buffer("tokens", batch, U::STORAGE | U::COPY_DST),
            paging: buffer("paging", paging_words, U::STORAGE | U::COPY_DST),
            window_paging: buffer(
                "window paging",
                match (0..c.n_layers).any(|l| c.layer_window(l).is_some()) {
                    true => paging_words,
                    false => 1,
                },
                U::STORAGE | U::COPY_DST,
            ),
            // COPY_*: a paged pass gathers the rows whose logits it reads.
            x: gathered("x", sd),
            xb: gathered("xb", sd),
            xg: input("xg", sd),
            qkv: act("qkv", q + 2 * kv),
            q: act("q", q),
            att: input("att", sq),
            hb: input("hb", sh),
            scores: act("scores", c.n_heads * capacity),
            partials: act("partials", c.n_heads * splits * (hs + 2)),
            logits: buffer("logits", c.vocab_size, U::STORAGE | U::COPY_SRC),
            next: buffer("next", 1, U::STORAGE | U::COPY_SRC),
            step_slots: buffer(
                "step_slots",
                4 * PASSES_PER_SUBMIT,
                U::COPY_SRC | U::COPY_DST,
            ),
            token_slots: buffer(
                "token_slots",
                batch * PASSES_PER_SUBMIT,
                U::COPY_SRC | U::COPY_DST,
            ),
        }
    }
}

/// A kernel bound twice: for a pass of one token (matvec, attention's
/// workgroup per token) and for a pass of several (matmul, attention's
/// thread per token).
#[derive(Debug)]
struct ByTokens {
    decode: Dispatch,
    prefill: Dispatch,
}

impl ByTokens {
    /// The binding for a pass of `n` tokens.
    fn of(&self, n: usize) -> &Dispatch {
        match n {
            1 => &self.decode,
            _ => &self.prefill,
        }
    }
}

/// Every dispatch of one layer, bound once.
#[derive(Debug)]
struct LayerDispatches {
    att_norm: Dispatch,
    /// qkv = Wqkv n
    qkv: ByTokens,
    /// q = rope(q), cache ∪ (rope(k), v); in the decode QKV's epilogue where the cache allows.
    rope_append: Dispatch,
    attention: ByTokens,
    /// Merges attention's splits; recorded only when a token of the pass
    /// attends to more than [`ATTENTION_SPLIT`] positions.
    attention_combine: Dispatch,
    /// x += Wo attention, or with post-norms xb = Wo attention
    wo_residual: ByTokens,
    /// x += rmsnorm(xb) g_att_post, where the block has post-norms.
    attention_post_norm: Option<Dispatch>,
    ffn_norm: Dispatch,
    /// hb = act(W1 n) * (W3 n)
    gate_up_swiglu: ByTokens,
    /// x += W2 hb, or with post-norms xb = W2 hb
    down_residual: ByTokens,
    /// x += rmsnorm(xb) g_ffn_post, where the block has post-norms.
    ffn_post_norm: Option<Dispatch>,
}

/// Every dispatch of a pass, bound once to a session's activations and cache.
#[derive(Debug)]
pub(crate) struct Dispatches {
    embed: Dispatch,
    layers: Vec<LayerDispatches>,
    /// The last token's rmsnorm, then the classifier.
    final_norm: Dispatch,
    classifier: Dispatch,
    /// A decode step's classifier with the final norm in it, for
    /// vocabularies of at most [`NORMED_CLASSIFIER_ROWS`].
    classifier_normed: Option<Dispatch>,
    argmax: Dispatch,
    /// Whether a decode step's QKV projection rotates and appends (no
    /// rope_append launch).
    rope_in_qkv: bool,
}

impl Dispatches {
    /// Binds every dispatch of a pass of up to `batch` tokens, each at a
    /// position below `capacity`, to `a` and `cache` (a flat cache of
    /// `capacity` rows, or, `paged`, a pool of pages), in the order
    /// [`Dispatches::each`] runs them. Call inside an error scope.
    pub fn bind(
        model: &GpuModel,
        a: &Activations,
        cache: &KvCache,
        capacity: usize,
        paged: bool,
        batch: usize,
    ) -> Self {
        let c = model.config();
        let device = &model.gpu().device;
        let k = &model.kernels;
        let eps = c.norm_eps;
        let (d, q, kv) = (c.dim, c.q_dim(), c.kv_dim());
        let (sd, sq, sh) = (input_stride(d), input_stride(q), input_stride(c.hidden_dim));
        // Each layer's RoPE table (the model's, covering `capacity`).
        let tables: Vec<wgpu::Buffer> = (0..c.n_layers).map(|i| model.rope_table(i)).collect();
        let norm = |out, weight, rows| {
            k.rmsnorm.bind(
                device,
                rmsnorm::Bindings {
                    out,
                    x: &a.x,
                    weight,
                    step: &a.step,
                    len: d,
                    stride: sd,
                    eps,
                    rows,
                    residual: None,
                },
            )
        };
        // A post-norm: x += rmsnorm(xb) g, and xg for the norm with weights next_g.
        let post_norm = |g, next_g| {
            k.rmsnorm.bind(
                device,
                rmsnorm::Bindings {
                    out: &a.x,
                    x: &a.xb,
                    weight: g,
                    step: &a.step,
                    len: d,
                    stride: sd,
                    eps,
                    rows: Rows::All,
                    residual: Some(NextNorm {
                        g: next_g,
                        xg: &a.xg,
                    }),
                },
            )
        };
        // One token: out (op)= W x, x a uniform row; with `norm`, x is
        // xg and the product W rmsnorm(x) g; with `next_norm`, the epilogue
        // writes the next norm's xg; with `rope`, W is QKV and the epilogue
        // rotates and appends.
        let one_rope = |out, w, x, mode, norm, next_norm, rope| {
            let b = matvec::Bindings {
                out,
                w,
                x,
                mode,
                norm,
                next_norm,
                rope,
            };
            k.matvec_for_device().bind(device, b)
        };
        let one = |out, w, x, mode, norm| one_rope(out, w, x, mode, norm, None, None);
        // A pass of several: out[t] (op)= W x[t].
        let many = |out, out_stride, w, x, x_stride, mode| {
            let b = matmul::Bindings {
                out,
                out_stride,
                w,
                x,
                x_stride,
                step: &a.step,
                mode,
                tokens: batch,
            };
            k.matmul_for_device().bind(device, b)
        };
        let cls: &GpuTensor = model.wcls.as_ref().unwrap_or(&model.token_embedding);
        // A decode step's projections after a norm read x times the norm's
        // weights and scale by 1 / rms(x) (each kernel that writes x writes
        // xg too): no norm launches.
        let (decode_input, folded) = (&a.xg, Some((&a.x, eps)));
        let next_norm = |g| NextNorm { g, xg: &a.xg };
        // A residual add: x += W input, and xg for the norm with weights g, if any.
        let residual = |w, input, g: Option<_>| {
            one_rope(&a.x, w, input, Mode::Add, None, g.map(next_norm), None)
        };
        // Whether a decode step's classifier takes the final norm in (else
        // it runs on its own, and the last layer writes no xg).
        let normed_classifier = c.vocab_size <= NORMED_CLASSIFIER_ROWS;
        // A decode step's QKV rotates and appends in its epilogue where the
        // cache is flat f32 or f16 (quantized blocks span threads: their own
        // kernel) and the block does nothing to q and k before RoPE.
        let block = c.block();
        let rope_in_qkv = !paged
            && matches!(cache.dtype(), KvDtype::F32 | KvDtype::F16)
            && !block.prepares_qk()
            && !cache.has_rings();
        let shape = |rows| rope_append::Shape {
            q_dim: q,
            kv_dim: kv,
            head_size: c.head_size,
            capacity,
            kv_dtype: cache.dtype(),
            rows,
        };
        // out[t] = attention(q[t], cache), a workgroup or (per_token) a
        // thread per token, over a window layer's last positions.
        // A window layer finds its rows through the window pool's tables.
        let paging = |kc: &crate::kv_cache::LayerCache| match kc.window {
            Some(_) => &a.window_paging,
            None => &a.paging,
        };
        let attend = |kc: &crate::kv_cache::LayerCache, per_token| {
            k.attention.bind(
                device,
                attention::Bindings {
                    out: &a.att,
                    out_stride: sq,
                    q: &a.q,
                    k_cache: &kc.k,
                    v_cache: &kc.v,
                    scores: &a.scores,
                    partials: &a.partials,
                    step: &a.step,
                    paging: paging(kc),
                    paged,
                    shape: attention::Shape {
                        n_heads: c.n_heads,
                        n_kv_heads: c.n_kv_heads,
                        head_size: c.head_size,
                        capacity,
                        kv_dtype: cache.dtype(),
                        window: kc.window.unwrap_or(0),
                        rows: kc.rows,
                    },
                    split: ATTENTION_SPLIT,
                    per_token,
                },
            )
        };
        // Token embedding: each token's row becomes its residual stream x.
        let embed = k.embed.bind(
            device,
            embed::Bindings {
                out: &a.x,
                stride: sd,
                table: &model.token_embedding,
                tokens: &a.tokens,
                next_norm: Some(next_norm(
                    model
                        .layers
                        .first()
                        .map_or(&model.rms_final, |l| &l.rms_att),
                )),
                scale: match block.embed_scale {
                    true => (d as f32).sqrt(),
                    false => 1.0,
                },
            },
        );
        let layers = model
            .layers
            .iter()
            .zip(&cache.layers)
            .enumerate()
            .map(|(i, (w, kc))| {
                let gated = Mode::gated(block.activation, &w.w3);
                // The folded norm that reads the residual stream after this layer.
                let next_g = match model.layers.get(i + 1) {
                    Some(next) => Some(&next.rms_att),
                    None => normed_classifier.then_some(&model.rms_final),
                };
                let (shape, table) = (shape(kc.rows), &tables[i]);
                // With post-norms, Wo and W2 write xb, and a post-norm adds it to x.
                let post = w.post_norms.as_ref();
                let (wo, down) = match post {
                    None => (
                        ByTokens {
                            decode: residual(&w.wo, &a.att, Some(&w.rms_ffn)),
                            prefill: many(&a.x, sd, &w.wo, &a.att, sq, Mode::Add),
                        },
                        ByTokens {
                            decode: residual(&w.w2, &a.hb, next_g),
                            prefill: many(&a.x, sd, &w.w2, &a.hb, sh, Mode::Add),
                        },
                    ),
                    Some(_) => (
                        ByTokens {
                            decode: one(&a.xb, &w.wo, &a.att, Mode::Set, None),
                            prefill: many(&a.xb, sd, &w.wo, &a.att, sq, Mode::Set),
                        },
                        ByTokens {
                            decode: one(&a.xb, &w.w2, &a.hb, Mode::Set, None),
                            prefill: many(&a.xb, sd, &w.w2, &a.hb, sh, Mode::Set),
                        },
                    ),
                };
                LayerDispatches {
                    // Attention block: x += Wo attention(rope(q), cache ∪ rope(k), cache ∪ v),
                    // (q, k, v) = prep(Wqkv rmsnorm(x)), prep the block's biases and q/k norms.
                    att_norm: norm(&a.xb, &w.rms_att, Rows::All),
                    qkv: ByTokens {
                        decode: match rope_in_qkv {
                            // q = rope(Wq n), cache row pos = (rope(Wk n), Wv n)
                            true => one_rope(
                                &a.q,
                                &w.wqkv,
                                decode_input,
                                Mode::Set,
                                folded,
                                None,
                                Some(matvec::RopeAppend {
                                    step: &a.step,
                                    table,
                                    k_cache: &kc.k,
                                    v_cache: &kc.v,
                                    shape,
                                }),
                            ),
                            false => one(&a.qkv, &w.wqkv, decode_input, Mode::Set, folded),
                        },
                        prefill: many(&a.qkv, q + 2 * kv, &w.wqkv, &a.xb, sd, Mode::Set),
                    },
                    rope_append: k.rope_append.bind(
                        device,
                        rope_append::Bindings {
                            q: &a.q,
                            k_cache: &kc.k,
                            v_cache: &kc.v,
                            qkv: &a.qkv,
                            step: &a.step,
                            paging: paging(kc),
                            paged,
                            table,
                            shape,
                            prep: rope_append::Prep {
                                weights: &w.prep,
                                bias: block.qkv_bias,
                                norm: block.qk_norm,
                                eps,
                            },
                        },
                    ),
                    attention: ByTokens {
                        decode: attend(kc, false),
                        // A paged pass's tokens are other sequences' steps:
                        // each token's positions stay spread over a workgroup.
                        prefill: attend(kc, !paged),
                    },
                    attention_combine: k.attention_combine.bind(
                        device,
                        attention_combine::Bindings {
                            out: &a.att,
                            out_stride: sq,
                            partials: &a.partials,
                            step: &a.step,
                            paging: paging(kc),
                            paged,
                            n_heads: c.n_heads,
                            head_size: c.head_size,
                            capacity,
                            split: ATTENTION_SPLIT,
                            window: kc.window.unwrap_or(0),
                        },
                    ),
                    wo_residual: wo,
                    attention_post_norm: post.map(|(g, _)| post_norm(g, &w.rms_ffn)),
                    // Feed-forward block: x += W2 (act(W1 n) * W3 n), n = rmsnorm(x).
                    ffn_norm: norm(&a.xb, &w.rms_ffn, Rows::All),
                    gate_up_swiglu: ByTokens {
                        decode: one(&a.hb, &w.w1, decode_input, gated, folded),
                        prefill: many(&a.hb, sh, &w.w1, &a.xb, sd, gated),
                    },
                    down_residual: down,
                    // The stream after the layer goes on to the next norm (the final one last).
                    ffn_post_norm: post
                        .map(|(_, g)| post_norm(g, next_g.unwrap_or(&model.rms_final))),
                }
            })
            .collect();
        Self {
            embed,
            layers,
            // Logits of the pass's last token = classifier(rmsnorm(x)).
            final_norm: norm(&a.xb, &model.rms_final, Rows::Last),
            classifier: one(&a.logits, cls, &a.xb, Mode::Set, None),
            classifier_normed: normed_classifier
                .then(|| one(&a.logits, cls, &a.xg, Mode::Set, Some((&a.x, eps)))),
            rope_in_qkv,
            argmax: k.argmax.bind(
                device,
                argmax::Bindings {
                    out: &a.next,
                    x: &a.logits,
                    n: c.vocab_size,
                },
            ),
        }
    }

    /// Calls `f` with each dispatch of a pass of `n` tokens, in order, and
    /// its name; `attended` is the most positions a token of the pass
    /// attends to (`pos + n` for a pass at positions `pos..pos + n`).
    pub fn each(
        &self,
        attended: usize,
        n: usize,
        readback: Readback,
        mut f: impl FnMut(&'static str, &Dispatch),
    ) {
        // Split-K attention needs its merge once a token attends to more than one split.
        let split_k = attended > ATTENTION_SPLIT;
        // Token embedding: each token's row becomes its residual stream x.
        f("embed", &self.embed);
        let decode = n == 1;
        for l in &self.layers {
            // Attention block: x += Wo attention(rope(q), cache ∪ rope(k), cache ∪ v),
            // (q, k, v) = prep(Wqkv rmsnorm(x)), prep the block's biases and q/k norms.
            // A decode step's RMSNorms ride in the projections that follow them.
            if !decode {
                f("attention_norm", &l.att_norm);
            }
            f("qkv", l.qkv.of(n));
            if !(decode && self.rope_in_qkv) {
                f("rope_append", &l.rope_append);
            }
            f("attention", l.attention.of(n));
            if split_k {
                f("attention_combine", &l.attention_combine);
            }
            f("wo_residual", l.wo_residual.of(n));
            if let Some(d) = &l.attention_post_norm {
                f("attention_post_norm", d);
            }
            // Feed-forward block: x += W2 (act(W1 n) * W3 n), n = rmsnorm(x).
            if !decode {
                f("ffn_norm", &l.ffn_norm);
            }
            f("gate_up_swiglu", l.gate_up_swiglu.of(n));
            f("down_residual", l.down_residual.of(n));
            if let Some(d) = &l.ffn_post_norm {
                f("ffn_post_norm", d);
            }
        }
        // Logits of the pass's last token = classifier(rmsnorm(x)).
        if readback != Readback::Nothing {
            match (&self.classifier_normed, decode) {
                (Some(normed), true) => f("classifier", normed),
                _ => {
                    f("final_norm", &self.final_norm);
                    f("classifier", &self.classifier);
                }
            }
        }
        if readback == Readback::Argmax {
            f("argmax", &self.argmax);
        }
    }
}

/// The logits of every token of a pass, for scoring text (perplexity) and
/// verifying several tokens at once: the final norm over all rows, then the
/// classifier as a matrix-matrix product. Bound by a session on first use
/// (its (batch, vocab_size) buffer is not worth holding otherwise).
#[derive(Debug)]
pub(crate) struct AllLogits {
    /// (batch, vocab_size) logits of each token of the pass.
    pub logits: wgpu::Buffer,
    /// (batch, vocab_size) MAP_READ: the logits read back.
    pub readback: crate::readback::ReadbackBuffer,
    final_norm: Dispatch,
    classifier: Dispatch,
}

impl AllLogits {
    /// Binds to `a`'s residual stream. Call inside an error scope.
    pub fn bind(model: &GpuModel, a: &Activations, batch: usize) -> Self {
        let c = model.config();
        let device = &model.gpu().device;
        let k = &model.kernels;
        let sd = input_stride(c.dim);
        let logits = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("all logits"),
            size: (batch * c.vocab_size) as u64 * F32,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let final_norm = k.rmsnorm.bind(
            device,
            rmsnorm::Bindings {
                out: &a.xb,
                x: &a.x,
                weight: &model.rms_final,
                step: &a.step,
                len: c.dim,
                stride: sd,
                eps: c.norm_eps,
                rows: Rows::All,
                residual: None,
            },
        );
        let classifier = k.matmul_for_device().bind(
            device,
            matmul::Bindings {
                out: &logits,
                out_stride: c.vocab_size,
                w: model.wcls.as_ref().unwrap_or(&model.token_embedding),
                x: &a.xb,
                x_stride: sd,
                step: &a.step,
                mode: Mode::Set,
                tokens: batch,
            },
        );
        let bytes = (batch * c.vocab_size) as u64 * F32;
        Self {
            logits,
            readback: crate::readback::ReadbackBuffer::new(device, bytes),
            final_norm,
            classifier,
        }
    }

    /// Records logits = classifier(rmsnorm(x)) for the `n` tokens of the
    /// pass just recorded.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, n: usize) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("kvgpu all logits"),
            timestamp_writes: None,
        });
        self.final_norm.record(&mut pass, n as u32, WHOLE_GRID);
        self.classifier.record(&mut pass, n as u32, WHOLE_GRID);
    }
}
