//! Choosing the next token from logits, exactly as llama2.c's `run.c` does:
//! greedy argmax at temperature 0, else softmax(logits / temperature) and
//! either multinomial sampling or top-p (nucleus) sampling, driven by run.c's
//! xorshift RNG so that the same seed gives the same text. llama.cpp's
//! top-k, min-p and repetition penalties can be added
//! ([`Sampler::with_top_k`], [`Sampler::with_min_p`],
//! [`Sampler::with_penalties`]).

use std::collections::VecDeque;

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
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    min_p: f32,
    /// llama.cpp's repetition penalties, if any.
    penalties: Option<Penalties>,
    /// (vocab,) scratch for the penalized logits.
    penalized: Vec<f32>,
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
            min_p: 0.0,
            penalties: None,
            penalized: Vec::new(),
            rng: XorShift::new(seed),
            candidates: Vec::new(),
            probs: Vec::new(),
            selection: Vec::new(),
        })
    }

    /// The settings and random state, to save: (temperature, top-p, top-k,
    /// rng state); [`Sampler::from_parts`] makes the same sampler again.
    /// Min-p and the penalties are not among them: a caller that restores
    /// a sampler gives them again (`kvgpu run --load-state` applies its
    /// flags, the penalties' window refilled from the restored tokens).
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

    /// Samples only among the `k` most likely tokens (ties at the k-th
    /// logit kept), before top-p; run.c has no top-k. `k` of 0 is an error.
    pub fn with_top_k(mut self, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidSampler("top-k must be at least 1".into()));
        }
        self.top_k = Some(k);
        Ok(self)
    }

    /// Drops the tokens whose probability is below `min_p` times the most
    /// likely one's (llama.cpp's min-p), after temperature and top-k and
    /// before top-p; 0 turns it off. Outside [0, 1] is an error.
    pub fn with_min_p(mut self, min_p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&min_p) {
            return Err(Error::InvalidSampler(format!(
                "min-p must be in [0, 1], got {min_p}"
            )));
        }
        self.min_p = min_p;
        Ok(self)
    }

    /// llama.cpp's penalties over the last `last_n` tokens (the prompt's
    /// included, see [`Sampler::accept`]), applied to the logits first: a
    /// token seen there has its logit divided by `repeat` (multiplied, if
    /// negative), then lowered by `frequency` per time seen and `presence`
    /// once. `repeat` 1 and the others 0 (or `last_n` 0) turn it off.
    pub fn with_penalties(
        mut self,
        last_n: usize,
        repeat: f32,
        frequency: f32,
        presence: f32,
    ) -> Result<Self> {
        if !(repeat > 0.0 && repeat.is_finite() && frequency.is_finite() && presence.is_finite()) {
            return Err(Error::InvalidSampler(format!(
                "penalties must be finite and the repeat penalty above 0, got {repeat}, {frequency}, {presence}"
            )));
        }
        let off = last_n == 0 || (repeat == 1.0 && frequency == 0.0 && presence == 0.0);
        self.penalties = (!off).then(|| Penalties {
            last_n,
            repeat,
            frequency,
            presence,
            recent: VecDeque::with_capacity(last_n.min(1 << 16)),
        });
        Ok(self)
    }

    /// This sampler with its random state set to `seed` (settings kept).
    pub fn reseeded(mut self, seed: u64) -> Self {
        self.rng = XorShift::new(seed);
        self
    }

    /// Records `token` as run through the model (the penalties' window):
    /// the generation loops record each token they feed, the prompt's and
    /// the sampled ones.
    pub fn accept(&mut self, token: u32) {
        if let Some(p) = &mut self.penalties {
            if p.recent.len() == p.last_n {
                p.recent.pop_front();
            }
            p.recent.push_back(token);
        }
    }

    /// A greedy sampler (argmax).
    pub fn greedy() -> Self {
        Self::new(0.0, 0.9, 0).expect("valid settings")
    }

    /// Whether this sampler takes the argmax of the logits as they are,
    /// which a GPU can do without reading them back.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.penalties.is_none()
    }

    /// Picks the next token from `logits` (vocab,).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match &self.penalties {
            Some(p) => {
                let mut penalized = std::mem::take(&mut self.penalized);
                penalized.clear();
                penalized.extend_from_slice(logits);
                p.apply(&mut penalized);
                let token = self.pick(&penalized);
                self.penalized = penalized;
                token
            }
            None => self.pick(logits),
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
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
        if self.min_p > 0.0 {
            let floor = self.min_p * self.probs.iter().fold(0.0f32, |a, &b| a.max(b));
            let kept: f32 = self.probs.iter().filter(|&&p| p >= floor).sum();
            for p in &mut self.probs {
                *p = if *p >= floor { *p / kept } else { 0.0 };
            }
        }
        let coin = self.rng.next_f32();
        if self.top_p <= 0.0 || self.top_p >= 1.0 {
            sample_mult(&self.probs, coin)
        } else {
            sample_topp(&self.probs, self.top_p, coin, &mut self.candidates)
        }
    }
}

