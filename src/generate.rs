//! The generation loop, with llama2.c `run.c` semantics: the prompt (BOS
//! where the tokenizer adds one, dummy-prefix space, text) is fed (on the
//! GPU, in prefill passes) and echoed as typed, then tokens are sampled
//! until `steps` positions are done or the model emits one of the
//! tokenizer's end tokens (run.c: BOS; GGUF: EOS, end of turn, ...).

use std::time::Instant;

use crate::cpu::CpuSession;
use crate::error::Result;
use crate::kv_cache::Positions;
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::{TextStream, Tokenizer};

/// Something that decodes tokens at the next positions, one per call (a
/// greedy GPU session: blocks of them, [`Decoder::next_tokens`]): the GPU
/// [`Session`], the [`CpuSession`] reference or [`NoCache`].
pub trait Decoder {
    /// Which positions are filled, of how many the cache holds.
    fn positions(&self) -> Positions;
    /// Tokens in the vocabulary.
    fn vocab_size(&self) -> usize;
    /// Positions decoded so far.
    fn len(&self) -> usize {
        self.positions().len()
    }
    /// Whether nothing has been decoded.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the KV cache holds.
    fn capacity(&self) -> usize {
        self.positions().capacity()
    }
    /// Runs tokens whose logits are not needed (a prompt).
    fn feed(&mut self, tokens: &[u32]) -> Result<()>;
    /// Decodes a token and picks the next one.
    fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32>;
    /// Decodes `token` and picks the next one, then (at most `steps` in all)
    /// decodes each pick and picks again, stopping after a token of `stop`;
    /// returns the picks. A [`Session`] decoding greedily runs them as one
    /// block on the GPU ([`Session::greedy_block`]: one submit and one
    /// readback); otherwise one token a call.
    fn next_tokens(
        &mut self,
        token: u32,
        sampler: &mut Sampler,
        steps: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let _ = (steps, stop);
        Ok(vec![self.next_token(token, sampler)?])
    }
    /// Drops positions `n_keep .. n_keep + n_discard`, moving the rest
    /// down ([`Session::shift`]).
    fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()>;
}

impl Decoder for Session {
    fn positions(&self) -> Positions {
        self.cache().positions
    }
    fn vocab_size(&self) -> usize {
        self.model().config().vocab_size
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        Session::feed(self, tokens)
    }
    fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32> {
        Session::next_token(self, token, sampler)
    }
    fn next_tokens(
        &mut self,
        token: u32,
        sampler: &mut Sampler,
        steps: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        match sampler.is_greedy() && steps > 1 {
            true => self.greedy_block(token, steps, stop),
            false => Ok(vec![Session::next_token(self, token, sampler)?]),
        }
    }
    fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        Session::shift(self, n_keep, n_discard)
    }
}

impl Decoder for CpuSession<'_> {
    fn positions(&self) -> Positions {
        CpuSession::positions(self)
    }
    fn vocab_size(&self) -> usize {
        self.model().config.vocab_size
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        // Checked whole first, so a refused prompt changes nothing.
        self.positions().reserve(tokens, self.vocab_size())?;
        tokens.iter().try_for_each(|&t| self.forward(t).map(|_| ()))
    }
    fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32> {
        let logits = self.forward(token)?;
        Ok(sampler.sample(logits))
    }
    fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        CpuSession::shift(self, n_keep, n_discard)
    }
}

/// Decoding without a KV cache, for comparison: each new token re-runs the
/// whole prefix from position 0 (in prefill passes, as a cacheless
/// Transformer runs the sequence), recomputing every K and V the cache would
/// have kept (work grows with the square of the length).
#[derive(Debug)]
pub struct NoCache {
    session: Session,
    /// The prefix so far.
    tokens: Vec<u32>,
    /// The prefix's positions, of the session's capacity.
    positions: Positions,
    /// Token positions computed so far, recomputations included.
    positions_run: u64,
}

impl NoCache {
    /// Wraps a session; its cache is used only as scratch within one step.
    pub fn new(mut session: Session) -> Self {
        session.reset();
        Self {
            positions: Positions::new(session.cache().capacity()),
            session,
            tokens: Vec::new(),
            positions_run: 0,
        }
    }

