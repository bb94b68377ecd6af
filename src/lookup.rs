//! Exact speculative decoding with prompt lookup ([`Lookup`]): drafts come
//! from the context itself, no second model. When the last tokens occurred
//! before, the tokens that followed them then are guessed to follow again;
//! the current token and up to `draft` guesses run in one batched pass (the
//! prefill kernels, every token's logits read back), the guesses are kept
//! while each is the argmax after the one before, and the cache is rolled
//! back past the first wrong one. A pass of k + 1 tokens costs about what
//! one decode step costs on an adapter where launches dominate, and gives
//! 1 to k + 1 tokens: the greedy text is the plain greedy text (the
//! verifying logits are the same model's, summed in the matrix-matrix
//! kernels' order).
//!
//! Where the text does not repeat, drafts are mostly wrong and a verifying
//! pass costs more than a plain step (on lavapipe about 1.8 steps for 8
//! tokens of stories260K), so a [`Lookup`] measures both and passes up
//! drafts while verifying them decides fewer tokens per second than plain
//! steps, trying one again now and then ([`Lookup::draft_always`] turns this off).

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::Result;
use crate::generate::Decoder;
use crate::kv_cache::Positions;
use crate::sampler::Sampler;
use crate::session::Session;

/// Shortest run of recent tokens looked up in the context: a single token
/// recurs too often to predict what follows it.
const MIN_NGRAM: usize = 2;

/// Longest run of recent tokens looked up in the context (then shorter ones).
const NGRAM: usize = 3;

/// Weight of the past in [`Payoff`]'s moving averages.
const DECAY: f64 = 0.8;

/// Drafts passed up in a row, while drafting does not pay, before one is
/// verified anyway (the text may have begun to repeat).
const PROBE_EVERY: u64 = 8;

/// What a [`Lookup`] decoder has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Batched passes that checked a draft.
    pub verify_passes: u64,
    /// Plain decode steps (no draft found, or sampling).
    pub plain_steps: u64,
    /// Tokens drafted from the context.
    pub drafted: u64,
    /// Drafted tokens that were the model's greedy choice.
    pub accepted: u64,
    /// Drafts found but not verified, because verifying did not pay.
    pub passed_up: u64,
}

impl LookupStats {
    /// Accepted drafted tokens per drafted token.
    pub fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
}

/// A [`Decoder`] over a [`Session`] that decodes greedily with prompt
/// lookup: several tokens per pass where the text repeats itself. Sampling
/// (a sampler that is not greedy) runs plain steps.
#[derive(Debug)]
pub struct Lookup {
    session: Session,
    /// Most tokens drafted per pass.
    draft: usize,
    /// Every token run, as the caller sees it (one per `next_token`).
    history: Vec<u32>,
    /// Tokens already decided by a verified pass, whose inputs the session
    /// has run: `next_token` returns them in order without a pass.
    ready: VecDeque<u32>,
    /// The token `next_token` returned last, which must be the next input
    /// for `ready` to hold.
    returned: Option<u32>,
    stats: LookupStats,
    /// What drafting has paid so far; `None`: every draft is verified.
    payoff: Option<Payoff>,
}

/// Whether verifying drafts pays on this adapter and text: moving averages
/// of a plain step's and a verifying pass's wall time, and of the tokens a
/// verifying pass decides (1 + the drafts accepted). The first of each
/// kind is not timed (it compiles pipelines and binds buffers).
#[derive(Clone, Copy, Debug, Default)]
struct Payoff {
    plain_secs: Option<f64>,
    verify_secs: Option<f64>,
    tokens_per_verify: Option<f64>,
    /// Drafts passed up since the last verified one.
    passed_up: u64,
}

/// `old` moved toward `new`, or `new` when there is no `old`.
fn average(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| DECAY * o + (1.0 - DECAY) * new))
}

impl Payoff {
    /// Whether to verify a draft now: unless verifying passes are measured
    /// to decide fewer tokens per second than plain steps, and fewer than
    /// [`PROBE_EVERY`] drafts were passed up since the last.
    fn verify_now(&mut self) -> bool {
        let pays = match (self.plain_secs, self.verify_secs, self.tokens_per_verify) {
            (Some(plain), Some(verify), Some(tokens)) => tokens * plain >= verify,
            _ => true,
        };
        if pays || self.passed_up + 1 >= PROBE_EVERY {
            self.passed_up = 0;
            true
        } else {
            self.passed_up += 1;
            false
        }
    }

    /// A plain step done, started at `since`; `first`: the lookup's first.
    fn plain_step(&mut self, since: Instant, first: bool) {
        if !first {
            self.plain_secs = average(self.plain_secs, since.elapsed().as_secs_f64());
        }
    }

    /// A verifying pass that decided `tokens`, started at `since`; `first`: the lookup's first.
    fn verify_pass(&mut self, since: Instant, tokens: usize, first: bool) {
        if !first {
            self.verify_secs = average(self.verify_secs, since.elapsed().as_secs_f64());
        }
        self.tokens_per_verify = average(self.tokens_per_verify, tokens as f64);
    }
}

