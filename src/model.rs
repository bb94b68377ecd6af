//! Model hyper-parameters and weights, and the llama2.c checkpoint reader.
//!
//! Format (Karpathy's llama2.c, "version 0"): a header of 7 little-endian i32
//! (`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`; a
//! negative `vocab_size` means the classifier is stored separately), then f32
//! tensors in the order of [`Weights`], with a legacy RoPE table
//! (`seq_len * head_size` floats) before the optional classifier.

use std::io::Read;
use std::path::Path;

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
        Ok(())
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

/// Model weights on the host, f32, laid out as in llama2.c (all layers of one
/// tensor kind concatenated). Matrices are row-major `(out, in)`: `y = W x`.
#[derive(Clone, Debug)]
pub struct Weights {
    /// (vocab_size, dim) token embedding table.
    pub token_embedding: Vec<f32>,
    /// (n_layers, dim) RMSNorm weights before attention.
    pub rms_att: Vec<f32>,
    /// (n_layers, n_heads * head_size, dim) query projection.
    pub wq: Vec<f32>,
    /// (n_layers, kv_dim, dim) key projection.
    pub wk: Vec<f32>,
    /// (n_layers, kv_dim, dim) value projection.
    pub wv: Vec<f32>,
    /// (n_layers, dim, n_heads * head_size) attention output projection.
    pub wo: Vec<f32>,
    /// (n_layers, dim) RMSNorm weights before the feed-forward block.
    pub rms_ffn: Vec<f32>,
    /// (n_layers, hidden_dim, dim) feed-forward gate projection.
    pub w1: Vec<f32>,
    /// (n_layers, dim, hidden_dim) feed-forward down projection.
    pub w2: Vec<f32>,
    /// (n_layers, hidden_dim, dim) feed-forward up projection.
    pub w3: Vec<f32>,
    /// (dim,) final RMSNorm weights.
    pub rms_final: Vec<f32>,
    /// (vocab_size, dim) classifier; `None` when it is `token_embedding`.
    pub wcls: Option<Vec<f32>>,
}

impl Weights {
    /// The classifier matrix, (vocab_size, dim).
    pub fn classifier(&self) -> &[f32] {
        self.wcls.as_deref().unwrap_or(&self.token_embedding)
    }
}

/// A model: its config and host weights.
#[derive(Clone, Debug)]
pub struct Model {
    /// Hyper-parameters.
    pub config: Config,
    /// Weights, f32.
    pub weights: Weights,
}

impl Model {
    /// Reads a llama2.c checkpoint, validating the header and the exact file
    /// size before allocating anything for the weights.
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
        let mut header = [0i32; 7];
        file.read_exact(bytemuck::cast_slice_mut(&mut header))
            .map_err(io)?;
        let header = header.map(i32::from_le);
        let config = Config::from_llama2c_header(header)?;
        let expected = config
            .llama2c_file_size()
            .ok_or_else(|| Error::InvalidConfig {
                field: "dim",
                value: config.dim as i64,
                reason: "tensor sizes overflow".into(),
            })?;
        if found != expected {
            return Err(Error::CheckpointSize {
                path: path.to_path_buf(),
                expected,
                found,
            });
        }
        let lens = config.tensor_lens().expect("checked by llama2c_file_size");
        let mut read = |n: usize| -> Result<Vec<f32>> {
            let mut v = vec![0f32; n];
            file.read_exact(bytemuck::cast_slice_mut(&mut v))
                .map_err(io)?;
            if cfg!(target_endian = "big") {
                v.iter_mut()
                    .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
            }
            Ok(v)
        };
        let mut t = lens.iter().map(|(_, n)| *n);
        let mut next = || read(t.next().expect("11 tensors"));
        let mut weights = Weights {
            token_embedding: next()?,
            rms_att: next()?,
            wq: next()?,
            wk: next()?,
            wv: next()?,
            wo: next()?,
            rms_ffn: next()?,
            w1: next()?,
            w2: next()?,
            w3: next()?,
            rms_final: Vec::new(),
            wcls: None,
        };
        let tail = next()?;
        let d = config.dim;
        weights.rms_final = tail[..d].to_vec();
        if !config.shared_classifier {
            let cls_start = d + config.seq_len * config.head_size();
            weights.wcls = Some(tail[cls_start..].to_vec());
        }
        Ok(Model { config, weights })
    }

    /// Writes the model as a llama2.c checkpoint (the legacy RoPE table is
    /// written as zeros). Tests use it to build files with chosen defects.
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
        let rope_table = vec![0f32; c.seq_len * c.head_size()];
        let mut tensors: Vec<&[f32]> = vec![
            &w.token_embedding,
            &w.rms_att,
            &w.wq,
            &w.wk,
            &w.wv,
            &w.wo,
            &w.rms_ffn,
            &w.w1,
            &w.w2,
            &w.w3,
            &w.rms_final,
            &rope_table,
        ];
        if let Some(cls) = &w.wcls {
            tensors.push(cls);
        }
        for t in tensors {
            bytes.extend(t.iter().flat_map(|v| v.to_le_bytes()));
        }
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A model with seeded random weights (uniform in ±0.5/sqrt(fan-in), norms
    /// near 1): for tests and benchmarks of realistic shapes without files.
    pub fn random(config: Config, seed: u64) -> Result<Model> {
        config.validate()?;
        let mut rng = crate::sampler::XorShift::new(seed);
        let c = &config;
        let (d, h, l, v, kv) = (c.dim, c.hidden_dim, c.n_layers, c.vocab_size, c.kv_dim());
        let mut mat = |n: usize, fan_in: usize| -> Vec<f32> {
            let s = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| (rng.next_f32() - 0.5) * s).collect()
        };
        let token_embedding = mat(v * d, 1);
        let wq = mat(l * d * d, d);
        let wk = mat(l * kv * d, d);
        let wv = mat(l * kv * d, d);
        let wo = mat(l * d * d, d);
        let w1 = mat(l * h * d, d);
        let w2 = mat(l * d * h, h);
        let w3 = mat(l * h * d, d);
        let wcls = (!c.shared_classifier).then(|| mat(v * d, d));
        let mut norm =
            |n: usize| -> Vec<f32> { (0..n).map(|_| 0.75 + 0.5 * rng.next_f32()).collect() };
        let weights = Weights {
            token_embedding,
            rms_att: norm(l * d),
            wq,
            wk,
            wv,
            wo,
            rms_ffn: norm(l * d),
            w1,
            w2,
            w3,
            rms_final: norm(d),
            wcls,
        };
        Ok(Model { config, weights })
    }
}
