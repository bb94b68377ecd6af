//! Decoding on the GPU: the model's weights uploaded once ([`GpuModel`]), and
//! a [`Session`] holding the per-layer KV cache and the activations, whose
//! step records every dispatch of one token into one encoder and submits once.

use wgpu::util::DeviceExt;

use crate::model::{Config, Model};
use crate::ops::matvec::{GpuTensor, Mode};
use crate::ops::rmsnorm::Rows;
use crate::ops::{
    argmax, attention, attention_combine, embed, matmul, matvec, rmsnorm, rope_append,
};
use crate::ops::{Dispatch, Kernels};
use crate::sampler::Sampler;
use crate::{Error, Gpu, Result};

const F32: u64 = 4;

/// One layer's weights on the GPU (shapes as in [`crate::model::LayerWeights`]).
#[derive(Clone, Debug)]
struct LayerWeights {
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    rms_att: wgpu::Buffer,
    /// (dim + 2 kv_dim, dim): wq, wk and wv stacked, one projection.
    wqkv: GpuTensor,
    wo: GpuTensor,
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    rms_ffn: wgpu::Buffer,
    /// w1 (gate) and w3 (up), chunked alike for the fused SwiGLU projection.
    w1: GpuTensor,
    w3: GpuTensor,
    w2: GpuTensor,
}

/// A model's weights and kernels on one device, uploaded once. Cheap to
/// clone (wgpu handles are reference-counted); many sessions can share it.
#[derive(Clone, Debug)]
pub struct GpuModel {
    gpu: Gpu,
    config: Config,
    kernels: Kernels,
    /// (vocab_size, dim); also the classifier when shared.
    token_embedding: GpuTensor,
    layers: Vec<LayerWeights>,
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    rms_final: wgpu::Buffer,
    /// (vocab_size, dim) when not shared with the embedding.
    wcls: Option<GpuTensor>,
    /// (seq_len, head_size / 2, 2) RoPE cos/sin, see [`rope_append::Rope::table`].
    rope_table: wgpu::Buffer,
    weight_bytes: u64,
}

impl GpuModel {
    /// Uploads the weights as stored (quantized ones stay quantized), split
    /// into row-chunks where a tensor exceeds one storage binding, and
    /// compiles the kernels. Checks the device's limits first.
    pub fn new(gpu: &Gpu, model: &Model) -> Result<Self> {
        Self::with_progress(gpu, model, |_, _| {})
    }

