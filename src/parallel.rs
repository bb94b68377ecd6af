//! Several continuations of one prompt on an [`Engine`]: the prompt runs
//! once, then each continuation is a fork of it sampled with its own
//! sampler, all of them decoded together, a pass per step.

use std::time::Instant;

use crate::engine::{Engine, PoolMemory, SeqId};
use crate::error::{Error, Result};
use crate::generate::{Prompt, StopFilter};
use crate::sampler::Sampler;
use crate::tokenizer::{TextStream, Tokenizer};

/// What [`generate_parallel`] produced.
#[derive(Clone, Debug)]
pub struct Continuations {
    /// Prompt tokens (run once for all continuations).
    pub prompt_tokens: usize,
    /// Each continuation's text, the prompt not included.
    pub texts: Vec<String>,
    /// Each continuation's tokens (an end token that stopped it included).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds from the start to the prompt's logits.
    pub first_token_seconds: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// The pool when the most pages were held.
    pub peak: PoolMemory,
}

impl Continuations {
    /// Tokens generated, all continuations together.
    pub fn generated(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
}

/// Samples one continuation of `prompt` per sampler, each up to
/// `new_tokens` long, stopping at the tokenizer's end tokens: the prompt is
/// run once and forked ([`Engine::fork`]), so its full pages are held once.
/// `on_token(i, text)` gets continuation `i`'s text as it is decoded.
pub fn generate_parallel<'p>(
    engine: &mut Engine,
    tokenizer: &Tokenizer,
    samplers: &mut [Sampler],
    prompt: impl Into<Prompt<'p>>,
    new_tokens: usize,
    mut on_token: impl FnMut(usize, &str),
) -> Result<Continuations> {
    let started = Instant::now();
    let prompt = prompt.into();
    let stop = prompt.stop().to_vec();
    let prompt_tokens = prompt.into_tokens(tokenizer)?;
    if samplers.is_empty() || new_tokens == 0 {
        return Err(Error::EmptyInput);
    }
    let parent = engine.add(&prompt_tokens)?;
    for sampler in samplers.iter_mut() {
        prompt_tokens.iter().for_each(|&t| sampler.accept(t));
    }
    let forked = run_prompt(engine, parent, samplers.len());
    let ids = match forked {
        Ok(ids) => ids,
        Err(e) => {
            engine.remove(parent)?;
            return Err(e);
        }
    };
    let first_token_seconds = started.elapsed().as_secs_f64();
    let n = samplers.len();
    let mut tokens = vec![Vec::new(); n];
    let mut texts = vec![String::new(); n];
    let mut streams: Vec<TextStream> = (0..n).map(|_| TextStream::new()).collect();
    let mut stoppers: Vec<StopFilter> = (0..n).map(|_| StopFilter::new(&stop)).collect();
    let mut live: Vec<Option<SeqId>> = ids.into_iter().map(Some).collect();
    let mut peak = engine.memory();
    let last_prompt_token = *prompt_tokens.last().expect("not empty");
    let result = (|| {
        // The forks hold the prompt's logits; each step brings the next ones.
        let mut ready: Vec<SeqId> = live.iter().flatten().copied().collect();
        while !ready.is_empty() {
            for id in ready {
                let i = live.iter().position(|&l| l == Some(id)).expect("live");
                let logits = engine.logits(id)?;
                let next = samplers[i].sample(logits);
                let prev = tokens[i].last().copied().unwrap_or(last_prompt_token);
                tokens[i].push(next);
                let end = tokenizer.is_end(next);
                let mut stopped = false;
                if !end {
                    let piece = streams[i].push(tokenizer.decode(prev, next)?);
                    let (piece, hit) = stoppers[i].push(&piece);
                    on_token(i, &piece);
                    texts[i].push_str(&piece);
                    stopped = hit.is_some();
                }
                let full = engine.tokens(id)?.len() == engine.context();
                if end || stopped || tokens[i].len() == new_tokens || full {
                    // What the stream and the stop filter still hold, unless
                    // a stop string ended it.
                    let (mut rest, hit) = match stopped {
                        true => (String::new(), None),
                        false => stoppers[i].push(&streams[i].finish()),
                    };
                    if !stopped && hit.is_none() {
                        rest += &stoppers[i].finish();
                    }
                    on_token(i, &rest);
                    texts[i].push_str(&rest);
                    engine.remove(id)?;
                    live[i] = None;
                } else {
                    engine.push(id, next)?;
                    samplers[i].accept(next);
                }
            }
            let memory = engine.memory();
            if memory.pages.held > peak.pages.held {
                peak = memory;
            }
            ready = engine.step()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for id in live.into_iter().flatten() {
            engine.remove(id)?;
        }
        return Err(e);
    }
    Ok(Continuations {
        prompt_tokens: prompt_tokens.len(),
        texts,
        tokens,
        first_token_seconds,
        seconds: started.elapsed().as_secs_f64(),
        peak,
    })
}

/// Runs `parent`'s prompt, forks it `n` times (each fork holds the prompt's
/// logits) and ends the parent.
fn run_prompt(engine: &mut Engine, parent: SeqId, n: usize) -> Result<Vec<SeqId>> {
    while engine.pending(parent)? > 0 {
        engine.step()?;
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        match engine.fork(parent) {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in ids {
                    engine.remove(id)?;
                }
                return Err(e);
            }
        }
    }
    engine.remove(parent)?;
    Ok(ids)
}
