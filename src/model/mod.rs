//! A model of one of the families in `arch/`: hyper-parameters ([`Config`],
//! the family's block among them) and weights ([`Weights`]) as stored in the
//! file, read from GGUF files (`model/gguf.rs`) or llama2.c checkpoints
//! (`model/llama2c.rs`).

use std::io::Read;
use std::path::Path;

use crate::arch::{Block, Family};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, GgufError};
use crate::rng::XorShift;
use crate::rope::Rope;
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;

mod gguf;
mod llama2c;

/// Transformer hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Transformer width (residual stream size).
    pub dim: usize,
    /// Width of the feed-forward layer's hidden state.
    pub hidden_dim: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (fewer than `n_heads` with grouped-query attention).
    pub n_kv_heads: usize,
    /// Size of one attention head (`dim / n_heads` unless the file says
    /// otherwise: Qwen3 and Gemma 3 heads are wider).
    pub head_size: usize,
    /// Vocabulary size in tokens.
    pub vocab_size: usize,
    /// Longest context the model was trained for, in positions.
    pub seq_len: usize,
    /// Whether the classifier reuses the token embedding table.
    pub shared_classifier: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base frequency (of the layers that attend over the whole context).
    pub rope_theta: f32,
    /// RoPE base frequency of the layers that attend over a sliding window.
    pub rope_theta_window: f32,
    /// Positions a window layer attends to (its own and those before it;
    /// llama.cpp's rule: a token at p sees p' when p - p' < window); 0 when
    /// the model has no window layers. Which layers: [`Block::window_pattern`].
    pub sliding_window: usize,
    /// Dimensions of each head that RoPE rotates (the first `rope_dim`; even, at most head_size).
    pub rope_dim: usize,
    /// Llama-3-style per-pair frequency divisors ((rope_dim / 2,)), if any.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// The family: what its block computes and how its files store it.
    pub family: &'static Family,
}

impl Config {
    /// What the model's block computes.
    pub fn block(&self) -> &'static Block {
        &self.family.block
    }

    /// The sliding window layer `layer` attends over, or `None` for the
    /// whole context.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let every = self.block().window_pattern?;
        (self.sliding_window > 0 && layer % every < every - 1).then_some(self.sliding_window)
    }

    /// The RoPE settings of layer `layer` (window layers have their own base).
    pub fn layer_rope(&self, layer: usize) -> Rope {
        let mut rope = self.rope();
        if self.layer_window(layer).is_some() {
            rope.theta = self.rope_theta_window;
        }
        rope
    }

    /// Width of the query vector of one position (`n_heads * head_size`),
    /// the attention output's, and Wo's input.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_size
    }

    /// Width of the K and V vectors of one position (`n_kv_heads * head_size`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size
    }

    /// Number of query heads that share one K/V head.
    pub fn kv_mul(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Checks the relations between fields: K/V heads divide the query
    /// heads, head size is even.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: usize, reason: String| {
            Err(Error::InvalidConfig {
                field,
                value: value as i64,
                reason,
            })
        };
        for (field, v) in [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_size", self.head_size),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
        ] {
            if v == 0 || v > i32::MAX as usize {
                return bad(field, v, "must be between 1 and 2^31-1".into());
            }
        }
        if self.q_dim() > i32::MAX as usize {
            return bad(
                "head_size",
                self.head_size,
                format!("times {} heads passes 2^31-1", self.n_heads),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                self.n_kv_heads,
                format!("does not divide n_heads {}", self.n_heads),
            );
        }
        if !self.head_size.is_multiple_of(2) {
            return bad(
                "head_size",
                self.head_size,
                "is odd (RoPE rotates pairs)".into(),
            );
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0 && self.rope_theta_window > 0.0) {
            return bad(
                "norm_eps",
                0,
                "norm_eps and both RoPE bases must be positive".into(),
            );
        }
        if self.rope_dim == 0 || self.rope_dim > self.head_size || !self.rope_dim.is_multiple_of(2)
        {
            return bad(
                "rope_dim",
                self.rope_dim,
                format!("must be even and at most the head size {}", self.head_size),
            );
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.rope_dim / 2 || f.iter().any(|v| !(*v > 0.0 && v.is_finite())) {
                return bad(
                    "rope_freq_factors",
                    f.len(),
                    format!("need {} positive finite factors", self.rope_dim / 2),
                );
            }
        }
        Ok(())
    }

    /// The RoPE settings of the model's whole-context layers.
    pub fn rope(&self) -> Rope {
        Rope {
            head_size: self.head_size,
            rope_dim: self.rope_dim,
            theta: self.rope_theta,
            freq_factors: self.rope_freq_factors.clone(),
            pairing: self.block().rope_pairing,
        }
    }
}

