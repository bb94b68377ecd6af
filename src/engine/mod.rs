//! Many sequences over one model and one paged KV pool, decoded together: the [`Engine`].
//!
//! Per layer, the pool's K and V are pages of [`EngineOptions::page_size`]
//! positions ([`PagePool`](crate::pool) keeps the books). A sequence is its
//! tokens and a page table; its memory is the pages it holds, not the
//! model's context. One [`Engine::step`] is one pass over every sequence
//! with tokens to run, at most [`EngineOptions::pass_tokens`] of them:
//! decode steps first (one token each), then prompt chunks. Projections run
//! as matrix-matrix products over the pass's tokens, so the weights are read
//! once per step for the whole batch; RoPE, append and attention run per
//! token at its own position through its own sequence's page table
//! (shaders/prelude.wgsl).
//!
//! Pages are shared: [`Engine::fork`] gives a new sequence every page of its
//! parent, and a full page is remembered by a hash of the tokens up to its
//! end, so [`Engine::add`] takes the pages of a prompt prefix the pool
//! already holds instead of running it again. Writing into a page that
//! another sequence shares copies it first (copy-on-write), once per writer;
//! full pages stay shared.
//!
//! A model's sliding-window layers keep their pages in a pool of their own:
//! a sequence takes one as a pass is about to write it and gives it back
//! once its window has slid past, so it holds a few pages of those layers
//! however long it grows. A step that finds no window page for a
//! sequence's next tokens leaves them to a later step.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu_model::GpuModel;
use crate::kv_cache::KvCache;
use crate::ops::Step;
use crate::pass::{Activations, AllLogits, Dispatches, Readback};
use crate::pool::{page_hash, PagePool, WindowPool};
use crate::readback::{Kind, Pending, ReadbackBuffer};

mod options;
mod report;
pub use options::EngineOptions;
pub use report::{EngineStats, PoolMemory, SequenceMemory};

/// Bytes per f32.
const F32: u64 = 4;

/// Bytes of one [`Step`].
const STEP_BYTES: u64 = std::mem::size_of::<Step>() as u64;

/// A sequence of an [`Engine`]. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence {}", self.0)
    }
}

/// One sequence: its tokens and page table.
#[derive(Clone, Debug)]
struct Sequence {
    /// Every token appended; `tokens[..computed]` have their K/V in the pool.
    tokens: Vec<u32>,
    computed: usize,
    /// Page i holds positions `i x page_size .. (i + 1) x page_size`.
    pages: Vec<u32>,
    /// The same positions' pages of the sliding-window layers, taken as a
    /// pass is about to write them, `pool::RELEASED` once no window reads them.
    window_pages: Vec<u32>,
    /// Prefix hashes of the full computed pages, `pages[..hashes.len()]`.
    hashes: Vec<u64>,
    /// Its row of the last step's logits, when that step ran its last token.
    logits_row: Option<usize>,
}

/// Many sequences over one [`GpuModel`] and one paged KV pool, decoded a
/// pass per step: projections as matrix-matrix products over the pass's
/// tokens, attention per token through its sequence's page table; pages
/// shared by forks and by prompts with a common prefix, copied on write.
///
/// A loop of [`Engine::add`] (a prompt's tokens), [`Engine::step`] (the
/// sequences whose logits are ready), [`Engine::logits`], a sampler and
/// [`Engine::push`]: `examples/sequences.rs` runs three prompts joining at
/// different steps and a fork, and prints the pool's memory.
#[derive(Debug)]
pub struct Engine {
    model: GpuModel,
    /// Per layer, K and V of (pages x page_size, kv_dim): the pool; a
    /// sliding-window layer's of (window pages x page_size, kv_dim).
    cache: KvCache,
    pool: PagePool,
    /// The sliding-window layers' pages, if the model has such layers.
    window: Option<WindowPool>,
    page_size: usize,
    context: usize,
    /// Most tokens per pass.
    batch: usize,
    activations: Activations,
    dispatches: Dispatches,
    /// Final norm and classifier over the rows whose logits a pass reads.
    logits: AllLogits,
    /// (2 x n_layers, page_size, kv_dim) one page of every layer's K and V,
    /// as the pool stores them: copy-on-write goes through it (wgpu copies
    /// nothing within one buffer).
    page_scratch: wgpu::Buffer,
    /// (batch, vocab_size) MAP_READ logits read back.
    readback: ReadbackBuffer,
    /// (batch, vocab_size) the last step's logits.
    logits_host: Vec<f32>,
    sequences: BTreeMap<SeqId, Sequence>,
    next_id: u64,
    /// (2 n + tables,) the next pass's positions and page tables.
    paging: Vec<u32>,
    /// (2 n + tables,) the same positions and the window layers' tables.
    window_paging: Vec<u32>,
    /// (n,) the next pass's tokens.
    tokens: Vec<u32>,
    stats: EngineStats,
}

