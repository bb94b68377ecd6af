//! Decoding on the GPU: the model's weights uploaded once ([`GpuModel`]), and
//! a [`Session`] holding the per-layer KV cache and the activations, whose
//! step records every dispatch of one token into one encoder and submits once.

use wgpu::util::DeviceExt;

use crate::model::{Config, Model};
use crate::ops::matvec::GpuTensor;
use crate::ops::{argmax, attention, embed, kv_append, matvec, rmsnorm, rope, swiglu};
use crate::ops::{Dispatch, Kernels};
use crate::sampler::Sampler;
use crate::{Error, Gpu, Result};

const F32: u64 = 4;

/// One layer's weights on the GPU (shapes as in [`crate::model::LayerWeights`]).
#[derive(Clone, Debug)]
struct LayerWeights {
    /// (dim,) f32
    rms_att: wgpu::Buffer,
    wq: GpuTensor,
    wk: GpuTensor,
    wv: GpuTensor,
    wo: GpuTensor,
    /// (dim,) f32
    rms_ffn: wgpu::Buffer,
    w1: GpuTensor,
    w2: GpuTensor,
    w3: GpuTensor,
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
    /// (dim,) f32
    rms_final: wgpu::Buffer,
    /// (vocab_size, dim) when not shared with the embedding.
    wcls: Option<GpuTensor>,
    /// (seq_len, head_size / 2, 2) RoPE cos/sin, see [`rope::Rope::table`].
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
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(&t.to_f32()),
                    usage: wgpu::BufferUsages::STORAGE,
                })
            };
            let total = w.bytes();
            let mut done = 0u64;
            let mut matrix = |what: &str, t: &crate::tensor::Tensor| {
                let g = GpuTensor::upload(device, &gpu.queue, t, chunk_limit, what);
                done += t.bytes().len() as u64;
                progress(done, total);
                g
            };
            let layers = w
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerWeights {
                        rms_att: vector("rms_att", &l.rms_att),
                        wq: matrix("wq", &l.wq)?,
                        wk: matrix("wk", &l.wk)?,
                        wv: matrix("wv", &l.wv)?,
                        wo: matrix("wo", &l.wo)?,
                        rms_ffn: vector("rms_ffn", &l.rms_ffn),
                        w1: matrix("w1", &l.w1)?,
                        w2: matrix("w2", &l.w2)?,
                        w3: matrix("w3", &l.w3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
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
}

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

/// Matches WGSL `Step` in embed.wgsl (rope, kv_append and attention read
/// only `pos`), padded to 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Step {
    pos: u32,
    token: u32,
    _pad: [u32; 2],
}

/// Every dispatch of one layer, bound once.
#[derive(Debug)]
struct LayerDispatches {
    att_norm: Dispatch,
    q: Dispatch,
    k: Dispatch,
    v: Dispatch,
    rope: Dispatch,
    kv_append: Dispatch,
    attention: Dispatch,
    /// x += Wo attention
    wo_residual: Dispatch,
    ffn_norm: Dispatch,
    gate: Dispatch,
    up: Dispatch,
    swiglu: Dispatch,
    /// x += W2 swiglu
    down_residual: Dispatch,
}

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Readback {
    /// Nothing (a prompt token whose logits are not needed).
    Nothing,
    /// The argmax token, 4 bytes.
    Argmax,
    /// All logits, vocab_size x 4 bytes.
    Logits,
}