    /// Token positions computed so far, recomputations included: the new
    /// token at length L costs L (with a cache it would cost 1).
    pub fn positions_run(&self) -> u64 {
        self.positions_run
    }

    /// GPU passes submitted so far: per new token, the prefix's prefill
    /// passes and the token's own.
    pub fn passes(&self) -> u64 {
        self.session.submissions()
    }
}

impl Decoder for NoCache {
    fn positions(&self) -> Positions {
        self.positions
    }
    fn vocab_size(&self) -> usize {
        self.session.model().config().vocab_size
    }
    fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        // Nothing to run: the next token recomputes the prefix anyway.
        let positions = self.positions.reserve(tokens, self.vocab_size())?;
        self.tokens.extend_from_slice(tokens);
        self.positions.commit(positions);
        Ok(())
    }
    fn next_token(&mut self, token: u32, sampler: &mut Sampler) -> Result<u32> {
        let positions = self.positions.reserve(&[token], self.vocab_size())?;
        self.session.reset();
        let next = self
            .session
            .feed(&self.tokens)
            .and_then(|()| self.session.next_token(token, sampler))?;
        self.tokens.push(token);
        self.positions.commit(positions);
        self.positions_run += self.tokens.len() as u64;
        Ok(next)
    }
    fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        // The prefix is recomputed anyway: drop the tokens.
        let len = self.tokens.len();
        if n_discard == 0 || n_keep.checked_add(n_discard).is_none_or(|end| end > len) {
            return Err(crate::error::Error::InvalidShift {
                n_keep,
                n_discard,
                len,
            });
        }
        self.tokens.drain(n_keep..n_keep + n_discard);
        self.positions.truncate(len - n_discard)
    }
}

/// What a generation produced and how fast.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The text streamed out.
    pub text: String,
    /// The tokens sampled, in order (the end token, if any, not included).
    /// All but the last were run through the decoder; the last was not.
    pub tokens: Vec<u32>,
    /// Prompt tokens, BOS included.
    pub prompt_tokens: usize,
    /// The prompt's tokens (BOS included), then the sampled ones: the
    /// decoder has run all but the last (which, unless an end token
    /// followed it, is the next step's input) since the generation began,
    /// shifts aside.
    pub all_tokens: Vec<u32>,
    /// Tokens sampled (the end token, if any, not counted).
    pub generated_tokens: usize,
    /// Whether the model ended the text with an end token (else a stop
    /// string, the length or the cache's capacity ended it).
    pub ended: bool,
    /// The index of the stop string ([`Prompt::with_stop`]) that ended it.
    pub stop: Option<usize>,
    /// Positions decoded (prompt included).
    pub positions: usize,
    /// Seconds from the start to the first sampled token: the prompt's
    /// prefill passes and one decode step (time to first token); 0 if none.
    pub first_token_seconds: f64,
    /// Decode rate of the sampled tokens, positions per second, timed from
    /// the end of the first one (as run.c), so pipeline warm-up is
    /// excluded; 0 if only one.
    pub tokens_per_second: f64,
}

/// What a generation does when the cache is full ([`generate_shifting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextShift {
    /// Positions kept at the start (attention sinks; the prompt's start).
    pub keep: usize,
    /// Positions dropped after them each time; `None`: half of the rest,
    /// as llama.cpp. A small fixed number (1: StreamingLLM) keeps a window
    /// of `capacity - keep` recent positions.
    pub discard: Option<usize>,
}

/// How long a generation runs; it stops earlier at the cache's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// run.c's `steps`: positions from the decoder's current length, the
    /// prompt's included; 0 means up to capacity. A bare `usize` converts
    /// to this.
    Steps(usize),
    /// This many sampled tokens after the prompt.
    NewTokens(usize),
}

impl From<usize> for Length {
    fn from(steps: usize) -> Self {
        Length::Steps(steps)
    }
}

