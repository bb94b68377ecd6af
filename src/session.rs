//! Decoding on the GPU: the model's weights uploaded once ([`GpuModel`]), and
//! a [`Session`] holding the per-layer KV cache and the activations, whose
//! step records every dispatch of one token into one encoder and submits once.

use wgpu::util::DeviceExt;

use crate::model::{Config, Model};
use crate::ops::{add, argmax, attention, kv_append, matvec, rmsnorm, rope, swiglu};
use crate::ops::{Dispatch, Kernels};
use crate::sampler::Sampler;
use crate::{Error, Gpu, Result};

const F32: u64 = 4;

/// One layer's weights on the GPU (shapes as in [`crate::model::Weights`], one layer).
#[derive(Clone, Debug)]
struct LayerWeights {
    /// (dim,)
    rms_att: wgpu::Buffer,
    /// (dim, dim)
    wq: wgpu::Buffer,
    /// (kv_dim, dim)
    wk: wgpu::Buffer,
    /// (kv_dim, dim)
    wv: wgpu::Buffer,
    /// (dim, dim)
    wo: wgpu::Buffer,
    /// (dim,)
    rms_ffn: wgpu::Buffer,
    /// (hidden_dim, dim)
    w1: wgpu::Buffer,
    /// (dim, hidden_dim)
    w2: wgpu::Buffer,
    /// (hidden_dim, dim)
    w3: wgpu::Buffer,
}

/// A model's weights and kernels on one device, uploaded once. Cheap to
/// clone (wgpu handles are reference-counted); many sessions can share it.
#[derive(Clone, Debug)]
pub struct GpuModel {
    gpu: Gpu,
    config: Config,
    kernels: Kernels,
    /// (vocab_size, dim); also the classifier when shared.
    token_embedding: wgpu::Buffer,
    layers: Vec<LayerWeights>,
    /// (dim,)
    rms_final: wgpu::Buffer,
    /// (vocab_size, dim) when not shared with the embedding.
    wcls: Option<wgpu::Buffer>,
    /// (seq_len, head_size / 2, 2) RoPE cos/sin, see [`rope::table`].
    rope_table: wgpu::Buffer,
    weight_bytes: u64,
}