/// One transformer block's weights. Matrices are (out, in): `y = W x`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// (1, dim) RMSNorm weights before attention.
    pub rms_att: Tensor,
    /// (q_dim, dim) query projection, q_dim = n_heads * head_size.
    pub wq: Tensor,
    /// (kv_dim, dim) key projection.
    pub wk: Tensor,
    /// (kv_dim, dim) value projection.
    pub wv: Tensor,
    /// (1, q_dim + 2 kv_dim) f32 biases of the q, k and v projections, side
    /// by side, where the block has them ([`Block::qkv_bias`]).
    pub qkv_bias: Option<Tensor>,
    /// (1, 2 head_size) f32 RMSNorm weights of each head of q, then of k,
    /// where the block has them ([`Block::qk_norm`]).
    pub qk_norm: Option<Tensor>,
    /// (dim, q_dim) attention output projection.
    pub wo: Tensor,
    /// (1, dim) RMSNorm weights of the attention output, then of the
    /// feed-forward output, before each joins the residual stream, where
    /// the block has them ([`Block::post_norms`]).
    pub post_norms: Option<(Tensor, Tensor)>,
    /// (1, dim) RMSNorm weights before the feed-forward block.
    pub rms_ffn: Tensor,
    /// (hidden_dim, dim) feed-forward gate projection.
    pub w1: Tensor,
    /// (dim, hidden_dim) feed-forward down projection.
    pub w2: Tensor,
    /// (hidden_dim, dim) feed-forward up projection.
    pub w3: Tensor,
}

/// Model weights as stored in the file (f32, f16, bf16 or quantized).
#[derive(Clone, Debug)]
pub struct Weights {
    /// (vocab_size, dim) token embedding table.
    pub token_embedding: Tensor,
    /// One entry per block.
    pub layers: Vec<LayerWeights>,
    /// (1, dim) final RMSNorm weights.
    pub rms_final: Tensor,
    /// (vocab_size, dim) classifier; `None` when it is `token_embedding`.
    pub wcls: Option<Tensor>,
}

impl Weights {
    /// The classifier matrix, (vocab_size, dim).
    pub fn classifier(&self) -> &Tensor {
        self.wcls.as_ref().unwrap_or(&self.token_embedding)
    }

    /// Every tensor, for totals and conversions.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.token_embedding, &self.rms_final];
        for l in &self.layers {
            all.extend([
                &l.rms_att, &l.wq, &l.wk, &l.wv, &l.wo, &l.rms_ffn, &l.w1, &l.w2, &l.w3,
            ]);
            all.extend(l.qkv_bias.iter().chain(&l.qk_norm));
            all.extend(l.post_norms.iter().flat_map(|(a, f)| [a, f]));
        }
        all.extend(self.wcls.as_ref());
        all
    }

    /// A hash of the model's shape and tensor table (FNV-1a, 64 bits): the
    /// config and each tensor's type and dimensions. Saved KV caches carry
    /// it, so one is never restored onto another model.
    pub fn fingerprint(&self, config: &Config) -> u64 {
        let mut h = Fnv::default();
        h.write(config.family.arch.as_bytes());
        for v in [
            config.dim,
            config.hidden_dim,
            config.n_layers,
            config.n_heads,
            config.n_kv_heads,
            config.head_size,
            config.vocab_size,
            config.seq_len,
            config.rope_dim,
            usize::from(config.shared_classifier),
        ] {
            h.write(&(v as u64).to_le_bytes());
        }
        h.write(&(config.sliding_window as u64).to_le_bytes());
        for v in [config.norm_eps, config.rope_theta, config.rope_theta_window] {
            h.write(&v.to_bits().to_le_bytes());
        }
        for f in config.rope_freq_factors.iter().flatten() {
            h.write(&f.to_bits().to_le_bytes());
        }
        for t in self.tensors() {
            h.write(&t.dtype.ggml_id().to_le_bytes());
            h.write(&(t.rows as u64).to_le_bytes());
            h.write(&(t.cols as u64).to_le_bytes());
        }
        h.0
    }

    /// Bytes of all weights as stored.
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.bytes().len() as u64).sum()
    }

    /// Converts every matrix to `dtype` (norm vectors stay as they are);
    /// rows whose length is not a whole number of `dtype` blocks stay F16.
    pub fn convert(&self, dtype: DType) -> Weights {
        let conv = |t: &Tensor| {
            if t.dtype == dtype {
                return t.clone();
            }
            t.convert(dtype)
                .or_else(|| t.convert(DType::F16))
                .expect("F16 takes any row length")
        };
        Weights {
            token_embedding: conv(&self.token_embedding),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    rms_att: l.rms_att.clone(),
                    wq: conv(&l.wq),
                    wk: conv(&l.wk),
                    wv: conv(&l.wv),
                    qkv_bias: l.qkv_bias.clone(),
                    qk_norm: l.qk_norm.clone(),
                    wo: conv(&l.wo),
                    post_norms: l.post_norms.clone(),
                    rms_ffn: l.rms_ffn.clone(),
                    w1: conv(&l.w1),
                    w2: conv(&l.w2),
                    w3: conv(&l.w3),
                })
                .collect(),
            rms_final: self.rms_final.clone(),
            wcls: self.wcls.as_ref().map(conv),
        }
    }
}

