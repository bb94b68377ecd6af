//! Llama models in GGUF files: reading one (tensors stay in the file's
//! mapping; quantized ones stay quantized) and writing one.

use super::{Config, LayerWeights, Model, Weights};
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, GgufError, Value};
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;

impl Model {
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

    /// The model and its tokenizer as a GGUF v3 file, with every matrix
    /// converted to `dtype` (rows that are not whole `dtype` blocks stay F16;
    /// norm vectors stay F32). What `kvgpu quantize` and `examples/quantize.rs` write.
    pub fn to_gguf(&self, tokenizer: &Tokenizer, dtype: DType) -> Result<Vec<u8>> {
        let model = self;
        let c = &model.config;
        let u = |v: usize| Value::U32(v as u32);
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.context_length".into(), u(c.seq_len)),
            ("llama.embedding_length".into(), u(c.dim)),
            ("llama.block_count".into(), u(c.n_layers)),
            ("llama.feed_forward_length".into(), u(c.hidden_dim)),
            ("llama.attention.head_count".into(), u(c.n_heads)),
            ("llama.attention.head_count_kv".into(), u(c.n_kv_heads)),
            ("llama.rope.dimension_count".into(), u(c.rope_dim)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(c.norm_eps),
            ),
            ("llama.rope.freq_base".into(), Value::F32(c.rope_theta)),
        ];
        metadata.extend(tokenizer.gguf_metadata().ok_or_else(|| {
            Error::Tokenizer("only SentencePiece vocabularies can be written to GGUF".into())
        })?);
        Ok(self.to_gguf_with(&metadata, dtype))
    }

    /// The model as a GGUF v3 file with `metadata` (e.g. a source GGUF
    /// file's, tokenizer and chat template included) and every matrix
    /// converted to `dtype` as [`Model::to_gguf`] does.
    pub fn to_gguf_with(&self, metadata: &[(String, Value)], dtype: DType) -> Vec<u8> {
        let model = self;
        let w = model.weights.convert(dtype);
        let mut named: Vec<(String, &Tensor)> =
            vec![("token_embd.weight".into(), &w.token_embedding)];
        for (i, l) in w.layers.iter().enumerate() {
            for (name, t) in [
                ("attn_norm", &l.rms_att),
                ("attn_q", &l.wq),
                ("attn_k", &l.wk),
                ("attn_v", &l.wv),
                ("attn_output", &l.wo),
                ("ffn_norm", &l.rms_ffn),
                ("ffn_gate", &l.w1),
                ("ffn_down", &l.w2),
                ("ffn_up", &l.w3),
            ] {
                named.push((format!("blk.{i}.{name}.weight"), t));
            }
        }
        named.push(("output_norm.weight".into(), &w.rms_final));
        if let Some(cls) = &w.wcls {
            named.push(("output.weight".into(), cls));
        }
        let tensors: Vec<(String, Vec<u64>, DType, &[u8])> = named
            .iter()
            .map(|(name, t)| {
                let dims = if t.rows == 1 {
                    vec![t.cols as u64]
                } else {
                    vec![t.cols as u64, t.rows as u64]
                };
                (name.clone(), dims, t.dtype, t.bytes())
            })
            .collect();
        let mut metadata = metadata.to_vec();
        metadata.retain(|(k, _)| k != "general.alignment" && k != "general.file_type");
        metadata.push(("general.alignment".into(), Value::U32(32)));
        // llama.cpp's `llama_ftype` of a file mostly of `dtype`.
        let file_type = match dtype {
            DType::F32 => Some(0),
            DType::F16 => Some(1),
            DType::Q4_0 => Some(2),
            DType::Q4_1 => Some(3),
            DType::Q8_0 => Some(7),
            DType::Q5_0 => Some(8),
            DType::Q5_1 => Some(9),
            DType::BF16 => Some(32),
            _ => None,
        };
        if let Some(t) = file_type {
            metadata.push(("general.file_type".into(), Value::U32(t)));
        }
        gguf::write(&metadata, &tensors, 32)
    }
}
