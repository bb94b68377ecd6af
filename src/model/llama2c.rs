//! The llama2.c checkpoint format (Karpathy's llama2.c, "version 0"): a
//! header of 7 little-endian i32 (`dim, hidden_dim, n_layers, n_heads,
//! n_kv_heads, vocab_size, seq_len`; a negative `vocab_size` means the
//! classifier is stored separately), then f32 tensors in the order of
//! [`Weights`], with a legacy RoPE table (`seq_len * head_size` floats)
//! before the optional classifier.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::{Config, LayerWeights, Model, Weights};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

impl Config {
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
        let (dim, n_heads) = (positive("dim", dim)?, positive("n_heads", n_heads)?);
        // llama2.c's heads split dim evenly.
        if !dim.is_multiple_of(n_heads) {
            return Err(Error::InvalidConfig {
                field: "n_heads",
                value: n_heads as i64,
                reason: format!("does not divide dim {dim}"),
            });
        }
        let config = Config {
            dim,
            hidden_dim: positive("hidden_dim", hidden_dim)?,
            n_layers: positive("n_layers", n_layers)?,
            n_heads,
            n_kv_heads: positive("n_kv_heads", n_kv_heads)?,
            head_size: dim / n_heads,
            vocab_size: positive("vocab_size", vocab_size.checked_abs().unwrap_or(0))?,
            seq_len: positive("seq_len", seq_len)?,
            shared_classifier: vocab_size > 0,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_theta_window: 10000.0,
            sliding_window: 0,
            rope_dim: dim / n_heads,
            rope_freq_factors: None,
            family: crate::arch::Family::llama(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Number of f32 values in each tensor, in file order, or `None` on overflow.
    fn tensor_lens(&self) -> Option<[(&'static str, usize); 11]> {
        let (d, h, l, v) = (self.dim, self.hidden_dim, self.n_layers, self.vocab_size);
        let kv = self.kv_dim();
        let m = |a: usize, b: usize| a.checked_mul(b);
        let rope_table = m(self.seq_len, self.head_size)?;
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

impl Model {
    /// Reads a llama2.c checkpoint, validating the header and the exact file
    /// size before mapping the file: tensors read the map, so a checkpoint
    /// of any size takes no memory of its own.
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
        // SAFETY: the map is read-only and kvgpu never writes the file; its
        // size was checked above, and a concurrent writer could at worst
        // change weight values (every shape comes from the header read here).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_llama2c_shared(Arc::new(map)).map_err(|e| match e {
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
        Self::from_llama2c_shared(Arc::new(bytes))
    }

    /// A llama2.c checkpoint's tensors over `bytes` (owned or mapped).
    fn from_llama2c_shared(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<Model> {
        let size_error = |expected, found| Error::CheckpointSize {
            path: "<memory>".into(),
            expected,
            found,
        };
        let len = (*bytes).as_ref().len();
        if len < 28 {
            return Err(size_error(28, len as u64));
        }
        let (config, expected) = llama2c_layout(&(*bytes).as_ref()[..28])?;
        if len as u64 != expected {
            return Err(size_error(expected, len as u64));
        }
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
        take(1, c.seq_len, c.head_size); // legacy RoPE table, unused
        let wcls = (!c.shared_classifier).then(|| take(1, c.vocab_size, d).remove(0));
        let layers = (0..l)
            .map(|i| LayerWeights {
                rms_att: rms_att[i].clone(),
                wq: wq[i].clone(),
                wk: wk[i].clone(),
                wv: wv[i].clone(),
                qkv_bias: None,
                qk_norm: None,
                wo: wo[i].clone(),
                post_norms: None,
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

    /// Writes the model as a llama2.c checkpoint (f32; the legacy RoPE table
    /// is written as zeros). Tests use it to build files with chosen defects.
    /// Only Llama models whose heads split dim evenly have this format.
    pub fn save_llama2c(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let c = &self.config;
        if c.family.arch != "llama" || c.q_dim() != c.dim {
            return Err(Error::InvalidConfig {
                field: "family",
                value: c.head_size as i64,
                reason: format!(
                    "llama2.c checkpoints hold Llama blocks with dim / n_heads heads, not {} with heads of {}",
                    c.family.arch, c.head_size
                ),
            });
        }
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
            c.seq_len * c.head_size,
            &vec![0.0; c.seq_len * c.head_size],
        ));
        if let Some(cls) = &w.wcls {
            put(cls);
        }
        std::fs::write(path, bytes).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}
