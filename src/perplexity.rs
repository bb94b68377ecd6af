//! Perplexity and KL divergence as llama.cpp's `llama-perplexity` computes
//! them, so that numbers compare directly: the text's tokens are cut into
//! chunks of `n_ctx`, the first token of each chunk becomes BOS when the
//! vocabulary adds one, each chunk runs from an empty cache, and the second
//! half of each chunk is scored: the logits after position j (j from
//! n_ctx / 2 to n_ctx - 2) predict token j + 1.
//!
//! perplexity = exp(mean nll), its standard error ppl * sqrt(var(nll) /
//! (count - 1)); KL divergence per token = sum p_base (log p_base - log p),
//! with mean, standard error, top-1 agreement and Δppl against the base.

/// The chunks of `tokens` llama.cpp scores: `tokens.len() / n_ctx` of them
/// (at most `max_chunks`), each `n_ctx` long, the first token replaced by
/// `bos` when given.
pub fn chunks(tokens: &[u32], n_ctx: usize, bos: Option<u32>, max_chunks: usize) -> Vec<Vec<u32>> {
    if n_ctx < 2 {
        return Vec::new();
    }
    tokens
        .chunks_exact(n_ctx)
        .take(max_chunks)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(bos) = bos {
                c[0] = bos;
            }
            c
        })
        .collect()
}

/// The first position of a chunk of `n_ctx` whose logits are scored.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// `log softmax(logits)` for every token, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&v| v as f64 - log_sum).collect()
}

/// Mean and standard error of the mean of `values` (llama.cpp's estimate:
/// sqrt of the variance over count - 1).
fn mean_and_error(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let square = values.iter().map(|v| v * v).sum::<f64>() / n;
    let variance = square - mean * mean;
    let error = if variance > 0.0 && n > 1.0 {
        (variance / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, error)
}

/// A perplexity estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Its standard error.
    pub error: f64,
    /// Tokens scored.
    pub count: usize,
}

impl Perplexity {
    /// From the negative log-likelihood of each scored token.
    pub fn from_nll(nll: &[f64]) -> Self {
        let (mean, error) = mean_and_error(nll);
        let ppl = mean.exp();
        Self {
            ppl,
            error: error * ppl,
            count: nll.len(),
        }
    }
}

/// KL divergence of a run against a base run of the same tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    /// Mean KL divergence per token (nats).
    pub mean: f64,
    /// Its standard error.
    pub error: f64,
    /// Fraction of tokens whose most likely next token is the same.
    pub top1: f64,
    /// Perplexity of the base run.
    pub base: Perplexity,
    /// Perplexity of this run.
    pub ppl: Perplexity,
}

/// Per-token statistics of two runs: base and new log-probabilities of each
/// scored row, and the token each row predicts.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    kl: Vec<f64>,
    same_top1: usize,
    base_nll: Vec<f64>,
    nll: Vec<f64>,
}

impl Comparison {
    /// Adds one scored row: `base` and `new` are log-probabilities over the
    /// vocabulary, `next` the token that follows.
    pub fn add(&mut self, base: &[f64], new: &[f64], next: u32) {
        let kl: f64 = base.iter().zip(new).map(|(&b, &n)| b.exp() * (b - n)).sum();
        self.kl.push(kl.max(0.0));
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |m, (i, &x)| if x > m.1 { (i, x) } else { m },
                )
                .0
        };
        self.same_top1 += usize::from(argmax(base) == argmax(new));
        self.base_nll.push(-base[next as usize]);
        self.nll.push(-new[next as usize]);
    }

    /// The statistics so far.
    pub fn result(&self) -> Divergence {
        let (mean, error) = mean_and_error(&self.kl);
        Divergence {
            mean,
            error,
            top1: self.same_top1 as f64 / self.kl.len().max(1) as f64,
            base: Perplexity::from_nll(&self.base_nll),
            ppl: Perplexity::from_nll(&self.nll),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_statistics_follow_llama_cpp() {
        let tokens: Vec<u32> = (10..30).collect();
        let c = chunks(&tokens, 8, Some(1), 100);
        assert_eq!(c.len(), 2, "20 tokens hold two whole chunks of 8");
        assert_eq!(c[0], [1, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(c[1], [1, 19, 20, 21, 22, 23, 24, 25]);
        assert_eq!(
            chunks(&tokens, 8, None, 1),
            [(10..18).collect::<Vec<u32>>()]
        );
        assert_eq!(first_scored(8), 4);
        // Uniform logits over 4 tokens: nll = ln 4 everywhere, ppl 4, no spread.
        let lp = log_softmax(&[0.5; 4]);
        assert!((lp[0] + 4f64.ln()).abs() < 1e-12);
        let p = Perplexity::from_nll(&[4f64.ln(); 10]);
        assert!((p.ppl - 4.0).abs() < 1e-9 && p.error == 0.0);
        // nll 1 and 3: mean 2, variance 1, error sqrt(1 / 1) * e^2.
        let p = Perplexity::from_nll(&[1.0, 3.0]);
        assert!((p.ppl - 2f64.exp()).abs() < 1e-9);
        assert!((p.error - 2f64.exp()).abs() < 1e-9);
        // KL of a run against itself is 0; against uniform it is ln 4 - H(base).
        let base = log_softmax(&[3.0, 1.0, 0.0, -1.0]);
        let mut same = Comparison::default();
        same.add(&base, &base, 0);
        assert_eq!(same.result().mean, 0.0);
        assert_eq!(same.result().top1, 1.0);
        let mut other = Comparison::default();
        other.add(&base, &lp, 0);
        let entropy: f64 = base.iter().map(|&b| -b.exp() * b).sum();
        assert!((other.result().mean - (4f64.ln() - entropy)).abs() < 1e-12);
    }
}