impl Engine {
    /// An engine over `model` with an empty pool, allocated once.
    pub fn new(model: &GpuModel, options: EngineOptions) -> Result<Self> {
        let c = model.config();
        let context = options.context.unwrap_or(c.seq_len);
        crate::kv_cache::check_capacity(c, context)?;
        let invalid = |field, value: usize, reason: &str| Error::InvalidConfig {
            field,
            value: value as i64,
            reason: reason.into(),
        };
        if options.page_size == 0 || options.page_size > context {
            let why = "a page holds between 1 position and the context";
            return Err(invalid("page_size", options.page_size, why));
        }
        if options.pass_tokens == 0 {
            return Err(invalid("pass_tokens", 0, "a pass runs at least one token"));
        }
        let page_size = options.page_size;
        let pages_per_sequence = context.div_ceil(page_size);
        let pages = options.pages.unwrap_or(4 * pages_per_sequence);
        if pages == 0 {
            return Err(invalid("pages", 0, "the pool needs at least one page"));
        }
        let batch = options.pass_tokens;
        let window_pages = options.window_pool(c, pages, pages_per_sequence)?;
        let row_bytes = options.kv_dtype.row_bytes(c.kv_dim());
        let pool_bytes = (pages.max(window_pages.map_or(0, |(_, n)| n)) as u64)
            .checked_mul(page_size as u64)
            .and_then(|rows| rows.checked_mul(row_bytes));
        if pool_bytes.is_none() {
            let why = "a layer's pages would be more bytes than can be counted";
            return Err(invalid("pages", pages, why));
        }
        model.gpu().check_alive()?;
        let gpu = model.gpu();
        gpu.scoped("creating an engine", || {
            let rows = pages * page_size;
            let layer_rows: Vec<usize> = (0..c.n_layers)
                .map(|l| match (c.layer_window(l), window_pages) {
                    (Some(_), Some((_, n))) => n * page_size,
                    _ => rows,
                })
                .collect();
            let dtype = options.kv_dtype;
            model.rope_for(context)?;
            let cache = KvCache::allocate(&gpu.device, c, rows, &layer_rows, dtype)?;
            let paging_words = 2 * batch + batch * pages_per_sequence;
            let activations = Activations::new(model, batch, context, paging_words);
            let dispatches = Dispatches::bind(model, &activations, &cache, context, true, batch);
            let logits = AllLogits::bind(model, &activations, batch);
            let page_scratch = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("page scratch"),
                size: 2 * c.n_layers as u64 * page_size as u64 * row_bytes,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let values = (batch * c.vocab_size) as u64;
            Ok(Self {
                model: model.clone(),
                cache,
                pool: PagePool::new(pages, page_size),
                window: window_pages.map(|(w, n)| WindowPool::new(n, page_size, w)),
                page_size,
                context,
                batch,
                activations,
                dispatches,
                logits,
                page_scratch,
                readback: ReadbackBuffer::new(&gpu.device, values * F32),
                logits_host: vec![0.0; values as usize],
                sequences: BTreeMap::new(),
                next_id: 0,
                paging: Vec::with_capacity(paging_words),
                window_paging: Vec::with_capacity(paging_words),
                tokens: Vec::with_capacity(batch),
                stats: EngineStats::default(),
            })
        })?
    }

    /// The model this engine decodes.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// Most positions one sequence holds.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Most tokens one pass runs.
    pub fn pass_tokens(&self) -> usize {
        self.batch
    }