/// A prompt's text and its tokens (as `tokenizer.encode_special(text,
/// add_bos, false)` gives them, BOS alone for an empty text): plain text
/// converts and is tokenized when the generation starts; [`Prompt::encode`]
/// tokenizes it first, for a caller that needs its length before.
#[derive(Clone, Debug)]
pub struct Prompt<'a> {
    text: &'a str,
    tokens: Option<Vec<u32>>,
    /// Strings that end the generation ([`Prompt::with_stop`]).
    stop: Vec<String>,
}

impl<'a> Prompt<'a> {
    /// `text` and its tokens.
    pub fn encode(tokenizer: &Tokenizer, text: &'a str) -> Result<Self> {
        let mut tokens = tokenizer.encode_special(text, tokenizer.add_bos(), false)?;
        if tokens.is_empty() {
            tokens.push(tokenizer.bos()); // something to start from
        }
        Ok(Self {
            text,
            tokens: Some(tokens),
            stop: Vec::new(),
        })
    }

    /// The generation ends where its text first holds one of `stop`
    /// (llama.cpp's stop strings): the text before it is streamed, it and
    /// what follows are not ([`Generation::stop`] says which). Text that
    /// may begin one is held back until it cannot. Empty strings are
    /// ignored.
    pub fn with_stop(mut self, stop: &[impl AsRef<str>]) -> Self {
        let given = stop.iter().map(|s| s.as_ref().to_string());
        self.stop = given.filter(|s| !s.is_empty()).collect();
        self
    }

    /// Its stop strings.
    pub fn stop(&self) -> &[String] {
        &self.stop
    }

    /// Its tokens, if encoded.
    pub fn tokens(&self) -> Option<&[u32]> {
        self.tokens.as_deref()
    }

    /// Its tokens, encoding them now if they were not.
    pub(crate) fn into_tokens(self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        match self.tokens {
            Some(tokens) => Ok(tokens),
            None => Ok(Prompt::encode(tokenizer, self.text)?
                .tokens
                .expect("encoded")),
        }
    }
}

impl<'a> From<&'a str> for Prompt<'a> {
    fn from(text: &'a str) -> Self {
        Self {
            text,
            tokens: None,
            stop: Vec::new(),
        }
    }
}

impl<'a> From<&'a String> for Prompt<'a> {
    fn from(text: &'a String) -> Self {
        Self::from(text.as_str())
    }
}

/// Generated text on its way out, held back while it may be the start of
/// a stop string.
pub(crate) struct StopFilter<'a> {
    stop: &'a [String],
    held: String,
}

impl<'a> StopFilter<'a> {
    pub(crate) fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            held: String::new(),
        }
    }

    /// Adds `piece`: the text that can go out now, and the index of the
    /// stop string it completed, if any (the text from it on is dropped).
    pub(crate) fn push(&mut self, piece: &str) -> (String, Option<usize>) {
        self.held.push_str(piece);
        let found = self.stop.iter().enumerate();
        let found = found.filter_map(|(i, s)| Some((self.held.find(s.as_str())?, i)));
        if let Some((at, i)) = found.min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, Some(i));
        }
        // The longest end of the held text that begins a stop string stays.
        let keep = (1..=self.held.len())
            .rev()
            .filter(|&k| self.held.is_char_boundary(self.held.len() - k))
            .find(|&k| {
                let tail = &self.held[self.held.len() - k..];
                self.stop.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, None)
    }

    /// What is held, at the end of the generation.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Runs `length` from the decoder's current length (clamped to its
/// capacity), starting with `prompt`. Each piece of text is passed to
/// `emit` as soon as it forms whole UTF-8 characters.
pub fn generate<'p, D: Decoder + ?Sized>(
    decoder: &mut D,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: impl Into<Prompt<'p>>,
    length: impl Into<Length>,
    emit: impl FnMut(&str),
) -> Result<Generation> {
    let prompt = prompt.into();
    let (text, stop) = (prompt.text, prompt.stop.clone());
    let prompt_tokens = prompt.into_tokens(tokenizer)?;
    run(
        decoder,
        tokenizer,
        sampler,
        &prompt_tokens,
        (length.into(), None),
        (Some(text), &stop),
        emit,
    )
}