/// llama.cpp's repetition penalties (`llama_sampler_penalties`).
#[derive(Clone, Debug)]
struct Penalties {
    last_n: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    /// The last `last_n` tokens, oldest first.
    recent: VecDeque<u32>,
}

impl Penalties {
    /// Penalizes `logits` for the tokens in the window, each once with its count.
    fn apply(&self, logits: &mut [f32]) {
        let mut counts: std::collections::HashMap<u32, u32> = Default::default();
        for &t in &self.recent {
            *counts.entry(t).or_default() += 1;
        }
        for (t, count) in counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            *l = if *l <= 0.0 {
                *l * self.repeat
            } else {
                *l / self.repeat
            };
            *l -= count as f32 * self.frequency + self.presence;
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

    #[test]
    fn min_p_drops_tokens_below_its_fraction_of_the_most_likely() {
        // At temperature 1: probabilities proportional to e^logit; 0.2 of
        // the largest keeps logits within ln 5 = 1.61 of 3.0.
        let logits = [0.5, 3.0, -1.0, 2.9, 1.5, 0.0];
        let mut s = Sampler::new(1.0, 0.0, 5).unwrap().with_min_p(0.2).unwrap();
        let mut seen = [0; 6];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen.map(|n| n > 0), [false, true, false, true, true, false]);
        assert!(Sampler::greedy().with_min_p(1.5).is_err());
    }

    #[test]
    fn penalties_follow_llama_cpp_over_the_last_n_tokens() {
        // Window of 3 after accepting 4, 1, 1, 2: tokens 1 (twice) and 2.
        let mut s = Sampler::new(0.0, 0.0, 1)
            .unwrap()
            .with_penalties(3, 2.0, 0.5, 0.25)
            .unwrap();
        assert!(!s.is_greedy(), "penalties need the logits");
        for t in [4, 1, 1, 2] {
            s.accept(t);
        }
        let logits = [1.0, 4.0, -1.0, 0.0, 3.9];
        // 1: 4 / 2 - 2 * 0.5 - 0.25 = 0.75; 2: -1 * 2 - 0.5 - 0.25 = -2.75;
        // 4 (out of the window): 3.9, the largest.
        assert_eq!(s.sample(&logits), 4);
        s.accept(4);
        // Now 4 is in the window (1, 2, 4): 3.9 / 2 - 0.75 = 1.2, and 1
        // (once) 4 / 2 - 0.75 = 1.25 is the largest.
        assert_eq!(s.sample(&logits), 1);
        let mut off = Sampler::greedy().with_penalties(64, 1.0, 0.0, 0.0).unwrap();
        assert!(off.is_greedy());
        assert_eq!(off.sample(&logits), 1);
        assert!(Sampler::greedy().with_penalties(8, 0.0, 0.0, 0.0).is_err());
    }
}
