//! Model hyper-parameters and weights, and the llama2.c checkpoint reader.
//!
//! Format (Karpathy's llama2.c, "version 0"): a header of 7 little-endian i32
//! (`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`; a
//! negative `vocab_size` means the classifier is stored separately), then f32
//! tensors in the order of [`Weights`], with a legacy RoPE table
//! (`seq_len * head_size` floats) before the optional classifier.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::gguf::{Gguf, GgufError};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

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
    /// Vocabulary size in tokens.
    pub vocab_size: usize,
    /// Longest context the model was trained for, in positions.
    pub seq_len: usize,
    /// Whether the classifier reuses the token embedding table.
    pub shared_classifier: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Dimensions of each head that RoPE rotates (the first `rope_dim`; even, at most head_size).
    pub rope_dim: usize,
    /// Llama-3-style per-pair frequency divisors ((rope_dim / 2,)), if any.
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl Config {
    /// Size of one attention head.
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the K and V vectors of one position (`n_kv_heads * head_size`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// Number of query heads that share one K/V head.
    pub fn kv_mul(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Builds a config from llama2.c's header fields, checking each one.
    pub fn from_llama2c_header(h: [i32; 7]) -> Result<Self> {
        let [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len] = h;
        let positive = |field: &'static str, v: i32| -> Result<usize> {
            if v > 0 {
                Ok(v as usize)
            } else {
                Err(Error::InvalidConfig {
                    field,
                    value: v as i64,
                    reason: "must be positive".into(),
                })
            }
        };
        let config = Config {
            dim: positive("dim", dim)?,
            hidden_dim: positive("hidden_dim", hidden_dim)?,
            n_layers: positive("n_layers", n_layers)?,
            n_heads: positive("n_heads", n_heads)?,
            n_kv_heads: positive("n_kv_heads", n_kv_heads)?,
            vocab_size: positive("vocab_size", vocab_size.checked_abs().unwrap_or(0))?,
            seq_len: positive("seq_len", seq_len)?,
            shared_classifier: vocab_size > 0,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_dim: 0,
            rope_freq_factors: None,
        };
        let config = Config {
            rope_dim: config.head_size(),
            ..config
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between fields: heads divide evenly, head size is even.
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
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
        ] {
            if v == 0 || v > i32::MAX as usize {
                return bad(field, v, "must be between 1 and 2^31-1".into());
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(
                "n_heads",
                self.n_heads,
                format!("does not divide dim {}", self.dim),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                self.n_kv_heads,
                format!("does not divide n_heads {}", self.n_heads),
            );
        }
        if !self.head_size().is_multiple_of(2) {
            return bad(
                "n_heads",
                self.n_heads,
                format!(
                    "gives an odd head size {} (RoPE rotates pairs)",
                    self.head_size()
                ),
            );
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad(
                "norm_eps",
                0,
                "norm_eps and rope_theta must be positive".into(),
            );
        }
        if self.rope_dim == 0
            || self.rope_dim > self.head_size()
            || !self.rope_dim.is_multiple_of(2)
        {
            return bad(
                "rope_dim",
                self.rope_dim,
                format!(
                    "must be even and at most the head size {}",
                    self.head_size()
                ),
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

    /// The RoPE settings of this model.
    pub fn rope(&self) -> crate::ops::rope_append::Rope {
        crate::ops::rope_append::Rope {
            head_size: self.head_size(),
            rope_dim: self.rope_dim,
            theta: self.rope_theta,
            freq_factors: self.rope_freq_factors.clone(),
        }
    }

    /// Number of f32 values in each tensor, in file order, or `None` on overflow.
    fn tensor_lens(&self) -> Option<[(&'static str, usize); 11]> {
        let (d, h, l, v) = (self.dim, self.hidden_dim, self.n_layers, self.vocab_size);
        let kv = self.kv_dim();
        let m = |a: usize, b: usize| a.checked_mul(b);
        let rope_table = m(self.seq_len, self.head_size())?;
        Some([
            ("token_embedding", m(v, d)?),
            ("rms_att", m(l, d)?),
            ("wq", m(m(l, d)?, d)?),
            ("wk", m(m(l, d)?, kv)?),
            ("wv", m(m(l, d)?, kv)?),
            ("wo", m(m(l, d)?, d)?),
            ("rms_ffn", m(l, d)?),
            ("w1", m(m(l, d)?, h)?),
            ("w2", m(m(l, h)?, d)?),
            ("w3", m(m(l, d)?, h)?),
            // rms_final, the legacy RoPE table, then the classifier if not shared.
            (
                "rms_final+rope+cls",
                d.checked_add(rope_table)?
                    .checked_add(if self.shared_classifier { 0 } else { m(v, d)? })?,
            ),
        ])
    }

    /// Exact byte length of a llama2.c checkpoint with this config.
    pub fn llama2c_file_size(&self) -> Option<u64> {
        let floats = self
            .tensor_lens()?
            .iter()
            .try_fold(0usize, |acc, (_, n)| acc.checked_add(*n))?;
        (floats as u64).checked_mul(4)?.checked_add(28)
    }
}

/// The config in a llama2.c header (28 bytes) and the exact file size it implies.
fn llama2c_layout(header: &[u8]) -> Result<(Config, u64)> {
    let header: [i32; 7] = std::array::from_fn(|i| {
        i32::from_le_bytes(header[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    });
    let config = Config::from_llama2c_header(header)?;
    let expected = config
        .llama2c_file_size()
        .ok_or_else(|| Error::InvalidConfig {
            field: "dim",
            value: config.dim as i64,
            reason: "tensor sizes overflow".into(),
        })?;
    Ok((config, expected))
}

/// One transformer block's weights. Matrices are (out, in): `y = W x`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// (1, dim) RMSNorm weights before attention.
    pub rms_att: Tensor,
    /// (n_heads * head_size, dim) query projection.
    pub wq: Tensor,
    /// (kv_dim, dim) key projection.
    pub wk: Tensor,
    /// (kv_dim, dim) value projection.
    pub wv: Tensor,
    /// (dim, n_heads * head_size) attention output projection.
    pub wo: Tensor,
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
        }
        all.extend(self.wcls.as_ref());
        all
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
                    wo: conv(&l.wo),
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

/// A model: its config and weights.
#[derive(Clone, Debug)]
pub struct Model {
    /// Hyper-parameters.
    pub config: Config,
    /// Weights.
    pub weights: Weights,
}

impl Model {
    /// Reads a llama2.c checkpoint, validating the header and the exact file
    /// size before reading the weights. Tensors share the file's bytes.
    pub fn load_llama2c(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let found = file.metadata().map_err(io)?.len();
        if found < 28 {
            return Err(Error::CheckpointSize {
                path: path.to_path_buf(),
                expected: 28,
                found,
            });
        }
        let mut header = [0u8; 28];
        file.read_exact(&mut header).map_err(io)?;
        let (_, expected) = llama2c_layout(&header)?;
        if found != expected {
            return Err(Error::CheckpointSize {
                path: path.to_path_buf(),
                expected,
                found,
            });
        }
        let mut bytes = Vec::with_capacity(found as usize);
        bytes.extend_from_slice(&header);
        file.read_to_end(&mut bytes).map_err(io)?;
        Self::from_llama2c_bytes(bytes).map_err(|e| match e {
            Error::CheckpointSize {
                expected, found, ..
            } => Error::CheckpointSize {
                path: path.to_path_buf(),
                expected,
                found,
            },
            e => e,
        })
    }

    /// Parses a llama2.c checkpoint held in memory (see [`Model::load_llama2c`]).
    pub fn from_llama2c_bytes(bytes: Vec<u8>) -> Result<Model> {
        let size_error = |expected, found| Error::CheckpointSize {
            path: "<memory>".into(),
            expected,
            found,
        };
        if bytes.len() < 28 {
            return Err(size_error(28, bytes.len() as u64));
        }
        let (config, expected) = llama2c_layout(&bytes[..28])?;
        if bytes.len() as u64 != expected {
            return Err(size_error(expected, bytes.len() as u64));
        }
        let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes);
        let c = &config;
        let (d, h, l, kv) = (c.dim, c.hidden_dim, c.n_layers, c.kv_dim());
        // Walks the file: each call takes `count` matrices of (rows, cols) f32.
        let mut at = 28usize;
        let mut take = |count: usize, rows: usize, cols: usize| -> Vec<Tensor> {
            (0..count)
                .map(|_| {
                    let n = rows * cols * 4;
                    let t = Tensor::from_shared(DType::F32, rows, cols, bytes.clone(), at..at + n);
                    at += n;
                    t
                })
                .collect()
        };
        let token_embedding = take(1, c.vocab_size, d).remove(0);
        let rms_att = take(l, 1, d);
        let wq = take(l, d, d);
        let wk = take(l, kv, d);
        let wv = take(l, kv, d);
        let wo = take(l, d, d);
        let rms_ffn = take(l, 1, d);
        let w1 = take(l, h, d);
        let w2 = take(l, d, h);
        let w3 = take(l, h, d);
        let rms_final = take(1, 1, d).remove(0);
        take(1, c.seq_len, c.head_size()); // legacy RoPE table, unused
        let wcls = (!c.shared_classifier).then(|| take(1, c.vocab_size, d).remove(0));
        let layers = (0..l)
            .map(|i| LayerWeights {
                rms_att: rms_att[i].clone(),
                wq: wq[i].clone(),
                wk: wk[i].clone(),
                wv: wv[i].clone(),
                wo: wo[i].clone(),
                rms_ffn: rms_ffn[i].clone(),
                w1: w1[i].clone(),
                w2: w2[i].clone(),
                w3: w3[i].clone(),
            })
            .collect();
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

    /// Reads a model file by its contents: GGUF (with the tokenizer inside) or
    /// a llama2.c checkpoint (no tokenizer: it is a separate file).
    pub fn load(path: impl AsRef<Path>) -> Result<(Model, Option<crate::Tokenizer>)> {
        let path = path.as_ref();
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && &magic == b"GGUF";
        if is_gguf {
            let g = Gguf::open(path)?;
            let model = Model::from_gguf(&g)?;
            let tokenizer = crate::Tokenizer::from_gguf(&g)?;
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

    /// Reads a Llama-architecture model from a GGUF file's metadata and
    /// tensors (which stay in the file's mapping; quantized ones stay quantized).
    pub fn from_gguf(g: &Gguf) -> Result<Model> {
        let arch = g.string("general.architecture")?.unwrap_or("");
        if arch != "llama" {
            return Err(g.error(GgufError::UnsupportedArchitecture(arch.into())));
        }
        let bad = |key: &str, reason: String| {
            g.error(GgufError::BadValue {
                key: key.into(),
                reason,
            })
        };
        let size = |key: &str, default: Option<u64>| -> Result<usize> {
            let v = g.uint(key, default)?;
            if v == 0 || v > i32::MAX as u64 {
                return Err(bad(key, format!("{v} is not between 1 and 2^31-1")));
            }
            Ok(v as usize)
        };
        let n_heads = size("llama.attention.head_count", None)?;
        let dim = size("llama.embedding_length", None)?;
        let vocab_size = match g.strings("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => size("llama.vocab_size", None)?,
        };
        let info = |name: &str| g.tensor_info(name);
        let mut config = Config {
            dim,
            hidden_dim: size("llama.feed_forward_length", None)?,
            n_layers: size("llama.block_count", None)?,
            n_heads,
            n_kv_heads: size("llama.attention.head_count_kv", Some(n_heads as u64))?,
            vocab_size,
            seq_len: size("llama.context_length", None)?,
            shared_classifier: info("output.weight").is_none(),
            norm_eps: g.float("llama.attention.layer_norm_rms_epsilon", Some(1e-5))? as f32,
            rope_theta: g.float("llama.rope.freq_base", Some(10000.0))? as f32,
            rope_dim: 0,
            rope_freq_factors: None,
        };
        if !dim.is_multiple_of(n_heads) {
            return Err(bad(
                "llama.attention.head_count",
                format!("{n_heads} does not divide {dim}"),
            ));
        }
        config.rope_dim = size(
            "llama.rope.dimension_count",
            Some(config.head_size() as u64),
        )?;
        if info("rope_freqs.weight").is_some() {
            let t = g
                .tensor("rope_freqs.weight", &[config.rope_dim as u64 / 2])
                .map_err(|k| g.error(k))?;
            config.rope_freq_factors = Some(t.to_f32());
        }
        config.validate()?;
        let c = &config;
        let (d, h, kv, v) = (
            c.dim as u64,
            c.hidden_dim as u64,
            c.kv_dim() as u64,
            c.vocab_size as u64,
        );
        let q = (c.n_heads * c.head_size()) as u64;
        let t = |name: String, shape: &[u64]| g.tensor(&name, shape).map_err(|k| g.error(k));
        let layers = (0..c.n_layers)
            .map(|i| {
                let b = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(LayerWeights {
                    rms_att: t(b("attn_norm"), &[d])?,
                    wq: t(b("attn_q"), &[d, q])?,
                    wk: t(b("attn_k"), &[d, kv])?,
                    wv: t(b("attn_v"), &[d, kv])?,
                    wo: t(b("attn_output"), &[q, d])?,
                    rms_ffn: t(b("ffn_norm"), &[d])?,
                    w1: t(b("ffn_gate"), &[d, h])?,
                    w2: t(b("ffn_down"), &[h, d])?,
                    w3: t(b("ffn_up"), &[d, h])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = Weights {
            token_embedding: t("token_embd.weight".into(), &[d, v])?,
            layers,
            rms_final: t("output_norm.weight".into(), &[d])?,
            wcls: match c.shared_classifier {
                true => None,
                false => Some(t("output.weight".into(), &[d, v])?),
            },
        };
        Ok(Model { config, weights })
    }

    /// Writes the model as a llama2.c checkpoint (f32; the legacy RoPE table
    /// is written as zeros). Tests use it to build files with chosen defects.
    pub fn save_llama2c(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let c = &self.config;
        let vocab = if c.shared_classifier {
            c.vocab_size as i32
        } else {
            -(c.vocab_size as i32)
        };
        let header = [
            c.dim as i32,
            c.hidden_dim as i32,
            c.n_layers as i32,
            c.n_heads as i32,
            c.n_kv_heads as i32,
            vocab,
            c.seq_len as i32,
        ];
        let w = &self.weights;
        let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut put = |t: &Tensor| bytes.extend(t.to_f32().iter().flat_map(|v| v.to_le_bytes()));
        put(&w.token_embedding);
        type Field = fn(&LayerWeights) -> &Tensor;
        let fields: [Field; 9] = [
            |l| &l.rms_att,
            |l| &l.wq,
            |l| &l.wk,
            |l| &l.wv,
            |l| &l.wo,
            |l| &l.rms_ffn,
            |l| &l.w1,
            |l| &l.w2,
            |l| &l.w3,
        ];
        for field in fields {
            for layer in &w.layers {
                put(field(layer));
            }
        }
        put(&w.rms_final);
        put(&Tensor::from_f32(
            1,
            c.seq_len * c.head_size(),
            &vec![0.0; c.seq_len * c.head_size()],
        ));
        if let Some(cls) = &w.wcls {
            put(cls);
        }
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A model with seeded random f32 weights (uniform in ±0.5/sqrt(fan-in),
    /// norms near 1): for tests and benchmarks of realistic shapes without files.
    pub fn random(config: Config, seed: u64) -> Result<Model> {
        config.validate()?;
        let rng = &mut crate::sampler::XorShift::new(seed);
        let c = &config;
        let (d, h, v, kv) = (c.dim, c.hidden_dim, c.vocab_size, c.kv_dim());
        // Uniform in ±0.5 * scale / sqrt(cols).
        let mat = |rng: &mut crate::sampler::XorShift, rows: usize, cols: usize, scale: f32| {
            let s = scale / (cols as f32).sqrt();
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.next_f32() - 0.5) * s)
                .collect();
            Tensor::from_f32(rows, cols, &values)
        };
        // Uniform in [0.75, 1.25).
        let norm = |rng: &mut crate::sampler::XorShift| {
            let values: Vec<f32> = (0..d).map(|_| 0.75 + 0.5 * rng.next_f32()).collect();
            Tensor::from_f32(1, d, &values)
        };
        let token_embedding = mat(rng, v, d, (d as f32).sqrt());
        let layers = (0..c.n_layers)
            .map(|_| LayerWeights {
                rms_att: norm(rng),
                wq: mat(rng, d, d, 1.0),
                wk: mat(rng, kv, d, 1.0),
                wv: mat(rng, kv, d, 1.0),
                wo: mat(rng, d, d, 1.0),
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
}
