//! A decoding [`Session`] on the GPU: one sequence's KV cache, the
//! activations of a pass and every dispatch bound to them, all made once.
//! Each pass writes its position and tokens into small buffers, records
//! every dispatch into one encoder and submits once.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu_model::GpuModel;
use crate::kv_cache::{self, KvCache, KvDtype};
use crate::model::Config;
use crate::ops::Step;
use crate::pass::{Activations, AllLogits, Dispatches, Readback, PASSES_PER_SUBMIT};
use crate::readback::{Kind, Output, Pending, ReadbackBuffer};
use crate::sampler::Sampler;

/// Bytes per f32.
const F32: u64 = 4;

/// Bytes of one [`Step`] slot.
const STEP_BYTES: u64 = std::mem::size_of::<Step>() as u64;

/// Most tokens one prefill pass runs (longer prompts take several passes).
pub const PREFILL_TOKENS: usize = 64;

/// Largest attention scratch a session allocates for prefill: passes are
/// shortened so that (tokens, n_heads, capacity) f32 scores fit.
const SCORES_BUDGET: u64 = 16 << 20;

/// Session settings: `SessionOptions::default().capacity(256).kv_dtype(KvDtype::F16)`.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct SessionOptions {
    /// KV cache capacity in positions; the model's context length when `None`.
    pub capacity: Option<usize>,
    /// How the KV cache stores values.
    pub kv_dtype: KvDtype,
    /// A byte budget for the KV cache: the capacity is as many positions as
    /// fit (at most `capacity`, or the context length).
    pub kv_budget: Option<u64>,
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

    /// A KV cache of at most `bytes`: as many positions as fit.
    pub fn kv_budget(mut self, bytes: u64) -> Self {
        self.kv_budget = Some(bytes);
        self
    }

    /// The KV cache capacity these options give a model of `config`: the
    /// capacity asked for (else the context length), cut to what the byte
    /// budget holds. A budget below one position is
    /// [`Error::KvBudgetTooSmall`].
    pub fn capacity_for(&self, config: &Config) -> Result<usize> {
        let mut capacity = self.capacity.unwrap_or(config.seq_len);
        if let Some(budget) = self.kv_budget {
            let per_position = self.kv_dtype.bytes_per_position(config);
            let fit = budget / per_position;
            if fit == 0 {
                return Err(Error::KvBudgetTooSmall {
                    budget,
                    per_position,
                });
            }
            capacity = capacity.min(fit.min(usize::MAX as u64) as usize);
        }
        kv_cache::check_capacity(config, capacity)?;
        Ok(capacity)
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
    /// (max(vocab_size, PASSES_PER_SUBMIT),) MAP_READ logits or tokens read back.
    readback: ReadbackBuffer,
    /// The next pass's slot in the activations' step and token slots.
    slot: usize,
    /// (vocab_size,) host copy of the last logits read back.
    logits_host: Vec<f32>,
    /// Every token's logits ([`Session::prefill_all`]), bound on first use.
    all_logits: Option<AllLogits>,
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
        // Checked outside the scope: a bad capacity is the caller's error, not the GPU's.
        let capacity = options.capacity_for(c)?;
        model.gpu().check_alive()?;
        let scores_per_token = (c.n_heads * capacity) as u64 * F32;
        let batch = (SCORES_BUDGET / scores_per_token).clamp(1, PREFILL_TOKENS as u64) as usize;
        let batch = batch.min(capacity);
        let gpu = model.gpu();
        // What the allocations below ask for, should the device refuse them.
        let (whole, window) = KvCache::bytes_for(c, capacity, batch, options.kv_dtype);
        let kv_bytes = whole + window;
        let refused = |e| match e {
            Error::OutOfMemory { limit: None, .. } => Error::OutOfMemory {
                what: "a session's KV cache and activations".into(),
                requested: kv_bytes,
                limit: None,
            },
            e => e,
        };
        gpu.scoped("creating a session", || {
            model.rope_for(capacity)?;
            let cache = KvCache::new(&gpu.device, c, capacity, options.kv_dtype, batch)?;
            let activations = Activations::new(model, batch, capacity, 1);
            let dispatches = Dispatches::bind(model, &activations, &cache, capacity, false, batch);
            let values = c.vocab_size.max(PASSES_PER_SUBMIT) as u64;
            Ok(Self {
                model: model.clone(),
                cache,
                batch,
                activations,
                dispatches,
                readback: ReadbackBuffer::new(&gpu.device, values * F32),
                slot: 0,
                logits_host: vec![0.0; c.vocab_size],
                all_logits: None,
                submissions: 0,
            })
        })
        .map_err(refused)?
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

    /// Kernel launches recorded for the next greedy token: the embedding, 5
    /// per layer (norm + QKV projection + RoPE + append, attention, Wo +
    /// residual, norm + gate/up/SiLU projection, W2 + residual; one more
    /// for a quantized cache, RoPE + append on their own; one more past
    /// [`ATTENTION_SPLIT`](crate::ATTENTION_SPLIT) positions, the split-K
    /// merge), the final norm + classifier (the norm in the classifier for a
    /// small vocabulary) and the argmax; more where a
    /// weight is split into row-chunks or a stacked one mixes storage types.
    pub fn dispatches_per_token(&self) -> usize {
        let mut n = 0;
        let pos = self.cache.len();
        self.dispatches
            .each(pos + 1, 1, Readback::Argmax, |_, d| n += d.launches(1));
        n
    }

    /// Records passes over `tokens` at the next positions into `encoder`
    /// (prompt tokens: only their K/V are needed) and submits nothing. The
    /// positions count as decoded from here on: submit the encoder before
    /// recording more, at most [`PASSES_PER_SUBMIT`] passes per submit.
    pub fn encode(&mut self, encoder: &mut wgpu::CommandEncoder, tokens: &[u32]) -> Result<()> {
        let positions = self.reserve(tokens)?;
        self.check_passes(tokens.len().div_ceil(self.batch), tokens.len())?;
        let gpu = self.model.gpu().clone();
        gpu.scoped("recording a pass", || {
            self.record_passes(encoder, positions, tokens, Readback::Nothing)
        })
    }

    /// [`Session::encode`], reading back the logits of the last token:
    /// [`Output::Logits`] once the [`Pending`] is polled after the submit.
    pub fn encode_logits(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &[u32],
    ) -> Result<Pending> {
        let positions = self.reserve(tokens)?;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        self.check_passes(tokens.len().div_ceil(self.batch), tokens.len())?;
        self.readback.claim(&self.model.gpu().device)?;
        let gpu = self.model.gpu().clone();
        gpu.scoped("recording a pass", || {
            self.record_passes(encoder, positions, tokens, Readback::Logits)
        })?;
        let vocab = self.model.config().vocab_size;
        Ok(Pending::new(
            &self.model.gpu().device,
            &self.readback,
            Kind::Logits(vocab),
        ))
    }

    /// Records `steps` greedy decode steps from `token` into `encoder`, each
    /// step's argmax the next step's input on the GPU, and one readback of
    /// all `steps` tokens ([`Output::Tokens`]): one submit and one readback
    /// per block instead of per token. Stops nowhere: see
    /// [`Session::greedy_block`] for end-of-sequence tokens.
    pub fn encode_greedy(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        token: u32,
        steps: usize,
    ) -> Result<Pending> {
        if steps == 0 {
            return Err(Error::EmptyInput);
        }
        // The block's inputs are `token` and its first steps - 1 outputs,
        // all in the vocabulary.
        let positions = self.reserve(&[token])?;
        let positions = positions.start..positions.start + steps;
        if positions.end > self.cache.capacity() {
            self.reserve(&vec![token; steps])?;
        }
        self.check_passes(steps, steps)?;
        self.readback.claim(&self.model.gpu().device)?;
        let first = [token];
        let gpu = self.model.gpu().clone();
        gpu.scoped("recording a greedy block", || {
            for (i, pos) in positions.clone().enumerate() {
                let input = (i == 0).then_some(&first[..]);
                self.stage(encoder, pos, 1, input);
                self.record(encoder, pos, 1, Readback::Argmax);
                encoder.copy_buffer_to_buffer(
                    &self.activations.next,
                    0,
                    &self.readback.buffer,
                    i as u64 * F32,
                    F32,
                );
            }
            self.cache.commit(positions);
        })?;
        let kind = Kind::Tokens(steps);
        Ok(Pending::new(&self.model.gpu().device, &self.readback, kind))
    }

    /// Decodes `token` at the next position and returns the logits (vocab_size,).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        self.logits_of(&[token], self.len())
    }

    /// Decodes `token` and returns the argmax of the logits, computed on the
    /// GPU (4 bytes read back).
    pub fn forward_greedy(&mut self, token: u32) -> Result<u32> {
        let mut encoder = self.encoder();
        let pending = self.encode_greedy(&mut encoder, token, 1)?;
        self.submit(encoder)?;
        let mut next = [0u32];
        pending.wait_into(bytemuck::cast_slice_mut(&mut next))?;
        self.check_tokens(&next, self.len() - 1)?;
        Ok(next[0])
    }

    /// `NonFiniteLogits` if an argmax of `tokens` (after positions from
    /// `start`) met a NaN or an infinity: the cache goes back to `start`.
    fn check_tokens(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        match tokens.iter().position(|&t| t == u32::MAX) {
            None => Ok(()),
            Some(i) => {
                let _ = self.cache.truncate(start);
                Err(Error::NonFiniteLogits {
                    position: start + i,
                })
            }
        }
    }

    /// Decodes up to `steps` greedy tokens from `token` in one submit with
    /// one readback ([`Session::encode_greedy`]), and returns them up to and
    /// including the first one in `stop` (an end-of-sequence token): the
    /// steps after it are discarded, and the cache ends where it was decoded.
    pub fn greedy_block(&mut self, token: u32, steps: usize, stop: &[u32]) -> Result<Vec<u32>> {
        let start = self.len();
        let mut encoder = self.encoder();
        let pending = self.encode_greedy(&mut encoder, token, steps)?;
        self.submit(encoder)?;
        let Output::Tokens(mut tokens) = pending.wait()? else {
            unreachable!("a greedy block reads back tokens")
        };
        self.check_tokens(&tokens, start)?;
        if let Some(end) = tokens.iter().position(|t| stop.contains(t)) {
            tokens.truncate(end + 1);
            self.cache.truncate(start + end + 1)?;
        }
        Ok(tokens)
    }

    /// Runs `tokens` at the next positions without reading anything back
    /// (prompt tokens: only their K/V are needed), in prefill passes of up
    /// to [`Session::prefill_tokens`], one submit each; a single token runs
    /// as a decode step. Does not wait for the GPU.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.reserve(tokens)?;
        for pass in tokens.chunks(self.batch) {
            let mut encoder = self.encoder();
            self.encode(&mut encoder, pass)?;
            self.submit(encoder)?;
        }
        Ok(())
    }

    /// Runs `tokens` (a prompt) at the next positions in prefill passes and
    /// returns the logits after the last one (vocab_size,). Equal, within
    /// float rounding, to calling [`Session::forward`] on each token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.reserve(tokens)?;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        let (start, last) = (self.len(), (tokens.len() - 1) / self.batch * self.batch);
        self.feed(&tokens[..last])?;
        self.logits_of(&tokens[last..], start)
    }

    /// Runs `tokens` at the next positions in prefill passes, like
    /// [`Session::prefill`], and returns the logits after every one of them
    /// (tokens.len(), vocab_size): to score a text (perplexity) or check
    /// several tokens at once. One submit and one readback per pass; its
    /// (prefill_tokens, vocab_size) logits and readback buffers are
    /// allocated on first use.
    pub fn prefill_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.reserve(tokens)?;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        let gpu = self.model.gpu().clone();
        if self.all_logits.is_none() {
            let all = gpu.scoped("binding all logits", || {
                AllLogits::bind(&self.model, &self.activations, self.batch)
            })?;
            self.all_logits = Some(all);
        }
        let vocab = self.model.config().vocab_size;
        let mut out = vec![0.0f32; tokens.len() * vocab];
        for (pass, logits) in tokens
            .chunks(self.batch)
            .zip(out.chunks_mut(self.batch * vocab))
        {
            let positions = self.reserve(pass)?;
            let mut encoder = self.encoder();
            let all = self.all_logits.as_ref().expect("bound above");
            all.readback.claim(&gpu.device)?;
            gpu.scoped("recording a pass", || {
                let pos = positions.start;
                self.stage(&mut encoder, pos, pass.len(), Some(pass));
                self.record(&mut encoder, pos, pass.len(), Readback::Nothing);
                let all = self.all_logits.as_ref().expect("bound above");
                all.record(&mut encoder, pass.len());
                let bytes = logits.len() as u64 * F32;
                encoder.copy_buffer_to_buffer(&all.logits, 0, &all.readback.buffer, 0, bytes);
            })?;
            self.submit(encoder)?;
            self.cache.commit(positions);
            let all = self.all_logits.as_ref().expect("bound above");
            let kind = Kind::Logits(logits.len());
            let pending = Pending::new(&gpu.device, &all.readback, kind);
            pending.wait_into(bytemuck::cast_slice_mut(logits))?;
        }
        let start = self.len() - tokens.len();
        if let Some(bad) = out.iter().position(|l| !l.is_finite()) {
            let _ = self.cache.truncate(start);
            return Err(Error::NonFiniteLogits {
                position: start + bad / vocab,
            });
        }
        Ok(out)
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

    /// One pass over `tokens` (1..=batch of them) in its own submit,
    /// waiting for the logits of its last token.
    fn logits_of(&mut self, tokens: &[u32], start: usize) -> Result<&[f32]> {
        let mut encoder = self.encoder();
        let pending = self.encode_logits(&mut encoder, tokens)?;
        self.submit(encoder)?;
        pending.wait_into(bytemuck::cast_slice_mut(&mut self.logits_host))?;
        let last = self.len() - 1;
        if let Err(e) = crate::sampler::check_finite(&self.logits_host, last) {
            let _ = self.cache.truncate(start);
            return Err(e);
        }
        Ok(&self.logits_host)
    }

    /// A command encoder for the blocking calls.
    fn encoder(&self) -> wgpu::CommandEncoder {
        let device = &self.model.gpu().device;
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kvgpu pass"),
        })
    }

    /// Submits a blocking call's encoder, inside an error scope.
    fn submit(&mut self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let gpu = self.model.gpu();
        gpu.scoped("decoding", || gpu.queue.submit([encoder.finish()]))?;
        self.submissions += 1;
        Ok(())
    }

    /// Refuses more passes than one submit's slots hold.
    fn check_passes(&self, passes: usize, tokens: usize) -> Result<()> {
        if passes > PASSES_PER_SUBMIT {
            return Err(Error::PassTooLong {
                tokens,
                max: PASSES_PER_SUBMIT * self.batch,
            });
        }
        Ok(())
    }

    /// Records the passes over `tokens` (reserved) at `positions`, `readback`
    /// after the last, and commits the positions.
    fn record_passes(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        positions: Range<usize>,
        tokens: &[u32],
        readback: Readback,
    ) {
        let count = tokens.len().div_ceil(self.batch);
        for (i, pass) in tokens.chunks(self.batch).enumerate() {
            let pos = positions.start + i * self.batch;
            let read = if i + 1 == count {
                readback
            } else {
                Readback::Nothing
            };
            self.stage(encoder, pos, pass.len(), Some(pass));
            self.record(encoder, pos, pass.len(), read);
            let a = &self.activations;
            let target = &self.readback.buffer;
            match read {
                Readback::Nothing => {}
                Readback::Argmax => encoder.copy_buffer_to_buffer(&a.next, 0, target, 0, F32),
                Readback::Logits => {
                    let bytes = self.model.config().vocab_size as u64 * F32;
                    encoder.copy_buffer_to_buffer(&a.logits, 0, target, 0, bytes)
                }
            }
        }
        self.cache.commit(positions);
    }

    /// Stages a pass of `n` tokens at `pos`: its [`Step`] and `tokens` (or,
    /// for `None`, the last pass's argmax) go into this pass's slots, which
    /// are copied into place when the pass starts, so passes recorded into
    /// one encoder each see their own.
    pub(crate) fn stage(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pos: usize,
        n: usize,
        tokens: Option<&[u32]>,
    ) {
        let a = &self.activations;
        let queue = &self.model.gpu().queue;
        let slot = self.slot as u64;
        self.slot = (self.slot + 1) % PASSES_PER_SUBMIT;
        let step_at = slot * STEP_BYTES;
        queue.write_buffer(
            &a.step_slots,
            step_at,
            bytemuck::bytes_of(&Step::new(pos, n)),
        );
        encoder.copy_buffer_to_buffer(&a.step_slots, step_at, &a.step, 0, STEP_BYTES);
        match tokens {
            Some(tokens) => {
                let at = slot * self.batch as u64 * F32;
                queue.write_buffer(&a.token_slots, at, bytemuck::cast_slice(tokens));
                let bytes = n as u64 * F32;
                encoder.copy_buffer_to_buffer(&a.token_slots, at, &a.tokens, 0, bytes);
            }
            None => encoder.copy_buffer_to_buffer(&a.next, 0, &a.tokens, 0, F32),
        }
    }

    /// Records every dispatch of one staged pass of `n` tokens at `pos` in
    /// one compute pass.
    fn record(&self, encoder: &mut wgpu::CommandEncoder, pos: usize, n: usize, read: Readback) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("kvgpu forward"),
            timestamp_writes: None,
        });
        self.dispatches.each(pos + n, n, read, |_, d| {
            d.record(&mut pass, n as u32, (pos + n) as u32)
        });
    }
}