/// A decoding session: KV cache, activations and bound dispatches, all made
/// once at creation. Each step writes the position into a 16-byte uniform,
/// records every dispatch of the token into one encoder and submits once.
#[derive(Debug)]
pub struct Session {
    model: GpuModel,
    cache: KvCache,
    /// Step uniform: the position and token being decoded.
    step: wgpu::Buffer,
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
    final_norm: Dispatch,
    classifier: Dispatch,
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
            let act = |label, len| buffer(label, len, U::STORAGE);
            // Projection inputs: also bound as matvec's 64 KiB uniform `x`.
            let input = |label| buffer(label, matvec::MAX_COLS, U::STORAGE | U::UNIFORM);
            let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
            let step = buffer("step", 4, U::UNIFORM | U::COPY_DST);
            let x = act("x", d);
            let xb = input("xb");
            let xb2 = input("xb2");
            let hb = input("hb");
            let hb2 = act("hb2", h);
            let q = act("q", d);
            let k = act("k", kv);
            let v = act("v", kv);
            let scores = act("scores", c.n_heads * capacity);
            let logits = buffer("logits", c.vocab_size, U::STORAGE | U::COPY_SRC);
            let next = buffer("next", 1, U::STORAGE | U::COPY_SRC);
            let logits_readback =
                buffer("logits_readback", c.vocab_size, U::MAP_READ | U::COPY_DST);
            let next_readback = buffer("next_readback", 2, U::MAP_READ | U::COPY_DST);