impl Lookup {
    /// Most tokens drafted a pass: with the current token they fill one
    /// tile of the matrix-matrix kernels (a ninth token adds a launch per
    /// projection; on lavapipe a pass of 9 stories260K tokens took about
    /// 1.8x one of 8).
    pub const MAX_DRAFT: usize = crate::ops::matmul::TILE - 1;

    /// Decodes with `session`, drafting up to `draft` tokens a pass (0:
    /// plain; at most [`Lookup::MAX_DRAFT`]), verifying drafts while that pays (see
    /// the module's docs).
    pub fn new(session: Session, draft: usize) -> Self {
        let draft = draft
            .min(Self::MAX_DRAFT)
            .min(session.prefill_tokens().saturating_sub(1));
        Self {
            session,
            draft,
            history: Vec::new(),
            ready: VecDeque::new(),
            returned: None,
            stats: LookupStats::default(),
            payoff: Some(Payoff::default()),
        }
    }

    /// Verifies every draft, whether or not it pays (to measure acceptance,
    /// or where timing must not steer the passes).
    pub fn draft_always(mut self) -> Self {
        self.payoff = None;
        self
    }

    /// What it has done.
    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// The session, its cache cut back to the positions the caller has seen.
    pub fn into_session(mut self) -> Result<Session> {
        self.settle()?;
        Ok(self.session)
    }

    /// Drops the decided tokens and the cache positions run for them.
    fn settle(&mut self) -> Result<()> {
        if !self.ready.is_empty() {
            self.ready.clear();
            self.session.truncate(self.history.len())?;
        }
        Ok(())
    }

    /// Up to `self.draft` tokens that followed the latest earlier occurrence
    /// of the history's last `NGRAM` (or fewer) tokens.
    fn draft(&self) -> &[u32] {
        let h = &self.history;
        for n in (MIN_NGRAM..=NGRAM.min(h.len().saturating_sub(1))).rev() {
            let tail = &h[h.len() - n..];
            if let Some(start) = (0..h.len() - n).rev().find(|&s| &h[s..s + n] == tail) {
                let from = start + n;
                return &h[from..(from + self.draft).min(h.len())];
            }
        }
        &[]
    }
}

impl Decoder for Lookup {
    fn positions(&self) -> Positions {
        let mut p = Positions::new(self.session.cache().capacity());
        p.commit(0..self.history.len());
        p
    }

    fn vocab_size(&self) -> usize {
        self.session.model().config().vocab_size
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.settle()?;
        self.session.feed(tokens)?;
        self.history.extend_from_slice(tokens);
        Ok(())
    }

    fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32> {
        // The token the last verified pass decided is the input now: its
        // successor is decided too (another input drops what was decided).
        if !self.ready.is_empty() {
            if self.returned == Some(token) {
                let next = self.ready.pop_front().expect("not empty");
                self.history.push(token);
                self.returned = Some(next);
                return Ok(next);
            }
            self.settle()?;
        }
        let pos = self.history.len();
        self.history.push(token);
        let room = self.session.cache().capacity().saturating_sub(pos);
        let mut draft: Vec<u32> = match sampler.is_greedy() {
            true => self
                .draft()
                .iter()
                .take(room.saturating_sub(1))
                .copied()
                .collect(),
            false => Vec::new(),
        };
        if !draft.is_empty() && self.payoff.as_mut().is_some_and(|p| !p.verify_now()) {
            self.stats.passed_up += 1;
            draft.clear();
        }
        let since = Instant::now();
        if draft.is_empty() {
            self.stats.plain_steps += 1;
            return match self.session.next_token(token, sampler) {
                Ok(next) => {
                    if let Some(p) = &mut self.payoff {
                        p.plain_step(since, self.stats.plain_steps == 1);
                    }
                    Ok(next)
                }
                Err(e) => {
                    self.history.pop();
                    Err(e)
                }
            };
        }
        // The token and the draft in one pass; keep the draft while each
        // token is the argmax after the one before it.
        let mut input = Vec::with_capacity(draft.len() + 1);
        input.push(token);
        input.extend_from_slice(&draft);
        let logits = match self.session.prefill_all(&input) {
            Ok(l) => l,
            Err(e) => {
                self.history.pop();
                return Err(e);
            }
        };
        let vocab = self.vocab_size();
        let mut decided = Vec::with_capacity(input.len());
        for (row, guess) in logits
            .chunks_exact(vocab)
            .zip(draft.iter().copied().map(Some).chain([None]))
        {
            let best = Sampler::greedy().sample(row);
            decided.push(best);
            if guess != Some(best) {
                break;
            }
        }
        let accepted = decided.len() - 1;
        self.stats.verify_passes += 1;
        self.stats.drafted += draft.len() as u64;
        self.stats.accepted += accepted as u64;
        // The token and the accepted drafts stay; the rest is rolled back.
        self.session.truncate(pos + 1 + accepted)?;
        if let Some(p) = &mut self.payoff {
            p.verify_pass(since, decided.len(), self.stats.verify_passes == 1);
        }
        let first = decided[0];
        self.ready.extend(&decided[1..]);
        self.returned = Some(first);
        Ok(first)
    }

    fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        self.settle()?;
        self.session.shift(n_keep, n_discard)?;
        self.history.drain(n_keep..n_keep + n_discard);
        Ok(())
    }
}