/// [`generate`] of `new_tokens` tokens that shifts the context
/// ([`Decoder::shift`]) whenever the cache is full, instead of stopping
/// there: memory stays at the cache's capacity for any length. The prompt
/// must fit the cache, and `shift.keep` leave room to decode.
pub fn generate_shifting<'p, D: Decoder + ?Sized>(
    decoder: &mut D,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: impl Into<Prompt<'p>>,
    new_tokens: usize,
    shift: ContextShift,
    emit: impl FnMut(&str),
) -> Result<Generation> {
    let capacity = decoder.capacity();
    if shift.keep.saturating_add(2) > capacity || shift.discard == Some(0) {
        return Err(crate::error::Error::InvalidShift {
            n_keep: shift.keep,
            n_discard: shift.discard.unwrap_or(0),
            len: capacity,
        });
    }
    let prompt = prompt.into();
    let (text, stop) = (prompt.text, prompt.stop.clone());
    let prompt_tokens = prompt.into_tokens(tokenizer)?;
    let length = Length::NewTokens(new_tokens);
    run(
        decoder,
        tokenizer,
        sampler,
        &prompt_tokens,
        (length, Some(shift)),
        (Some(text), &stop),
        emit,
    )
}

/// Most greedy steps [`generate`] runs in one submit (one readback): on
/// lavapipe launches dominate and the gain is small; on hardware a submit
/// and a readback cost more than a small model's step.
pub const GREEDY_BLOCK: usize = 16;

/// [`generate`] from tokens (at least one) rather than text, without
/// echoing them: for callers that build the prompt themselves, such as
/// [`crate::Chat`]. The text is only what is sampled.
pub fn generate_tokens<D: Decoder + ?Sized>(
    decoder: &mut D,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt_tokens: &[u32],
    length: impl Into<Length>,
    emit: impl FnMut(&str),
) -> Result<Generation> {
    if prompt_tokens.is_empty() {
        return Err(crate::error::Error::EmptyInput);
    }
    run(
        decoder,
        tokenizer,
        sampler,
        prompt_tokens,
        (length.into(), None),
        (None, &[]),
        emit,
    )
}