    /// [`GpuModel::new`], calling `progress(bytes uploaded, total bytes)` as
    /// each tensor goes up (for a progress bar on big models).
    pub fn with_progress(
        gpu: &Gpu,
        model: &Model,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self> {
        let c = &model.config;
        c.validate()?;
        let w = &model.weights;
        let limits = gpu.device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let chunk_limit = GpuTensor::chunk_limit(&gpu.device);
        for t in w.tensors() {
            let row = t.row_bytes() as u64;
            if row > chunk_limit {
                return Err(Error::ModelTooLarge {
                    what: format!("one row of a {:?}", t),
                    needed: row,
                    limit: chunk_limit,
                });
            }
        }
        // Projection inputs bind as 64 KiB uniform buffers.
        for (what, cols) in [("dim", c.dim), ("hidden_dim", c.hidden_dim)] {
            if cols > matvec::MAX_COLS {
                return Err(Error::ModelTooLarge {
                    what: format!("a projection input ({what} {cols} values)"),
                    needed: cols as u64 * F32,
                    limit: matvec::INPUT_BYTES,
                });
            }
        }
        let table = c.rope().table(c.seq_len);
        if table.len() as u64 * F32 > limit {
            return Err(Error::ModelTooLarge {
                what: "the RoPE table".into(),
                needed: table.len() as u64 * F32,
                limit,
            });
        }
        gpu.scoped("uploading the model", || {
            let device = &gpu.device;
            let vector = |label: &str, t: &crate::tensor::Tensor| {
                matvec::norm_weights(device, label, &t.to_f32())
            };
            let total = w.bytes();
            let mut done = 0u64;
            let queue = &gpu.queue;
            let mut uploaded = |parts: &[&crate::tensor::Tensor]| {
                done += parts.iter().map(|t| t.bytes().len() as u64).sum::<u64>();
                progress(done, total);
            };
            let layers = w
                .layers
                .iter()
                .map(|l| {
                    let wqkv = GpuTensor::upload_stacked(
                        device,
                        queue,
                        &[&l.wq, &l.wk, &l.wv],
                        chunk_limit,
                        "wqkv",
                    )?;
                    uploaded(&[&l.wq, &l.wk, &l.wv]);
                    let wo = GpuTensor::upload(device, queue, &l.wo, chunk_limit, "wo")?;
                    let (w1, w3) =
                        GpuTensor::upload_pair(device, queue, &l.w1, &l.w3, chunk_limit, "w1/w3")?;
                    let w2 = GpuTensor::upload(device, queue, &l.w2, chunk_limit, "w2")?;
                    uploaded(&[&l.wo, &l.w1, &l.w3, &l.w2]);
                    Ok(LayerWeights {
                        rms_att: vector("rms_att", &l.rms_att),
                        wqkv,
                        wo,
                        rms_ffn: vector("rms_ffn", &l.rms_ffn),
                        w1,
                        w3,
                        w2,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut matrix = |what: &str, t: &crate::tensor::Tensor| {
                let g = GpuTensor::upload(device, queue, t, chunk_limit, what);
                uploaded(&[t]);
                g
            };
            Ok(Self {
                gpu: gpu.clone(),
                config: c.clone(),
                kernels: Kernels::new(device),
                token_embedding: matrix("token_embedding", &w.token_embedding)?,
                layers,
                rms_final: vector("rms_final", &w.rms_final),
                wcls: w.wcls.as_ref().map(|t| matrix("wcls", t)).transpose()?,
                rope_table: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope_table"),
                    contents: bytemuck::cast_slice(&table),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
                weight_bytes: w.bytes(),
            })
        })?
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights as stored (on the GPU, plus up to 3 bytes of padding per chunk).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// How the KV cache stores values. F16 halves the cache's memory; values are
/// rounded to f16 when appended and attention accumulates in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value (packed in pairs; SHADER_F16 not needed).
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// Session settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionOptions {
    /// KV cache capacity in positions; the model's context length when `None`.
    pub capacity: Option<usize>,
    /// How the KV cache stores values.
    pub kv_dtype: KvDtype,
    /// Whether a decode step computes each RMSNorm inside the projection
    /// that follows it (one dispatch fewer per norm, but every thread sums
    /// the squares itself): `None` picks it for models narrower than
    /// [`NORM_IN_PROJECTION_BELOW`], where dispatches dominate.
    pub norm_in_projection: Option<bool>,
}

/// Model width below which decode steps fold the RMSNorms into the
/// projections by default: on lavapipe this made stories260K (dim 64)
/// decode 1.9x faster, was even at dim 288 and about 20 % slower at dim 768.
pub const NORM_IN_PROJECTION_BELOW: usize = 512;

/// One layer's K and V cache on the GPU.
#[derive(Debug)]
struct LayerCache {
    /// (capacity, kv_dim) keys, position-major, as [`KvDtype`].
    k: wgpu::Buffer,
    /// (capacity, kv_dim) values, position-major, as [`KvDtype`].
    v: wgpu::Buffer,
}

/// The KV cache: per layer, one K and one V storage buffer of
/// `capacity x kv_dim` f32, allocated once. Positions `0..len` are valid;
/// appending writes slot `len`. Nothing is ever moved: truncating only
/// lowers `len`, and later steps overwrite the slots.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
    dtype: KvDtype,
}

impl KvCache {
    fn new(
        device: &wgpu::Device,
        config: &Config,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        if capacity == 0 || capacity > config.seq_len {
            return Err(Error::InvalidCapacity {
                requested: capacity,
                max: config.seq_len,
            });
        }
        let kv_dim = config.kv_dim();
        let size = capacity as u64 * kv_dim as u64 * dtype.bytes();
        let limits = device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if size > limit {
            return Err(Error::ModelTooLarge {
                what: "one layer's K cache".into(),
                needed: size,
                limit,
            });
        }
        let buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                // COPY_SRC: lets tests and tools read the cache back.
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let layers = (0..config.n_layers)
            .map(|_| LayerCache {
                k: buffer("k_cache"),
                v: buffer("v_cache"),
            })
            .collect();
        Ok(Self {
            layers,
            len: 0,
            capacity,
            kv_dim,
            dtype,
        })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How values are stored.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Bytes allocated: `2 x n_layers x capacity x kv_dim x (4 for f32, 2 for f16)`.
    pub fn bytes(&self) -> u64 {
        self.capacity as u64 * self.bytes_per_position()
    }

    /// Bytes one position takes across all layers (K and V).
    pub fn bytes_per_position(&self) -> u64 {
        2 * self.layers.len() as u64 * self.kv_dim as u64 * self.dtype.bytes()
    }

    /// Empties the cache (no GPU work: slots are overwritten as they refill).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keeps positions `0..len`, forgetting the rest (rollback).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::TruncateBeyondLength {
                requested: len,
                len: self.len,
            });
        }
        self.len = len;
        Ok(())
    }
}

/// Matches WGSL `Step` in the per-token kernels: the pass's first position
/// and its number of tokens, padded to 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Step {
    pos: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Most tokens one prefill pass runs (longer prompts take several passes).
pub const PREFILL_TOKENS: usize = 64;

/// Largest attention scratch a session allocates for prefill: passes are
/// shortened so that (tokens, n_heads, capacity) f32 scores fit.
const SCORES_BUDGET: u64 = 16 << 20;

/// Positions per split of split-K attention: a token attending to more runs
/// one workgroup per split and head, then a merge (`attention_combine`).
pub const ATTENTION_SPLIT: usize = 256;

/// The projections of one layer, bound either for one token (matvec) or for
/// a pass of several (matmul).
#[derive(Debug)]
struct Projections {
    /// qkv = Wqkv n
    qkv: Dispatch,
    /// x += Wo attention
    wo_residual: Dispatch,
    /// hb = silu(W1 n) * (W3 n)
    gate_up_swiglu: Dispatch,
    /// x += W2 hb
    down_residual: Dispatch,
}

/// Every dispatch of one layer, bound once.
#[derive(Debug)]
struct LayerDispatches {
    att_norm: Dispatch,
    rope_append: Dispatch,
    attention: Dispatch,
    /// Merges attention's splits; recorded only when a token of the pass
    /// attends to more than [`ATTENTION_SPLIT`] positions.
    attention_combine: Dispatch,
    ffn_norm: Dispatch,
    /// For a pass of one token.
    decode: Projections,
    /// For a pass of several.
    prefill: Projections,
}

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Readback {
    /// Nothing (prompt tokens: only their K/V are needed; no classifier runs).
    Nothing,
    /// The argmax token, 4 bytes.
    Argmax,
    /// All logits, vocab_size x 4 bytes.
    Logits,
}

/// GPU time of each kernel of one pass, from timestamp queries.
#[derive(Clone, Debug)]
pub struct Profile {
    /// (kernel, seconds) in the order they ran; one entry per launch.
    pub kernels: Vec<(&'static str, f64)>,
}

impl Profile {
    /// Sum of the kernels' times.
    pub fn total(&self) -> f64 {
        self.kernels.iter().map(|(_, t)| t).sum()
    }

    /// Total time per kernel name, largest first.
    pub fn by_kernel(&self) -> Vec<(&'static str, f64, usize)> {
        let mut out: Vec<(&'static str, f64, usize)> = Vec::new();
        for &(name, t) in &self.kernels {
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => {
                    e.1 += t;
                    e.2 += 1;
                }
                None => out.push((name, t, 1)),
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// A decoding session: KV cache, activations and bound dispatches, all made
/// once at creation. Each step writes its position and tokens into small
/// buffers, records every dispatch into one encoder and submits once. One
/// token runs the matrix-vector kernels; a prompt runs in passes of up to
/// [`Session::prefill_tokens`] tokens with the matrix-matrix ones.
#[derive(Debug)]
pub struct Session {
    model: GpuModel,
    cache: KvCache,
    /// Tokens per prefill pass.
    batch: usize,
    /// Whether decode steps fold the RMSNorms into the projections.
    norm_in_projection: bool,
    /// Step uniform: the pass's first position and token count.
    step: wgpu::Buffer,
    /// (batch,) u32 tokens of the pass.
    tokens: wgpu::Buffer,
    /// (vocab_size,) logits.
    logits: wgpu::Buffer,
    /// (1,) u32 argmax of the logits.
    next: wgpu::Buffer,
    /// (vocab_size,) MAP_READ copy of the logits.
    logits_readback: wgpu::Buffer,
    /// (2,) u32 MAP_READ copy of `next` (8 bytes: the map alignment).
    next_readback: wgpu::Buffer,
    embed: Dispatch,
    layers: Vec<LayerDispatches>,
    /// The last token's rmsnorm, then the classifier.
    final_norm: Dispatch,
    classifier: Dispatch,
    /// Decode with the norms in the projections: the classifier with the final norm folded in.
    classifier_normed: Dispatch,
    argmax: Dispatch,
    /// (vocab_size,) host copy of the last logits read back.
    logits_host: Vec<f32>,
    submissions: u64,
}

impl Session {
    /// A session whose KV cache holds `capacity` positions (the model's
    /// context length when `None`; a smaller one saves memory).
    pub fn new(model: &GpuModel, capacity: Option<usize>) -> Result<Self> {
        Self::with_options(
            model,
            SessionOptions {
                capacity,
                ..Default::default()
            },
        )
    }

    /// A session with the given cache capacity and value type.
    pub fn with_options(model: &GpuModel, options: SessionOptions) -> Result<Self> {
        let c = model.config.clone();
        let capacity = options.capacity.unwrap_or(c.seq_len);
        let gpu = model.gpu.clone();
        let device = &gpu.device;
        // Checked outside the scope: a bad capacity is the caller's error, not the GPU's.
        if capacity == 0 || capacity > c.seq_len {
            return Err(Error::InvalidCapacity {
                requested: capacity,
                max: c.seq_len,
            });
        }
        let scores_per_token = (c.n_heads * capacity) as u64 * F32;
        let batch = (SCORES_BUDGET / scores_per_token).clamp(1, PREFILL_TOKENS as u64) as usize;
        let batch = batch.min(capacity);
        let norm_in_projection = options
            .norm_in_projection
            .unwrap_or(c.dim < NORM_IN_PROJECTION_BELOW);
        gpu.scoped("creating a session", || {
            let cache = KvCache::new(device, &c, capacity, options.kv_dtype)?;
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
            // Projection inputs, rows `input_stride` apart, bound as 64 KiB
            // uniform buffers from any token's row (matvec: row 0).
            let input = |label, stride: usize| {
                let values = (batch - 1) * stride + matvec::MAX_COLS;
                buffer(label, values, U::STORAGE | U::UNIFORM)
            };
            let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
            let (sd, sh) = (matvec::input_stride(d), matvec::input_stride(h));
            let step = buffer("step", 4, U::UNIFORM | U::COPY_DST);
            let tokens = buffer("tokens", batch, U::STORAGE | U::COPY_DST);
            // (batch, sd) residual stream (a decode step's projections read
            // it as their uniform input and normalise it themselves);
            // (batch, sd) normed input of a block in a prefill pass.
            let x = input("x", sd);
            let xb = input("xb", sd);
            // (batch, dim + 2 kv_dim) q, k, v projections; (batch, dim) rotated q.
            let qkv = act("qkv", d + 2 * kv);
            let q = act("q", d);
            // (batch, sd) attention output; (batch, sh) SwiGLU output.
            let att = input("att", sd);
            let hb = input("hb", sh);
            // (batch, n_heads, capacity) attention scores; (batch, n_heads,
            // splits, head_size + 2) split-K partial results.
            let scores = act("scores", c.n_heads * capacity);
            let splits = capacity.div_ceil(ATTENTION_SPLIT);
            let partials = act("partials", c.n_heads * splits * (c.head_size() + 2));
            let logits = buffer("logits", c.vocab_size, U::STORAGE | U::COPY_SRC);
            let next = buffer("next", 1, U::STORAGE | U::COPY_SRC);
            let logits_readback =
                buffer("logits_readback", c.vocab_size, U::MAP_READ | U::COPY_DST);
            let next_readback = buffer("next_readback", 2, U::MAP_READ | U::COPY_DST);

            let kn = &model.kernels;
            let attention_shape = attention::Shape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_size: c.head_size(),
                capacity,
                kv_dtype: options.kv_dtype,
            };
            let rope_shape = rope_append::Shape {
                q_dim: d,
                kv_dim: kv,
                head_size: c.head_size(),
                capacity,
                kv_dtype: options.kv_dtype,
            };
            let norm = |out, weight| {
                rmsnorm::dispatch(
                    device,
                    &kn.rmsnorm,
                    out,
                    &x,
                    weight,
                    &step,
                    d,
                    sd,
                    c.norm_eps,
                    Rows::All,
                )
            };
            let layers = model
                .layers
                .iter()
                .zip(&cache.layers)
                .map(|(w, kc)| {
                    let swiglu = Mode::SwiGlu { up: &w.w3 };
                    let one = |out, w, x, mode| {
                        matvec::dispatch(device, &kn.matvec, out, w, x, mode, None)
                    };
                    let normed = |out, w, g, mode| {
                        let norm = Some((g, c.norm_eps));
                        matvec::dispatch(device, &kn.matvec_norm, out, w, &x, mode, norm)
                    };
                    let many = |out, out_stride, w, x, x_stride, mode| {
                        let (k, step) = (&kn.matmul, &step);
                        matmul::dispatch(
                            device, k, out, out_stride, w, x, x_stride, step, mode, batch,
                        )
                    };
                    LayerDispatches {
                        att_norm: norm(&xb, &w.rms_att),
                        rope_append: rope_append::dispatch(
                            device,
                            &kn.rope_append,
                            &q,
                            &kc.k,
                            &kc.v,
                            &qkv,
                            &step,
                            &model.rope_table,
                            rope_shape,
                        ),
                        attention: attention::dispatch(
                            device,
                            &kn.attention,
                            &att,
                            sd,
                            &q,
                            &kc.k,
                            &kc.v,
                            &scores,
                            &partials,
                            &step,
                            attention_shape,
                            ATTENTION_SPLIT,
                        ),
                        attention_combine: attention_combine::dispatch(
                            device,
                            &kn.attention_combine,
                            &att,
                            sd,
                            &partials,
                            &step,
                            c.n_heads,
                            c.head_size(),
                            capacity,
                            ATTENTION_SPLIT,
                        ),
                        ffn_norm: norm(&xb, &w.rms_ffn),
                        decode: Projections {
                            qkv: match norm_in_projection {
                                true => normed(&qkv, &w.wqkv, &w.rms_att, Mode::Set),
                                false => one(&qkv, &w.wqkv, &xb, Mode::Set),
                            },
                            wo_residual: one(&x, &w.wo, &att, Mode::Add),
                            gate_up_swiglu: match norm_in_projection {
                                true => normed(&hb, &w.w1, &w.rms_ffn, swiglu),
                                false => one(&hb, &w.w1, &xb, swiglu),
                            },
                            down_residual: one(&x, &w.w2, &hb, Mode::Add),
                        },
                        prefill: Projections {
                            qkv: many(&qkv, d + 2 * kv, &w.wqkv, &xb, sd, Mode::Set),
                            wo_residual: many(&x, sd, &w.wo, &att, sd, Mode::Add),
                            gate_up_swiglu: many(&hb, sh, &w.w1, &xb, sd, swiglu),
                            down_residual: many(&x, sd, &w.w2, &hb, sh, Mode::Add),
                        },
                    }
                })
                .collect();
            let cls = model.wcls.as_ref().unwrap_or(&model.token_embedding);
            Ok(Self {
                final_norm: rmsnorm::dispatch(
                    device,
                    &kn.rmsnorm,
                    &xb,
                    &x,
                    &model.rms_final,
                    &step,
                    d,
                    sd,
                    c.norm_eps,
                    Rows::Last,
                ),
                classifier: matvec::dispatch(
                    device,
                    &kn.matvec,
                    &logits,
                    cls,
                    &xb,
                    Mode::Set,
                    None,
                ),
                classifier_normed: matvec::dispatch(
                    device,
                    &kn.matvec_norm,
                    &logits,
                    cls,
                    &x,
                    Mode::Set,
                    Some((&model.rms_final, c.norm_eps)),
                ),
                embed: embed::dispatch(device, &kn.embed, &x, sd, &model.token_embedding, &tokens),
                argmax: argmax::dispatch(device, &kn.argmax, &next, &logits, c.vocab_size),
                model: model.clone(),
                cache,
                batch,
                norm_in_projection,
                step,
                tokens,
                logits,
                next,
                logits_readback,
                next_readback,
                layers,
                logits_host: vec![0.0; c.vocab_size],
                submissions: 0,
            })
        })?
    }

    /// The model this session decodes.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// The KV cache (length, capacity, bytes).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Positions decoded so far (the next token goes at this position).
    pub fn len(&self) -> usize {
        self.cache.len
    }

    /// Whether nothing has been decoded.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Forgets every position: the next token decodes at position 0.
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Keeps positions `0..len` and forgets the rest (rollback); the next
    /// token decodes at position `len`.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len)
    }

    /// Number of `queue.submit` calls this session has made (one per pass).
    pub fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Most tokens one prefill pass runs: [`PREFILL_TOKENS`], fewer where the
    /// attention scratch for that many would exceed 16 MiB.
    pub fn prefill_tokens(&self) -> usize {
        self.batch
    }

    /// Kernel launches recorded for the next greedy token: the embedding, 6
    /// per layer (norm + QKV projection, RoPE + append, attention, Wo +
    /// residual, norm + gate/up/SiLU projection, W2 + residual; one more past
    /// [`ATTENTION_SPLIT`] positions, the split-K merge; two more where the
    /// norms run on their own, see [`SessionOptions::norm_in_projection`]),
    /// the final norm + classifier and the argmax (one more); more where a
    /// weight is split into row-chunks or a stacked one mixes storage types.
    pub fn dispatches_per_token(&self) -> usize {
        let mut n = 0;
        self.each_dispatch(1, Readback::Argmax, |_, d| n += d.launches(1));
        n
    }

    /// Calls `f` with each dispatch of a pass of `n` tokens from the cache's
    /// length on, in order, and its name.
    fn each_dispatch(
        &self,
        n: usize,
        readback: Readback,
        mut f: impl FnMut(&'static str, &Dispatch),
    ) {
        // Split-K attention needs its merge once a token attends to more than one split.
        let split_k = self.cache.len + n > ATTENTION_SPLIT;
        // Token embedding: each token's row becomes its residual stream x.
        f("embed", &self.embed);
        let decode = n == 1;
        // The RMSNorms ride in the projections that follow them, or run on their own.
        let norms = !(decode && self.norm_in_projection);
        for l in &self.layers {
            let p = if decode { &l.decode } else { &l.prefill };
            // Attention block: x += Wo attention(rope(q), cache ∪ rope(k), cache ∪ v),
            // (q, k, v) = Wqkv rmsnorm(x).
            if norms {
                f("attention_norm", &l.att_norm);
            }
            f("qkv", &p.qkv);
            f("rope_append", &l.rope_append);
            f("attention", &l.attention);
            if split_k {
                f("attention_combine", &l.attention_combine);
            }
            f("wo_residual", &p.wo_residual);
            // Feed-forward block: x += W2 (silu(W1 n) * W3 n), n = rmsnorm(x).
            if norms {
                f("ffn_norm", &l.ffn_norm);
            }
            f("gate_up_swiglu", &p.gate_up_swiglu);
            f("down_residual", &p.down_residual);
        }
        // Logits of the pass's last token = classifier(rmsnorm(x)).
        if readback != Readback::Nothing {
            if norms {
                f("final_norm", &self.final_norm);
                f("classifier", &self.classifier);
            } else {
                f("classifier", &self.classifier_normed);
            }
        }
        if readback == Readback::Argmax {
            f("argmax", &self.argmax);
        }
    }

    /// Decodes `token` at the next position and returns the logits (vocab_size,).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        self.check(&[token])?;
        self.step(&[token], Readback::Logits)?;
        self.read_logits()
    }

    /// Decodes `token` and returns the argmax of the logits, computed on the
    /// GPU (4 bytes read back).
    pub fn forward_greedy(&mut self, token: u32) -> Result<u32> {
        self.check(&[token])?;
        self.step(&[token], Readback::Argmax)?;
        let mut next = [0u32; 2];
        self.model
            .gpu
            .map_read(&self.next_readback, bytemuck::cast_slice_mut(&mut next))?;
        Ok(next[0])
    }

    /// Runs `tokens` at the next positions without reading anything back
    /// (prompt tokens: only their K/V are needed), in prefill passes of up
    /// to [`Session::prefill_tokens`]; a single token runs as a decode step.
    /// Does not wait for the GPU.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.check(tokens)?;
        for pass in tokens.chunks(self.batch) {
            self.step(pass, Readback::Nothing)?;
        }
        Ok(())
    }

    /// Runs `tokens` (a prompt) at the next positions in prefill passes and
    /// returns the logits after the last one (vocab_size,). Equal, within
    /// float rounding, to calling [`Session::forward`] on each token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.check(tokens)?;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        let last = (tokens.len() - 1) / self.batch * self.batch;
        for pass in tokens[..last].chunks(self.batch) {
            self.step(pass, Readback::Nothing)?;
        }
        self.step(&tokens[last..], Readback::Logits)?;
        self.read_logits()
    }

    /// Decodes `token` and picks the next one with `sampler`: on the GPU when
    /// greedy, else from the logits read back.
    pub fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32> {
        if sampler.is_greedy() {
            self.forward_greedy(token)
        } else {
            let logits = self.forward(token)?;
            Ok(sampler.sample(logits))
        }
    }

    /// Runs one pass over `tokens` (one token: a decode step; up to
    /// [`Session::prefill_tokens`]: a prefill pass) as
    /// [`Session::forward_greedy`] does, but with each kernel in its own
    /// compute pass between two timestamp queries, and returns each kernel's
    /// GPU time. Needs the device feature `TIMESTAMP_QUERY` ([`Gpu::new`]
    /// asks for it where the adapter has it). Allocates its query buffers
    /// each call: for measurement, not decoding.
    pub fn profile(&mut self, tokens: &[u32]) -> Result<Profile> {
        let gpu = self.model.gpu.clone();
        if !gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::Unsupported(
                "profiling needs the TIMESTAMP_QUERY device feature",
            ));
        }
        self.check(tokens)?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::EmptyInput);
        }
        if n > self.batch {
            return Err(Error::PromptTooLong {
                tokens: n,
                capacity: self.batch,
            });
        }
        let mut names = Vec::new();
        self.each_dispatch(n, Readback::Argmax, |name, d| {
            names.extend(std::iter::repeat_n(name, d.launches(n as u32)))
        });
        let count = 2 * names.len() as u32;
        let ticks = gpu.scoped("profiling a pass", || {
            let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kvgpu profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let size = count as u64 * 8;
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvgpu profile resolve"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            self.write_step(tokens);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let mut i = 0;
            self.each_dispatch(n, Readback::Argmax, |name, d| {
                for launch in 0..d.launches(n as u32) {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(name),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &queries,
                            beginning_of_pass_write_index: Some(2 * i),
                            end_of_pass_write_index: Some(2 * i + 1),
                        }),
                    });
                    d.record_launch(&mut pass, launch, n as u32);
                    i += 1;
                }
            });
            encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
            gpu.queue.submit([encoder.finish()]);
            resolved
        })?;
        self.submissions += 1;
        self.cache.len += n;
        let raw = gpu.read_buffer(&ticks, count as u64 * 8)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(Profile {
            kernels: names
                .into_iter()
                .zip(ticks.chunks_exact(2))
                .map(|(name, t)| (name, t[1].saturating_sub(t[0]) as f64 * period))
                .collect(),
        })
    }

    /// Copies one layer's K and V cache rows `0..len` back to the host,
    /// each (len, kv_dim). For inspection and tests.
    pub fn read_cache(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let lc = self.cache.layers.get(layer).ok_or(Error::InvalidConfig {
            field: "layer",
            value: layer as i64,
            reason: format!("model has {} layers", self.cache.layers.len()),
        })?;
        let values = self.cache.len * self.cache.kv_dim;
        let bytes = values as u64 * self.cache.dtype.bytes();
        if bytes == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let gpu = &self.model.gpu;
        let dtype = self.cache.dtype;
        let read = |b| -> Result<Vec<f32>> {
            let raw = gpu.read_buffer(b, bytes)?;
            Ok(match dtype {
                KvDtype::F32 => bytemuck::pod_collect_to_vec(&raw),
                KvDtype::F16 => raw
                    .chunks_exact(2)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect(),
            })
        };
        Ok((read(&lc.k)?, read(&lc.v)?))
    }

    /// Checks that `tokens` can run next: each in the vocabulary, all within
    /// the cache's room. Nothing changes on error.
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let vocab_size = self.model.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange { token, vocab_size });
        }
        let room = self.cache.capacity - self.cache.len;
        if room == 0 && !tokens.is_empty() {
            return Err(Error::ContextFull {
                capacity: self.cache.capacity,
            });
        }
        if tokens.len() > room {
            return Err(Error::PromptTooLong {
                tokens: tokens.len(),
                capacity: room,
            });
        }
        Ok(())
    }

    /// Reads the logits copied back by the last step.
    fn read_logits(&mut self) -> Result<&[f32]> {
        let mut bytes = std::mem::take(&mut self.logits_host);
        let r = self
            .model
            .gpu
            .map_read(&self.logits_readback, bytemuck::cast_slice_mut(&mut bytes));
        self.logits_host = bytes;
        r?;
        Ok(&self.logits_host)
    }

    /// Writes the pass's position, token count and tokens.
    fn write_step(&self, tokens: &[u32]) {
        let queue = &self.model.gpu.queue;
        let step = Step {
            pos: self.cache.len as u32,
            n: tokens.len() as u32,
            _pad: [0; 2],
        };
        queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
    }

    /// One pass over `tokens` (checked, 1..=batch of them): every dispatch
    /// in one encoder and one submit. On error nothing changes.
    fn step(&mut self, tokens: &[u32], readback: Readback) -> Result<()> {
        let n = tokens.len();
        debug_assert!((1..=self.batch).contains(&n));
        let vocab_bytes = self.model.config.vocab_size as u64 * F32;
        let gpu = &self.model.gpu;
        gpu.scoped("decoding", || {
            self.write_step(tokens);
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("kvgpu step"),
                });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("kvgpu forward"),
                    timestamp_writes: None,
                });
                self.each_dispatch(n, readback, |_, d| d.record(&mut pass, n as u32));
            }
            match readback {
                Readback::Nothing => {}
                Readback::Argmax => {
                    encoder.copy_buffer_to_buffer(&self.next, 0, &self.next_readback, 0, F32)
                }
                Readback::Logits => encoder.copy_buffer_to_buffer(
                    &self.logits,
                    0,
                    &self.logits_readback,
                    0,
                    vocab_bytes,
                ),
            }
            gpu.queue.submit([encoder.finish()]);
        })?;
        self.submissions += 1;
        self.cache.len += n;
        Ok(())
    }
}