impl GpuModel {
    /// Checks every tensor against the device's limits, then uploads the
    /// weights and compiles the kernels.
    pub fn new(gpu: &Gpu, model: &Model) -> Result<Self> {
        let c = &model.config;
        c.validate()?;
        let w = &model.weights;
        let limits = gpu.device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let biggest = [
            ("token embedding", w.token_embedding.len()),
            ("classifier", w.classifier().len()),
            ("w1", c.hidden_dim * c.dim),
            ("wq", c.dim * c.dim),
        ];
        for (what, n) in biggest {
            let needed = n as u64 * F32;
            if needed > limit {
                return Err(Error::ModelTooLarge {
                    what: what.to_string(),
                    needed,
                    limit,
                });
            }
        }
        gpu.scoped("uploading the model", || {
            let device = &gpu.device;
            let upload = |label: &str, data: &[f32], extra: wgpu::BufferUsages| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::STORAGE | extra,
                })
            };
            let none = wgpu::BufferUsages::empty();
            let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
            let layers = (0..c.n_layers)
                .map(|l| LayerWeights {
                    rms_att: upload("rms_att", &w.rms_att[l * d..][..d], none),
                    wq: upload("wq", &w.wq[l * d * d..][..d * d], none),
                    wk: upload("wk", &w.wk[l * kv * d..][..kv * d], none),
                    wv: upload("wv", &w.wv[l * kv * d..][..kv * d], none),
                    wo: upload("wo", &w.wo[l * d * d..][..d * d], none),
                    rms_ffn: upload("rms_ffn", &w.rms_ffn[l * d..][..d], none),
                    w1: upload("w1", &w.w1[l * h * d..][..h * d], none),
                    w2: upload("w2", &w.w2[l * d * h..][..d * h], none),
                    w3: upload("w3", &w.w3[l * h * d..][..h * d], none),
                })
                .collect();
            let weight_bytes = [
                w.token_embedding.len(),
                w.rms_att.len(),
                w.wq.len(),
                w.wk.len(),
                w.wv.len(),
                w.wo.len(),
                w.rms_ffn.len(),
                w.w1.len(),
                w.w2.len(),
                w.w3.len(),
                w.rms_final.len(),
                w.wcls.as_ref().map_or(0, Vec::len),
            ]
            .iter()
            .sum::<usize>() as u64
                * F32;
            Self {
                gpu: gpu.clone(),
                config: c.clone(),
                kernels: Kernels::new(device),
                // COPY_SRC: the step copies the token's row into the residual stream.
                token_embedding: upload(
                    "token_embedding",
                    &w.token_embedding,
                    wgpu::BufferUsages::COPY_SRC,
                ),
                layers,
                rms_final: upload("rms_final", &w.rms_final, none),
                wcls: w.wcls.as_ref().map(|cls| upload("wcls", cls, none)),
                rope_table: upload(
                    "rope_table",
                    &rope::table(c.seq_len, c.head_size(), c.rope_theta),
                    none,
                ),
                weight_bytes,
            }
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// One layer's K and V cache on the GPU.
#[derive(Debug)]
struct LayerCache {
    /// (capacity, kv_dim) keys, position-major.
    k: wgpu::Buffer,
    /// (capacity, kv_dim) values, position-major.
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
}

impl KvCache {
    fn new(device: &wgpu::Device, config: &Config, capacity: usize) -> Result<Self> {
        if capacity == 0 || capacity > config.seq_len {
            return Err(Error::InvalidCapacity {
                requested: capacity,
                max: config.seq_len,
            });
        }
        let kv_dim = config.kv_dim();
        let size = capacity as u64 * kv_dim as u64 * F32;
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

    /// Bytes allocated: `2 x n_layers x capacity x kv_dim x 4`.
    pub fn bytes(&self) -> u64 {
        2 * self.layers.len() as u64 * self.capacity as u64 * self.kv_dim as u64 * F32
    }

    /// Bytes one position takes across all layers (K and V).
    pub fn bytes_per_position(&self) -> u64 {
        2 * self.layers.len() as u64 * self.kv_dim as u64 * F32
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

/// Matches WGSL `Step` in rope.wgsl, kv_append.wgsl, attention.wgsl (padded to 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Step {
    pos: u32,
    _pad: [u32; 3],
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
    wo: Dispatch,
    att_residual: Dispatch,
    ffn_norm: Dispatch,
    gate: Dispatch,
    up: Dispatch,
    swiglu: Dispatch,
    down: Dispatch,
    ffn_residual: Dispatch,
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
    /// Step uniform: the position being decoded.
    step: wgpu::Buffer,
    /// (dim,) residual stream.
    x: wgpu::Buffer,
    /// (vocab_size,) logits.
    logits: wgpu::Buffer,
    /// (1,) u32 argmax of the logits.
    next: wgpu::Buffer,
    /// (vocab_size,) MAP_READ copy of the logits.
    logits_readback: wgpu::Buffer,
    /// (2,) u32 MAP_READ copy of `next` (8 bytes: the map alignment).
    next_readback: wgpu::Buffer,
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
        let c = model.config.clone();
        let capacity = capacity.unwrap_or(c.seq_len);
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
            let cache = KvCache::new(device, &c, capacity)?;
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
            let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
            let step = buffer("step", 4, U::UNIFORM | U::COPY_DST);
            let x = buffer("x", d, U::STORAGE | U::COPY_DST | U::COPY_SRC);
            let xb = act("xb", d);
            let xb2 = act("xb2", d);
            let hb = act("hb", h);
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
                    q: matvec::dispatch(device, &kn.matvec, &q, &w.wq, &xb, d, d),
                    k: matvec::dispatch(device, &kn.matvec, &k, &w.wk, &xb, kv, d),
                    v: matvec::dispatch(device, &kn.matvec, &v, &w.wv, &xb, kv, d),
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
                    wo: matvec::dispatch(device, &kn.matvec, &xb, &w.wo, &xb2, d, d),
                    att_residual: add::dispatch(device, &kn.add, &x, &xb, d),
                    ffn_norm: rmsnorm::dispatch(
                        device,
                        &kn.rmsnorm,
                        &xb,
                        &x,
                        &w.rms_ffn,
                        d,
                        c.norm_eps,
                    ),
                    gate: matvec::dispatch(device, &kn.matvec, &hb, &w.w1, &xb, h, d),
                    up: matvec::dispatch(device, &kn.matvec, &hb2, &w.w3, &xb, h, d),
                    swiglu: swiglu::dispatch(device, &kn.swiglu, &hb, &hb2, h),
                    down: matvec::dispatch(device, &kn.matvec, &xb, &w.w2, &hb, d, h),
                    ffn_residual: add::dispatch(device, &kn.add, &x, &xb, d),
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
                classifier: matvec::dispatch(
                    device,
                    &kn.matvec,
                    &logits,
                    cls,
                    &xb,
                    c.vocab_size,
                    d,
                ),
                argmax: argmax::dispatch(device, &kn.argmax, &next, &logits, c.vocab_size),
                model: model.clone(),
                cache,
                step,
                x,
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

    /// Kernel dispatches recorded per greedy token: 15 per layer, then the
    /// final norm, the classifier and the argmax (a step that reads the
    /// logits back skips the argmax).
    pub fn dispatches_per_token(&self) -> usize {
        15 * self.layers.len() + 3
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
        let bytes = (self.cache.len * self.cache.kv_dim) as u64 * F32;
        if bytes == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let gpu = &self.model.gpu;
        let read = |b| -> Result<Vec<f32>> {
            Ok(bytemuck::pod_collect_to_vec(&gpu.read_buffer(b, bytes)?))
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
        let row_bytes = c.dim as u64 * F32;
        gpu.scoped("decoding a token", || {
            gpu.queue.write_buffer(
                &self.step,
                0,
                bytemuck::bytes_of(&Step {
                    pos: pos as u32,
                    _pad: [0; 3],
                }),
            );
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("kvgpu step"),
                });
            // Token embedding: the token's row becomes the residual stream.
            encoder.copy_buffer_to_buffer(
                &self.model.token_embedding,
                token as u64 * row_bytes,
                &self.x,
                0,
                row_bytes,
            );
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("kvgpu forward"),
                    timestamp_writes: None,
                });
                for l in &self.layers {
                    // Attention block: x += Wo attention(rope(Wq n), cache ∪ rope(Wk n), cache ∪ Wv n), n = rmsnorm(x).
                    l.att_norm.record(&mut pass);
                    l.q.record(&mut pass);
                    l.k.record(&mut pass);
                    l.v.record(&mut pass);
                    l.rope.record(&mut pass);
                    l.kv_append.record(&mut pass);
                    l.attention.record(&mut pass);
                    l.wo.record(&mut pass);
                    l.att_residual.record(&mut pass);
                    // Feed-forward block: x += W2 (silu(W1 n) * W3 n), n = rmsnorm(x).
                    l.ffn_norm.record(&mut pass);
                    l.gate.record(&mut pass);
                    l.up.record(&mut pass);
                    l.swiglu.record(&mut pass);
                    l.down.record(&mut pass);
                    l.ffn_residual.record(&mut pass);
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
