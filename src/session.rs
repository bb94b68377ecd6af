//! A decoding [`Session`] on the GPU: one sequence's KV cache, the
//! activations of a pass and every dispatch bound to them, all made once.
//! Each pass writes its position and tokens into small buffers, records
//! every dispatch into one encoder and submits once.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu_model::GpuModel;
use crate::kv_cache::{self, KvCache, KvDtype};
use crate::ops::Step;
use crate::pass::{Activations, Dispatches, Readback};
use crate::sampler::Sampler;

/// Bytes per f32.
const F32: u64 = 4;

/// Most tokens one prefill pass runs (longer prompts take several passes).
pub const PREFILL_TOKENS: usize = 64;

/// Largest attention scratch a session allocates for prefill: passes are
/// shortened so that (tokens, n_heads, capacity) f32 scores fit.
const SCORES_BUDGET: u64 = 16 << 20;

/// Model width below which decode steps fold the RMSNorms into the
/// projections by default: on lavapipe this made stories260K (dim 64)
/// decode 1.9x faster, was even at dim 288 and about 20 % slower at dim 768.
pub const NORM_IN_PROJECTION_BELOW: usize = 512;

/// Session settings: `SessionOptions::default().capacity(256).kv_dtype(KvDtype::F16)`.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
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

impl SessionOptions {
    /// A KV cache of `positions` instead of the model's context length.
    pub fn capacity(mut self, positions: usize) -> Self {
        self.capacity = Some(positions);
        self
    }

    /// How the KV cache stores values.
    pub fn kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    /// Folds the RMSNorms into the projections in decode steps, or not.
    pub fn norm_in_projection(mut self, fold: bool) -> Self {
        self.norm_in_projection = Some(fold);
        self
    }
}

/// A decoding session: KV cache, activations and bound dispatches, all made
/// once at creation. One token runs the matrix-vector kernels; a prompt runs
/// in passes of up to [`Session::prefill_tokens`] tokens with the
/// matrix-matrix ones.
#[derive(Debug)]
pub struct Session {
    pub(crate) model: GpuModel,
    pub(crate) cache: KvCache,
    /// Most tokens per pass.
    pub(crate) batch: usize,
    pub(crate) activations: Activations,
    pub(crate) dispatches: Dispatches,
    /// (vocab_size,) host copy of the last logits read back.
    logits_host: Vec<f32>,
    pub(crate) submissions: u64,
}

impl Session {
    /// A session whose KV cache holds `capacity` positions (the model's
    /// context length when `None`; a smaller one saves memory).
    pub fn new(model: &GpuModel, capacity: Option<usize>) -> Result<Self> {
        let options = SessionOptions {
            capacity,
            ..Default::default()
        };
        Self::with_options(model, options)
    }

