//! Choosing the next token from logits, exactly as llama2.c's `run.c` does:
//! greedy argmax at temperature 0, else softmax(logits / temperature) and
//! either multinomial sampling or top-p (nucleus) sampling, driven by run.c's
//! xorshift RNG so that the same seed gives the same text.

use crate::error::{Error, Result};
pub use crate::ops::argmax::cpu as argmax;
pub use crate::ops::attention::softmax;
use crate::rng::XorShift;

/// Sampling settings and state.
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    /// Keep only the k most likely tokens first (llama.cpp's top-k); `None`: all (run.c).
    top_k: Option<usize>,
    rng: XorShift,
    /// (vocab,) scratch for top-p: candidate (probability, token id).
    candidates: Vec<(f32, u32)>,
    /// (vocab,) scratch for the probabilities.
    probs: Vec<f32>,
    /// (vocab,) scratch for top-k's selection.
    selection: Vec<f32>,
}

impl Sampler {
    /// `temperature` 0 means greedy; `top_p` outside (0, 1) means plain
    /// multinomial sampling, as in run.c.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(Error::InvalidSampler(format!(
                "temperature must be a finite number >= 0, got {temperature}"
            )));
        }
        if !top_p.is_finite() {
            return Err(Error::InvalidSampler(format!(
                "top-p must be finite, got {top_p}"
            )));
        }
        Ok(Self {
            temperature,
            top_p,
            top_k: None,
            rng: XorShift::new(seed),
            candidates: Vec::new(),
            probs: Vec::new(),
            selection: Vec::new(),
        })
    }

    /// Samples only among the `k` most likely tokens (ties at the k-th
    /// The settings and random state, to save: (temperature, top-p, top-k,
    /// rng state); [`Sampler::from_parts`] makes the same sampler again.
    pub fn parts(&self) -> (f32, f32, Option<usize>, u64) {
        (self.temperature, self.top_p, self.top_k, self.rng.state())
    }

    /// A sampler from [`Sampler::parts`]: it samples as the saved one would
    /// have from there on.
    pub fn from_parts(
        temperature: f32,
        top_p: f32,
        top_k: Option<usize>,
        rng: u64,
    ) -> Result<Self> {
        let mut s = Self::new(temperature, top_p, rng)?;
        if let Some(k) = top_k {
            s = s.with_top_k(k)?;
        }
        Ok(s)
    }

    /// logit kept), before top-p; run.c has no top-k. `k` of 0 is an error.
    pub fn with_top_k(mut self, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidSampler("top-k must be at least 1".into()));
        }
        self.top_k = Some(k);
        Ok(self)
    }

    /// A greedy sampler (argmax).
    pub fn greedy() -> Self {
        Self::new(0.0, 0.9, 0).expect("valid settings")
    }

    /// Whether this sampler takes the argmax, which a GPU can do without
    /// reading the logits back.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Picks the next token from `logits` (vocab,).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|l| l / self.temperature));
        // A temperature so small that the scaled logits overflow leaves
        // only the largest: greedy.
        if self.probs.iter().any(|p| p.is_infinite()) {
            return argmax(logits);
        }
        if let Some(k) = self.top_k.filter(|&k| k < logits.len()) {
            // The k-th largest value; everything below it gets probability 0.
            self.selection.clear();
            self.selection.extend_from_slice(&self.probs);
            let (_, kth, _) = self
                .selection
                .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            for p in self.probs.iter_mut().filter(|p| **p < kth) {
                *p = f32::NEG_INFINITY;
            }
        }
        softmax(&mut self.probs);
        let coin = self.rng.next_f32();
        if self.top_p <= 0.0 || self.top_p >= 1.0 {
            sample_mult(&self.probs, coin)
        } else {
            sample_topp(&self.probs, self.top_p, coin, &mut self.candidates)
        }
    }
}

/// Samples from `probs` with `coin` in [0, 1) (run.c's `sample_mult`).
fn sample_mult(probs: &[f32], coin: f32) -> u32 {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i as u32;
        }
    }
    (probs.len() - 1) as u32
}

/// Top-p sampling (run.c's `sample_topp`): sample from the smallest set of
/// tokens whose probabilities add up to more than `top_p`.
fn sample_topp(probs: &[f32], top_p: f32, coin: f32, candidates: &mut Vec<(f32, u32)>) -> u32 {
    // Tokens below this cannot be part of the nucleus; dropping them first
    // makes the sort cheap.
    let cutoff = (1.0 - top_p) / (probs.len() - 1) as f32;
    candidates.clear();
    candidates.extend(
        probs
            .iter()
            .enumerate()
            .filter(|(_, &p)| p >= cutoff)
            .map(|(i, &p)| (p, i as u32)),
    );
    if candidates.is_empty() {
        // run.c reads out of bounds here (possible when top_p is tiny); the
        // most likely token is the limit of top-p as top_p -> 0.
        return argmax(probs);
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut cumulative = 0.0f32;
    let mut last = candidates.len() - 1;
    for (i, (p, _)) in candidates.iter().enumerate() {
        cumulative += p;
        if cumulative > top_p {
            last = i;
            break;
        }
    }
    let r = coin * cumulative;
    let mut cdf = 0.0f32;
    for (p, id) in &candidates[..=last] {
        cdf += p;
        if r < cdf {
            return *id;
        }
    }
    candidates[last].1
}

/// `Err(NonFiniteLogits)` if `logits` (after the token at `position`)
/// hold a NaN or an infinity.
pub(crate) fn check_finite(logits: &[f32], position: usize) -> Result<()> {
    match logits.iter().all(|l| l.is_finite()) {
        true => Ok(()),
        false => Err(Error::NonFiniteLogits { position }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_samples_only_among_the_k_most_likely() {
        let logits = [0.5, 3.0, -1.0, 2.9, 2.8, 0.0];
        // k = 1 at any temperature is the argmax.
        let mut one = Sampler::new(5.0, 0.0, 7).unwrap().with_top_k(1).unwrap();
        assert!((0..200).all(|_| one.sample(&logits) == 1));
        // k = 3: only tokens 1, 3 and 4 ever come out, and each does.
        let mut three = Sampler::new(5.0, 0.0, 9).unwrap().with_top_k(3).unwrap();
        let mut seen = [0; 6];
        for _ in 0..600 {
            seen[three.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen.map(|n| n > 0), [false, true, false, true, true, false]);
        // With top-p too, and k larger than the vocabulary (no effect).
        let mut all = Sampler::new(1.0, 0.9, 3).unwrap().with_top_k(100).unwrap();
        let mut plain = Sampler::new(1.0, 0.9, 3).unwrap();
        assert!((0..50).all(|_| all.sample(&logits) == plain.sample(&logits)));
        assert!(Sampler::greedy().with_top_k(0).is_err());
    }
}