/// FNV-1a, 64 bits: a small hash for fingerprints and checksums.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    /// Hashes `bytes` in.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
}

/// A model: its config and weights.
#[derive(Clone, Debug)]
pub struct Model {
    /// Hyper-parameters.
    pub config: Config,
    /// Weights.
    pub weights: Weights,
}

impl Model {
    /// Reads a model file by its contents: GGUF (with the tokenizer inside) or
    /// a llama2.c checkpoint (no tokenizer: it is a separate file).
    pub fn load(path: impl AsRef<Path>) -> Result<(Model, Option<Tokenizer>)> {
        let path = path.as_ref();
        let not_a_model = |reason: String| Error::NotAModel {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.is_dir() {
            return Err(not_a_model("it is a directory".into()));
        }
        // The first 28 bytes: GGUF's magic, or a llama2.c header.
        let mut head = Vec::with_capacity(28);
        std::fs::File::open(path)
            .and_then(|f| f.take(28).read_to_end(&mut head))
            .map_err(io)?;
        if head.is_empty() {
            return Err(not_a_model("the file is empty".into()));
        }
        if !head.starts_with(b"GGUF") {
            if head.len() < 28 {
                return Err(not_a_model(format!(
                    "{} bytes: too short for a llama2.c header",
                    head.len()
                )));
            }
            let header: [i32; 7] = std::array::from_fn(|i| {
                i32::from_le_bytes(head[4 * i..4 * i + 4].try_into().expect("4 bytes"))
            });
            if let Err(e) = Config::from_llama2c_header(header) {
                return Err(not_a_model(format!("no GGUF magic, and {e}")));
            }
        }
        if head.starts_with(b"GGUF") {
            let g = Gguf::open(path)?;
            let model = Model::from_gguf(&g)?;
            let tokenizer = Tokenizer::from_gguf(&g)?;
            if tokenizer.vocab_size() != model.config.vocab_size {
                return Err(g.error(GgufError::BadValue {
                    key: "tokenizer.ggml.tokens".into(),
                    reason: format!(
                        "{} tokens for a {}-row embedding",
                        tokenizer.vocab_size(),
                        model.config.vocab_size
                    ),
                }));
            }
            Ok((model, Some(tokenizer)))
        } else {
            Ok((Model::load_llama2c(path)?, None))
        }
    }

    /// Checks the config ([`Config::validate`]) and that every layer has
    /// exactly the optional tensors its block computes with, of their shapes.
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        c.validate()?;
        let block = c.block();
        for (i, l) in self.weights.layers.iter().enumerate() {
            let (post_att, post_ffn) = match &l.post_norms {
                Some((a, f)) => (Some(a.clone()), Some(f.clone())),
                None => (None, None),
            };
            for (field, wanted, t, len) in [
                (
                    "qkv_bias",
                    block.qkv_bias,
                    &l.qkv_bias,
                    c.q_dim() + 2 * c.kv_dim(),
                ),
                ("qk_norm", block.qk_norm, &l.qk_norm, 2 * c.head_size),
                ("post_norms", block.post_norms, &post_att, c.dim),
                ("post_norms", block.post_norms, &post_ffn, c.dim),
            ] {
                let reason = match (wanted, t) {
                    (true, None) => {
                        format!("layer {i} has none; the {} block needs it", c.family.arch)
                    }
                    (false, Some(_)) => {
                        format!("layer {i} has one; the {} block has none", c.family.arch)
                    }
                    (true, Some(t)) if (t.rows, t.cols) != (1, len) => {
                        format!("layer {i}'s is {}x{}, not 1x{len}", t.rows, t.cols)
                    }
                    _ => continue,
                };
                return Err(Error::InvalidConfig {
                    field,
                    value: i as i64,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// A model with seeded random f32 weights (uniform in ±0.5/sqrt(fan-in),
    /// norms near 1): for tests and benchmarks of realistic shapes without files.
    pub fn random(config: Config, seed: u64) -> Result<Model> {
        config.validate()?;
        let rng = &mut XorShift::new(seed);
        let c = &config;
        let (d, h, v, kv, q) = (c.dim, c.hidden_dim, c.vocab_size, c.kv_dim(), c.q_dim());
        // Uniform in ±0.5 * scale / sqrt(cols).
        let mat = |rng: &mut XorShift, rows: usize, cols: usize, scale: f32| {
            let s = scale / (cols as f32).sqrt();
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.next_f32() - 0.5) * s)
                .collect();
            Tensor::from_f32(rows, cols, &values)
        };
        // Uniform in [0.75, 1.25).
        let norm_of = |rng: &mut XorShift, n: usize| {
            let values: Vec<f32> = (0..n).map(|_| 0.75 + 0.5 * rng.next_f32()).collect();
            Tensor::from_f32(1, n, &values)
        };
        let norm = |rng: &mut XorShift| norm_of(rng, d);
        let block = c.block();
        let token_embedding = mat(rng, v, d, (d as f32).sqrt());
        let layers = (0..c.n_layers)
            .map(|_| LayerWeights {
                rms_att: norm(rng),
                wq: mat(rng, q, d, 1.0),
                wk: mat(rng, kv, d, 1.0),
                wv: mat(rng, kv, d, 1.0),
                // Biases uniform in ±0.25.
                qkv_bias: block
                    .qkv_bias
                    .then(|| mat(rng, 1, q + 2 * kv, 0.5 * ((q + 2 * kv) as f32).sqrt())),
                qk_norm: block.qk_norm.then(|| norm_of(rng, 2 * c.head_size)),
                wo: mat(rng, d, q, 1.0),
                post_norms: block.post_norms.then(|| (norm(rng), norm(rng))),
                rms_ffn: norm(rng),
                w1: mat(rng, h, d, 1.0),
                w2: mat(rng, d, h, 1.0),
                w3: mat(rng, h, d, 1.0),
            })
            .collect();
        let wcls = (!c.shared_classifier).then(|| mat(rng, v, d, 1.0));
        let rms_final = norm(rng);
        Ok(Model {
            config,
            weights: Weights {
                token_embedding,
                layers,
                rms_final,
                wcls,
            },
        })
    }

    /// [`Model::random`] with its matrices stored as `dtype`: the same
    /// values quantized where [`quantize`](crate::tensor::quantize) writes
    /// `dtype`, else random blocks of the same root-mean-square; matrices
    /// whose rows are not whole `dtype` blocks are F16 (as llama.cpp's
    /// presets fall back). Benchmarks and tests of every weight type.
    pub fn random_with(config: Config, dtype: DType, seed: u64) -> Result<Model> {
        let model = Model::random(config, seed)?;
        if crate::tensor::QUANTIZERS.contains(&dtype) {
            return Ok(Model {
                weights: model.weights.convert(dtype),
                config: model.config,
            });
        }
        let mut weights = model.weights.convert(DType::F16);
        let mut n = seed;
        let mut block = |t: &mut Tensor| {
            n += 1;
            let values = t.to_f32();
            let rms = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
            if let Some(q) = Tensor::random(dtype, t.rows, t.cols, rms, n) {
                *t = q;
            }
        };
        block(&mut weights.token_embedding);
        for l in &mut weights.layers {
            for t in [
                &mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w1, &mut l.w2, &mut l.w3,
            ] {
                block(t);
            }
        }
        weights.wcls.as_mut().map(block);
        Ok(Model {
            weights,
            config: model.config,
        })
    }
}