            let kn = &model.kernels;
            let shape = attention::Shape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_size: c.head_size(),
                capacity,
                kv_dtype: options.kv_dtype,
            };
            let layers = model
                .layers
                .iter()
                .zip(&cache.layers)
                .map(|(w, kc)| LayerDispatches {
                    att_norm: rmsnorm::dispatch(
                        device,
                        &kn.rmsnorm,
                        &xb,
                        &x,
                        &w.rms_att,
                        d,
                        c.norm_eps,
                    ),
                    q: matvec::dispatch(device, &kn.matvec, &q, &w.wq, &xb),
                    k: matvec::dispatch(device, &kn.matvec, &k, &w.wk, &xb),
                    v: matvec::dispatch(device, &kn.matvec, &v, &w.wv, &xb),
                    rope: rope::dispatch(
                        device,
                        &kn.rope,
                        &q,
                        &k,
                        &step,
                        &model.rope_table,
                        d,
                        kv,
                        c.head_size(),
                    ),
                    kv_append: kv_append::dispatch(
                        device,
                        &kn.kv_append,
                        &kc.k,
                        &kc.v,
                        &k,
                        &v,
                        &step,
                        kv,
                        capacity,
                        options.kv_dtype,
                    ),
                    attention: attention::dispatch(
                        device,
                        &kn.attention,
                        &xb2,
                        &q,
                        &kc.k,
                        &kc.v,
                        &scores,
                        &step,
                        shape,
                    ),
                    wo_residual: matvec::dispatch_add(device, &kn.matvec, &x, &w.wo, &xb2),
                    ffn_norm: rmsnorm::dispatch(
                        device,
                        &kn.rmsnorm,
                        &xb,
                        &x,
                        &w.rms_ffn,
                        d,
                        c.norm_eps,
                    ),
                    gate: matvec::dispatch(device, &kn.matvec, &hb, &w.w1, &xb),
                    up: matvec::dispatch(device, &kn.matvec, &hb2, &w.w3, &xb),
                    swiglu: swiglu::dispatch(device, &kn.swiglu, &hb, &hb2, h),
                    down_residual: matvec::dispatch_add(device, &kn.matvec, &x, &w.w2, &hb),
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
                    d,
                    c.norm_eps,
                ),
                classifier: matvec::dispatch(device, &kn.matvec, &logits, cls, &xb),
                embed: embed::dispatch(device, &kn.embed, &x, &model.token_embedding, &step),
                argmax: argmax::dispatch(device, &kn.argmax, &next, &logits, c.vocab_size),
                model: model.clone(),
                cache,
                step,
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

    /// Number of `queue.submit` calls this session has made (one per step).
    pub fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Kernel launches recorded per greedy token: the embedding, 13 per
    /// layer (the residual adds ride in the Wo and W2 projections), then the
    /// final norm, the classifier and the argmax (a step
    /// that reads the logits back skips the argmax); more where a weight is
    /// split into row-chunks.
    pub fn dispatches_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.att_norm,
                    &l.q,
                    &l.k,
                    &l.v,
                    &l.rope,
                    &l.kv_append,
                    &l.attention,
                    &l.wo_residual,
                    &l.ffn_norm,
                    &l.gate,
                    &l.up,
                    &l.swiglu,
                    &l.down_residual,
                ]
                .iter()
                .map(|d| d.launches())
                .sum::<usize>()
            })
            .sum();
        self.embed.launches()
            + per_layer
            + self.final_norm.launches()
            + self.classifier.launches()
            + self.argmax.launches()
    }

    /// Decodes `token` at the next position and returns the logits (vocab_size,).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        self.step(token, Readback::Logits)?;
        let mut bytes = std::mem::take(&mut self.logits_host);
        let r = self
            .model
            .gpu
            .map_read(&self.logits_readback, bytemuck::cast_slice_mut(&mut bytes));
        self.logits_host = bytes;
        r?;
        Ok(&self.logits_host)
    }

    /// Decodes `token` and returns the argmax of the logits, computed on the
    /// GPU (4 bytes read back).
    pub fn forward_greedy(&mut self, token: u32) -> Result<u32> {
        self.step(token, Readback::Argmax)?;
        let mut next = [0u32; 2];
        self.model
            .gpu
            .map_read(&self.next_readback, bytemuck::cast_slice_mut(&mut next))?;
        Ok(next[0])
    }

    /// Decodes `token` without reading anything back (a prompt token: only
    /// its K/V are needed). Does not wait for the GPU.
    pub fn feed(&mut self, token: u32) -> Result<()> {
        self.step(token, Readback::Nothing)
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

    /// One decode pass: checks, then every dispatch of the token in one
    /// encoder and one submit. On error nothing changes.
    fn step(&mut self, token: u32, readback: Readback) -> Result<()> {
        let c = &self.model.config;
        if token as usize >= c.vocab_size {
            return Err(Error::TokenOutOfRange {
                token,
                vocab_size: c.vocab_size,
            });
        }
        let pos = self.cache.len;
        if pos >= self.cache.capacity {
            return Err(Error::ContextFull {
                capacity: self.cache.capacity,
            });
        }
        let gpu = &self.model.gpu;
        gpu.scoped("decoding a token", || {
            gpu.queue.write_buffer(
                &self.step,
                0,
                bytemuck::bytes_of(&Step {
                    pos: pos as u32,
                    token,
                    _pad: [0; 2],
                }),
            );
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
                // Token embedding: the token's row becomes the residual stream x.
                self.embed.record(&mut pass);
                for l in &self.layers {
                    // Attention block: x += Wo attention(rope(Wq n), cache ∪ rope(Wk n), cache ∪ Wv n), n = rmsnorm(x).
                    l.att_norm.record(&mut pass);
                    l.q.record(&mut pass);
                    l.k.record(&mut pass);
                    l.v.record(&mut pass);
                    l.rope.record(&mut pass);
                    l.kv_append.record(&mut pass);
                    l.attention.record(&mut pass);
                    l.wo_residual.record(&mut pass);
                    // Feed-forward block: x += W2 (silu(W1 n) * W3 n), n = rmsnorm(x).
                    l.ffn_norm.record(&mut pass);
                    l.gate.record(&mut pass);
                    l.up.record(&mut pass);
                    l.swiglu.record(&mut pass);
                    l.down_residual.record(&mut pass);
                }
                // Logits = classifier(rmsnorm(x)).
                self.final_norm.record(&mut pass);
                self.classifier.record(&mut pass);
                if readback == Readback::Argmax {
                    self.argmax.record(&mut pass);
                }
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
                    c.vocab_size as u64 * F32,
                ),
            }
            gpu.queue.submit([encoder.finish()]);
        })?;
        self.submissions += 1;
        self.cache.len += 1;
        Ok(())
    }
}