    /// The live sequences, oldest first.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.sequences.keys().copied()
    }

    /// What the engine has done.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            page_copies: self.pool.copied() + self.window.as_ref().map_or(0, |w| w.pages.copied()),
            ..self.stats
        }
    }

    /// A new sequence holding `prompt`, to be run by the next steps. Its
    /// longest prefix of whole pages that the pool already holds (up to the
    /// page before the prompt's last token, whose logits are needed) is
    /// taken instead of run: [`Engine::pending`] tells how many tokens are
    /// left to run. A pool without room for the rest is
    /// [`Error::PoolExhausted`] and changes nothing.
    pub fn add(&mut self, prompt: &[u32]) -> Result<SeqId> {
        self.check_tokens(prompt, 0)?;
        let p = self.page_size;
        let (mut found, mut hashes) = self
            .pool
            .find_prefix(prompt, prompt.len().saturating_sub(1) / p);
        // A window layer's pages of the prefix's last window must be held too.
        let window_pages = match &self.window {
            Some(w) => {
                let (k, table) = w.find_prefix(&hashes);
                found.truncate(k);
                hashes.truncate(k);
                table
            }
            None => Vec::new(),
        };
        // Cached pages taken back leave the allocatable set.
        let cached = found
            .iter()
            .filter(|&&page| self.pool.refs(page) == 0)
            .count();
        let needed = prompt.len().div_ceil(p) - found.len();
        let available = self.pool.available() - cached;
        if needed > available {
            return Err(Error::PoolExhausted { needed, available });
        }
        for &page in &found {
            self.pool.retain(page);
        }
        if let Some(w) = &mut self.window {
            w.retain(&window_pages);
        }
        let reused = found.len() * p;
        let mut sequence = Sequence {
            tokens: prompt[..reused].to_vec(),
            computed: reused,
            pages: found,
            window_pages,
            hashes,
            logits_row: None,
        };
        self.append(&mut sequence, &prompt[reused..])
            .expect("pages counted above");
        self.stats.reused += reused as u64;
        Ok(self.insert(sequence))
    }

    /// A new sequence equal to `parent`: it shares every page of the parent
    /// (counted once in [`Engine::memory`]) and its tokens not yet run. The
    /// first write of either into a shared page copies that page.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let parent = self.get(parent)?;
        let pending = parent.tokens[parent.computed..].to_vec();
        let computed = parent.computed;
        let held = computed.div_ceil(self.page_size);
        let mut child = Sequence {
            tokens: parent.tokens[..computed].to_vec(),
            computed,
            pages: parent.pages[..held].to_vec(),
            window_pages: parent.window_pages[..held.min(parent.window_pages.len())].to_vec(),
            hashes: parent.hashes.clone(),
            logits_row: parent.logits_row,
        };
        for &page in &child.pages {
            self.pool.retain(page);
        }
        if let Some(w) = &mut self.window {
            w.retain(&child.window_pages);
        }
        if let Err(e) = self.append(&mut child, &pending) {
            self.release(child);
            return Err(e);
        }
        Ok(self.insert(child))
    }

    /// Appends `token` to sequence `id`, to be run by the next step.
    pub fn push(&mut self, id: SeqId, token: u32) -> Result<()> {
        self.extend(id, &[token])
    }

    /// Appends `tokens` to sequence `id`, to be run by the next steps. Too
    /// many for the context, or a token out of the vocabulary, or a pool
    /// without the pages, is an error that changes nothing.
    pub fn extend(&mut self, id: SeqId, tokens: &[u32]) -> Result<()> {
        let mut sequence = self
            .sequences
            .remove(&id)
            .ok_or(Error::UnknownSequence { id: id.0 })?;
        let result = self
            .check_tokens(tokens, sequence.tokens.len())
            .and_then(|()| self.append(&mut sequence, tokens));
        self.sequences.insert(id, sequence);
        result
    }

    /// Keeps sequence `id`'s first `len` tokens and forgets the rest (pages
    /// past them go back to the pool; a later write into a page it shares
    /// copies that page first). A rollback past the positions a window
    /// layer's pages still hold is [`Error::WindowRollback`] and changes
    /// nothing.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let p = self.page_size;
        let sequence = self
            .sequences
            .get_mut(&id)
            .ok_or(Error::UnknownSequence { id: id.0 })?;
        if len > sequence.tokens.len() {
            return Err(Error::TruncateBeyondLength {
                requested: len,
                len: sequence.tokens.len(),
            });
        }
        if let Some(w) = &mut self.window {
            w.truncate(&mut sequence.window_pages, len)?;
        }
        sequence.tokens.truncate(len);
        sequence.computed = sequence.computed.min(len);
        sequence.hashes.truncate(len / p);
        sequence.logits_row = None;
        let dropped = sequence.pages.split_off(len.div_ceil(p));
        for page in dropped {
            self.pool.release(page);
        }
        Ok(())
    }

    /// Ends sequence `id`, its pages back to the pool (full ones stay
    /// remembered for prefix reuse until the pool needs them).
    pub fn remove(&mut self, id: SeqId) -> Result<()> {
        let sequence = self
            .sequences
            .remove(&id)
            .ok_or(Error::UnknownSequence { id: id.0 })?;
        self.release(sequence);
        Ok(())
    }

    /// Releases every page `s` holds.
    fn release(&mut self, mut s: Sequence) {
        for &page in &s.pages {
            self.pool.release(page);
        }
        if let Some(w) = &mut self.window {
            w.release_from(&mut s.window_pages, 0);
        }
    }

    /// Sequence `id`'s tokens (run and pending).
    pub fn tokens(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.get(id)?.tokens)
    }

    /// How many of sequence `id`'s tokens the next steps still have to run.
    pub fn pending(&self, id: SeqId) -> Result<usize> {
        let s = self.get(id)?;
        Ok(s.tokens.len() - s.computed)
    }

    /// The logits after sequence `id`'s last token, (vocab_size,): an
    /// error if the last step did not run that token ([`Error::NoLogits`])
    /// or they hold a NaN or an infinity ([`Error::NonFiniteLogits`], that
    /// sequence's only: the others of the step are not affected).
    pub fn logits(&self, id: SeqId) -> Result<&[f32]> {
        let s = self.get(id)?;
        let row = s.logits_row.ok_or(Error::NoLogits { id: id.0 })?;
        let vocab = self.model.config().vocab_size;
        let logits = &self.logits_host[row * vocab..(row + 1) * vocab];
        crate::sampler::check_finite(logits, s.tokens.len() - 1)?;
        Ok(logits)
    }

    /// Runs one pass over the sequences' pending tokens: every sequence with
    /// one token to run (a decode step), then prompt chunks, up to
    /// [`Engine::pass_tokens`] in all. Returns the sequences whose last
    /// token ran, oldest first; [`Engine::logits`] holds their logits until
    /// the next step. Nothing to run returns no sequence and does nothing.
    pub fn step(&mut self) -> Result<Vec<SeqId>> {
        let plan = self.plan()?;
        for s in self.sequences.values_mut() {
            s.logits_row = None;
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        // Positions, page tables and tokens of the pass.
        let n: usize = plan.iter().map(|(_, r)| r.len()).sum();
        self.paging.clear();
        self.tokens.clear();
        let mut table_at = 2 * n;
        let mut outputs = Vec::new();
        let mut attended = 0;
        for (row_end, (id, range)) in plan.iter().scan(0, |end, e| {
            *end += e.1.len();
            Some((*end, e))
        }) {
            let s = &self.sequences[id];
            for pos in range.clone() {
                self.paging.extend([pos as u32, table_at as u32]);
            }
            self.tokens.extend_from_slice(&s.tokens[range.clone()]);
            table_at += range.end.div_ceil(self.page_size);
            attended = attended.max(range.end);
            if range.end == s.tokens.len() {
                outputs.push((*id, row_end - 1));
            }
        }
        self.window_paging.clear();
        if self.window.is_some() {
            self.window_paging.extend_from_slice(&self.paging);
        }
        for (id, range) in &plan {
            let (s, held) = (&self.sequences[id], range.end.div_ceil(self.page_size));
            self.paging.extend_from_slice(&s.pages[..held]);
            if self.window.is_some() {
                self.window_paging
                    .extend_from_slice(&s.window_pages[..held]);
            }
        }
        let gpu = self.model.gpu().clone();
        let m = outputs.len();
        let vocab = self.model.config().vocab_size;
        if m > 0 {
            self.readback.claim(&gpu.device)?;
        }
        let copies = [
            self.pool.take_copies(),
            self.window
                .as_mut()
                .map_or(Vec::new(), |w| w.pages.take_copies()),
        ];
        let encoder = gpu.scoped("recording an engine pass", || {
            self.record(&copies, n, attended, &outputs)
        })?;
        gpu.scoped("decoding", || gpu.queue.submit([encoder.finish()]))?;
        self.stats.passes += 1;
        self.stats.tokens += n as u64;
        if m > 0 {
            let pending = Pending::new(&gpu.device, &self.readback, Kind::Logits(m * vocab));
            let out = &mut self.logits_host[..m * vocab];
            pending.wait_into(bytemuck::cast_slice_mut(out))?;
        }
        // The pass's positions are computed; pages it filled are remembered,
        // and window pages no window reads again go back to the pool.
        let p = self.page_size;
        for (id, range) in &plan {
            let s = self.sequences.get_mut(id).expect("planned");
            s.computed = range.end;
            while (s.hashes.len() + 1) * p <= s.computed {
                let i = s.hashes.len();
                let hash = page_hash(s.hashes.last().copied(), &s.tokens[i * p..(i + 1) * p]);
                s.hashes.push(hash);
                self.pool.remember(s.pages[i], hash);
                if let Some(w) = &mut self.window {
                    w.pages.remember(s.window_pages[i], hash);
                }
            }
            if let Some(w) = &mut self.window {
                w.release_behind(&mut s.window_pages, s.computed);
            }
        }
        let mut ready = Vec::with_capacity(m);
        for (row, (id, _)) in outputs.iter().enumerate() {
            self.sequences.get_mut(id).expect("planned").logits_row = Some(row);
            ready.push(*id);
        }
        Ok(ready)
    }

    /// Which tokens the next pass runs: (sequence, positions) with the
    /// decode steps first, then prompt chunks, within the pass's tokens and
    /// the window pages they find (their pages taken now). Tokens to run
    /// with no window page for any is [`Error::PoolExhausted`].
    fn plan(&mut self) -> Result<Vec<(SeqId, Range<usize>)>> {
        let mut plan = self.budgeted();
        let Some(w) = &mut self.window else {
            return Ok(plan);
        };
        for (id, range) in &mut plan {
            let s = self.sequences.get_mut(id).expect("planned");
            range.end = w.write(&mut s.window_pages, range.start, range.end);
        }
        let wanted = !plan.is_empty();
        plan.retain(|(_, range)| !range.is_empty());
        if wanted && plan.is_empty() {
            let available = w.pages.available();
            return Err(Error::PoolExhausted {
                needed: 1,
                available,
            });
        }
        Ok(plan)
    }

    /// The decode steps first, then prompt chunks, within the pass's tokens.
    fn budgeted(&self) -> Vec<(SeqId, Range<usize>)> {
        let mut budget = self.batch;
        let mut plan = Vec::new();
        for decode in [true, false] {
            for (&id, s) in &self.sequences {
                let pending = s.tokens.len() - s.computed;
                if budget == 0 || pending == 0 || (pending == 1) != decode {
                    continue;
                }
                let take = pending.min(budget);
                budget -= take;
                plan.push((id, s.computed..s.computed + take));
            }
        }
        plan
    }

    /// Records the page `copies` (from, to), the pass of `n` tokens
    /// (staged in `self.paging` and `self.tokens`), then the logits of
    /// `outputs` (sequence, row of the pass) into the readback buffer.
    fn record(
        &self,
        copies: &[Vec<(u32, u32)>; 2],
        n: usize,
        attended: usize,
        outputs: &[(SeqId, usize)],
    ) -> wgpu::CommandEncoder {
        let gpu = self.model.gpu();
        let a = &self.activations;
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kvgpu engine pass"),
            });
        // Copy-on-write: each page through the scratch, the K and V of every
        // whole-context layer (copies[0]) or every window layer (copies[1]).
        let c = self.model.config();
        let page = self.page_size as u64 * self.cache.dtype().row_bytes(c.kv_dim());
        let owed = copies.iter().zip([false, true]);
        for (&(from, to), windowed) in owed.flat_map(|(c, w)| c.iter().map(move |p| (p, w))) {
            let layers = self.cache.layers.iter();
            let layers = layers.filter(|l| l.window.is_some() == windowed);
            let buffers = layers.flat_map(|l| [&l.k, &l.v]);
            for (i, b) in buffers.clone().enumerate() {
                let at = i as u64 * page;
                encoder.copy_buffer_to_buffer(b, from as u64 * page, &self.page_scratch, at, page);
            }
            for (i, b) in buffers.enumerate() {
                let at = i as u64 * page;
                encoder.copy_buffer_to_buffer(&self.page_scratch, at, b, to as u64 * page, page);
            }
        }
        let queue = &gpu.queue;
        let m = outputs.len();
        queue.write_buffer(&a.tokens, 0, bytemuck::cast_slice(&self.tokens));
        queue.write_buffer(&a.paging, 0, bytemuck::cast_slice(&self.paging));
        if !self.window_paging.is_empty() {
            let paging = bytemuck::cast_slice(&self.window_paging);
            queue.write_buffer(&a.window_paging, 0, paging);
        }
        let steps = [
            Step::paged(n, self.page_size),
            Step::paged(m, self.page_size),
        ];
        queue.write_buffer(&a.step_slots, 0, bytemuck::cast_slice(&steps));
        encoder.copy_buffer_to_buffer(&a.step_slots, 0, &a.step, 0, STEP_BYTES);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("kvgpu engine forward"),
                timestamp_writes: None,
            });
            self.dispatches
                .each(attended, n, Readback::Nothing, |_, d| {
                    d.record(&mut pass, n as u32, attended as u32)
                });
        }
        if m == 0 {
            return encoder;
        }
        // Gather the output rows of the residual stream to its first m rows
        // (through xb: wgpu copies nothing within one buffer), then
        // logits = classifier(rmsnorm(x)) for those m rows.
        let sd = crate::ops::projection::input_stride(self.model.config().dim) as u64 * F32;
        let moved: Vec<_> = outputs
            .iter()
            .enumerate()
            .filter(|(to, (_, from))| to != from)
            .map(|(to, &(_, from))| (from as u64 * sd, to as u64 * sd))
            .collect();
        for &(from, to) in &moved {
            encoder.copy_buffer_to_buffer(&a.x, from, &a.xb, to, sd);
        }
        for &(_, to) in &moved {
            encoder.copy_buffer_to_buffer(&a.xb, to, &a.x, to, sd);
        }
        encoder.copy_buffer_to_buffer(&a.step_slots, STEP_BYTES, &a.step, 0, STEP_BYTES);
        self.logits.record(&mut encoder, m);
        let vocab = self.model.config().vocab_size as u64;
        let bytes = m as u64 * vocab * F32;
        encoder.copy_buffer_to_buffer(&self.logits.logits, 0, &self.readback.buffer, 0, bytes);
        encoder
    }

    /// Checks that `tokens` can follow `len` tokens: each in the vocabulary,
    /// all within the context.
    fn check_tokens(&self, tokens: &[u32], len: usize) -> Result<()> {
        let vocab_size = self.model.config().vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange { token, vocab_size });
        }
        if len + tokens.len() > self.context {
            return Err(match len == self.context {
                true => Error::ContextFull {
                    capacity: self.context,
                },
                false => Error::PromptTooLong {
                    tokens: tokens.len(),
                    capacity: self.context - len,
                },
            });
        }
        Ok(())
    }

    /// Appends `tokens` to `s`, the pages they land in made its own
    /// ([`PagePool::write`]); checked first, changing nothing on an error.
    fn append(&mut self, s: &mut Sequence, tokens: &[u32]) -> Result<()> {
        let (start, end) = (s.tokens.len(), s.tokens.len() + tokens.len());
        self.pool.check_write(&s.pages, start, end)?;
        self.pool
            .write(&mut s.pages, start, end)
            .expect("pages checked");
        s.tokens.extend_from_slice(tokens);
        s.hashes.truncate(start / self.page_size);
        Ok(())
    }

    fn insert(&mut self, sequence: Sequence) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.sequences.insert(id, sequence);
        id
    }

    fn get(&self, id: SeqId) -> Result<&Sequence> {
        self.sequences
            .get(&id)
            .ok_or(Error::UnknownSequence { id: id.0 })
    }
}