/// The loop of [`generate`], [`generate_tokens`] and
/// [`generate_shifting`]; `echo` streams the prompt as typed first (its
/// tokens' pieces where the length stops inside it); `shift` shifts the
/// context when the cache is full instead of stopping; the sampled text
/// ends at the first of `stop`.
fn run<D: Decoder + ?Sized>(
    decoder: &mut D,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt_tokens: &[u32],
    (length, shift): (Length, Option<ContextShift>),
    (echo, stop): (Option<&str>, &[String]),
    mut emit: impl FnMut(&str),
) -> Result<Generation> {
    decoder
        .positions()
        .reserve(prompt_tokens, decoder.vocab_size())?;
    let room = decoder.positions().room();
    // The prompt's last token is decoded in the loop, with the sampled ones.
    let steps = match length {
        Length::Steps(0) => room,
        Length::Steps(steps) => steps,
        Length::NewTokens(n) => (prompt_tokens.len() - 1).saturating_add(n),
    };
    // Past capacity only when shifting.
    let steps = if shift.is_some() {
        steps
    } else {
        steps.min(room)
    };
    let mut stream = TextStream::new();
    let mut text = String::new();
    let mut out = |s: &str, text: &mut String| {
        if !s.is_empty() {
            emit(s);
            text.push_str(s);
        }
    };
    // The prompt but its last token in one call (prefill passes on the GPU),
    // its text streamed after; then one position per call.
    let fed = (prompt_tokens.len() - 1).min(steps);
    let began = Instant::now();
    decoder.feed(&prompt_tokens[..fed])?;
    prompt_tokens[..fed].iter().for_each(|&t| sampler.accept(t));
    // The prompt as typed (control tokens' text included), when the
    // length reaches past it; else its pieces up to where the length
    // stops: a BOS the tokenizer added prints nothing, and a first token
    // without one prints as if it followed BOS (no dummy-prefix space).
    match echo {
        Some(prompt) if fed + 1 == prompt_tokens.len() => out(prompt, &mut text),
        Some(_) => {
            let mut prev = tokenizer.bos();
            let first = usize::from(tokenizer.add_bos() && prompt_tokens[0] == tokenizer.bos());
            for &t in &prompt_tokens[first..=fed] {
                out(&stream.push(tokenizer.decode(prev, t)?), &mut text);
                prev = t;
            }
        }
        None => {}
    }
    let mut stopper = StopFilter::new(stop);
    let mut stopped = None;
    let mut sampled = Vec::new();
    let mut first_token_seconds = 0.0;
    let mut token = prompt_tokens[fed];
    let mut generated = 0;
    let mut positions = fed;
    let mut start = None;
    let mut ended = false;
    while positions < steps && !ended {
        if let Some(shift) = shift.filter(|_| decoder.positions().room() == 0) {
            let rest = decoder.len() - shift.keep;
            decoder.shift(shift.keep, shift.discard.unwrap_or(rest / 2).clamp(1, rest))?;
        }
        // After the first token (its latency is the prompt's), greedy
        // sessions decode blocks of steps per submit, within the length and
        // the room left.
        // (One step at a time with stop strings: a block would run past one.)
        let block = match start {
            None => 1,
            Some(_) if !stop.is_empty() => 1,
            Some(_) => (steps - positions)
                .min(decoder.positions().room())
                .min(GREEDY_BLOCK),
        };
        sampler.accept(token);
        let picks = decoder.next_tokens(token, sampler, block, tokenizer.end_tokens())?;
        for next in picks {
            positions += 1;
            if tokenizer.is_end(next) {
                // The end token is not part of the text, unless control
                // tokens are shown.
                if tokenizer.shows_special() {
                    out(&stream.push(tokenizer.decode(token, next)?), &mut text);
                }
                ended = true;
                break;
            }
            generated += 1;
            let piece = tokenizer.decode(token, next)?;
            let (piece, hit) = stopper.push(&stream.push(piece));
            out(&piece, &mut text);
            sampled.push(next);
            token = next;
            if hit.is_some() {
                stopped = hit;
                break;
            }
            start.get_or_insert_with(|| {
                first_token_seconds = began.elapsed().as_secs_f64();
                (Instant::now(), positions)
            });
        }
        if stopped.is_some() {
            break;
        }
    }
    if stopped.is_none() {
        let (rest, hit) = stopper.push(&stream.finish());
        out(&rest, &mut text);
        stopped = hit;
        if hit.is_none() {
            out(&stopper.finish(), &mut text);
        }
    }
    let tokens_per_second = match start {
        Some((t, first)) if positions > first => {
            (positions - first) as f64 / t.elapsed().as_secs_f64()
        }
        _ => 0.0,
    };
    Ok(Generation {
        text,
        all_tokens: prompt_tokens.iter().chain(&sampled).copied().collect(),
        tokens: sampled,
        prompt_tokens: prompt_tokens.len(),
        generated_tokens: generated,
        ended,
        stop: stopped,
        positions,
        first_token_seconds,
        tokens_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    /// Feeds `pieces`: what went out, and the stop string's index.
    fn filter(stop: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stop);
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = f.push(p);
            out += &text;
            if hit.is_some() {
                return (out, hit);
            }
        }
        (out + &f.finish(), None)
    }

    #[test]
    fn stop_strings_end_the_text_across_pieces_and_hold_back_only_what_may_begin_one() {
        assert_eq!(
            filter(&[". "], &["Hi", ".", " Lily"]),
            ("Hi".into(), Some(0))
        );
        assert_eq!(
            filter(&["</s>", "\n\n"], &["a\n", "\n<", "/s>"]),
            ("a".into(), Some(1))
        );
        // A prefix that does not go on is let out; nothing is lost.
        assert_eq!(filter(&[". "], &["a.", "b. c"]), ("a.b".into(), Some(0)));
        assert_eq!(filter(&["xyz"], &["ax", "y"]), ("axy".into(), None));
        // Multi-byte characters are held whole.
        assert_eq!(filter(&["é!"], &["café", "?"]), ("café?".into(), None));
        assert_eq!(filter(&["日本"], &["今日", "本は"]), ("今".into(), Some(0)));
        // The earliest stop string in the text wins.
        assert_eq!(filter(&["c", "ab"], &["zabc"]), ("z".into(), Some(1)));
    }
}