    /// A session with the given cache capacity and value type.
    pub fn with_options(model: &GpuModel, options: SessionOptions) -> Result<Self> {
        let c = model.config();
        let capacity = options.capacity.unwrap_or(c.seq_len);
        // Checked outside the scope: a bad capacity is the caller's error, not the GPU's.
        kv_cache::check_capacity(c, capacity)?;
        let scores_per_token = (c.n_heads * capacity) as u64 * F32;
        let batch = (SCORES_BUDGET / scores_per_token).clamp(1, PREFILL_TOKENS as u64) as usize;
        let batch = batch.min(capacity);
        let fold = options
            .norm_in_projection
            .unwrap_or(c.dim < NORM_IN_PROJECTION_BELOW);
        let gpu = model.gpu();
        gpu.scoped("creating a session", || {
            let cache = KvCache::new(&gpu.device, c, capacity, options.kv_dtype)?;
            let activations = Activations::new(model, batch, capacity);
            let dispatches = Dispatches::bind(model, &activations, &cache, batch, fold);
            Ok(Self {
                model: model.clone(),
                cache,
                batch,
                activations,
                dispatches,
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
        self.cache.len()
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
    /// [`ATTENTION_SPLIT`](crate::ATTENTION_SPLIT) positions, the split-K
    /// merge; two more where the norms run on their own, see
    /// [`SessionOptions::norm_in_projection`]), the final norm + classifier
    /// and the argmax (one more); more where a weight is split into
    /// row-chunks or a stacked one mixes storage types.
    pub fn dispatches_per_token(&self) -> usize {
        let mut n = 0;
        let pos = self.cache.len();
        self.dispatches
            .each(pos, 1, Readback::Argmax, |_, d| n += d.launches(1));
        n
    }

    /// Decodes `token` at the next position and returns the logits (vocab_size,).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        let positions = self.reserve(&[token])?;
        self.pass(positions, &[token], Readback::Logits)?;
        self.read_logits()
    }

    /// Decodes `token` and returns the argmax of the logits, computed on the
    /// GPU (4 bytes read back).
    pub fn forward_greedy(&mut self, token: u32) -> Result<u32> {
        let positions = self.reserve(&[token])?;
        self.pass(positions, &[token], Readback::Argmax)?;
        let mut next = [0u32; 2];
        let readback = &self.activations.next_readback;
        self.model
            .gpu()
            .map_read(readback, bytemuck::cast_slice_mut(&mut next))?;
        Ok(next[0])
    }

    /// Runs `tokens` at the next positions without reading anything back
    /// (prompt tokens: only their K/V are needed), in prefill passes of up
    /// to [`Session::prefill_tokens`]; a single token runs as a decode step.
    /// Does not wait for the GPU.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let positions = self.reserve(tokens)?;
        for (i, pass) in tokens.chunks(self.batch).enumerate() {
            let pos = positions.start + i * self.batch;
            self.pass(pos..pos + pass.len(), pass, Readback::Nothing)?;
        }
        Ok(())
    }

    /// Runs `tokens` (a prompt) at the next positions in prefill passes and
    /// returns the logits after the last one (vocab_size,). Equal, within
    /// float rounding, to calling [`Session::forward`] on each token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let positions = self.reserve(tokens)?;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        let last = (tokens.len() - 1) / self.batch * self.batch;
        self.feed(&tokens[..last])?;
        let pos = positions.start + last;
        self.pass(pos..positions.end, &tokens[last..], Readback::Logits)?;
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

    /// Copies one layer's K and V cache rows `0..len` back to the host,
    /// each (len, kv_dim). For inspection and tests.
    pub fn read_cache(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.cache.read(self.model.gpu(), layer)
    }

    /// Checks that `tokens` can run next (see [`kv_cache::Positions::reserve`]).
    pub(crate) fn reserve(&self, tokens: &[u32]) -> Result<Range<usize>> {
        let vocab_size = self.model.config().vocab_size;
        self.cache.positions.reserve(tokens, vocab_size)
    }

    /// Writes the step uniform and the tokens of a pass at `pos`.
    pub(crate) fn write_step(&self, pos: usize, tokens: &[u32]) {
        let queue = &self.model.gpu().queue;
        let step = Step::new(pos, tokens.len());
        queue.write_buffer(&self.activations.step, 0, bytemuck::bytes_of(&step));
        queue.write_buffer(&self.activations.tokens, 0, bytemuck::cast_slice(tokens));
    }

    /// Reads the logits copied back by the last pass.
    fn read_logits(&mut self) -> Result<&[f32]> {
        let mut bytes = std::mem::take(&mut self.logits_host);
        let readback = &self.activations.logits_readback;
        let r = self
            .model
            .gpu()
            .map_read(readback, bytemuck::cast_slice_mut(&mut bytes));
        self.logits_host = bytes;
        r?;
        Ok(&self.logits_host)
    }

    /// One pass over `tokens` (reserved, 1..=batch of them) at `positions`:
    /// every dispatch in one encoder and one submit, then the positions are
    /// committed. On error nothing changes.
    fn pass(&mut self, positions: Range<usize>, tokens: &[u32], readback: Readback) -> Result<()> {
        let n = tokens.len();
        debug_assert!((1..=self.batch).contains(&n) && positions.len() == n);
        let a = &self.activations;
        let vocab_bytes = self.model.config().vocab_size as u64 * F32;
        let gpu = self.model.gpu();
        gpu.scoped("decoding", || {
            self.write_step(positions.start, tokens);
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
                self.dispatches.each(positions.start, n, readback, |_, d| {
                    d.record(&mut pass, n as u32)
                });
            }
            match readback {
                Readback::Nothing => {}
                Readback::Argmax => {
                    encoder.copy_buffer_to_buffer(&a.next, 0, &a.next_readback, 0, F32)
                }
                Readback::Logits => {
                    encoder.copy_buffer_to_buffer(&a.logits, 0, &a.logits_readback, 0, vocab_bytes)
                }
            }
            gpu.queue.submit([encoder.finish()]);
        })?;
        self.submissions += 1;
        self.cache.positions.commit(positions);
        Ok(())
    }
}
