//! Models in GGUF files, of any family in `arch/`: reading one (tensors
//! stay in the file's mapping; quantized ones stay quantized) and writing one.

use super::{Config, LayerWeights, Model, Weights};
use std::borrow::Cow;

use crate::arch::Family;
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, GgufError, Value};
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;

impl Model {
    /// Reads a model of any family in [`FAMILIES`](crate::arch::FAMILIES)
    /// from a GGUF file's metadata and tensors (which stay in the file's
    /// mapping; quantized ones stay quantized).
    pub fn from_gguf(g: &Gguf) -> Result<Model> {
        let arch = g.string("general.architecture")?.unwrap_or("");
        let family = Family::from_arch(arch).ok_or_else(|| {
            g.error(GgufError::UnsupportedArchitecture(
                arch.into(),
                Family::names(),
            ))
        })?;
        let key = |name: &str| format!("{arch}.{name}");
        let bad = |key: &str, reason: String| {
            g.error(GgufError::BadValue {
                key: key.into(),
                reason,
            })
        };
        let size = |name: &str, default: Option<u64>| -> Result<usize> {
            let k = key(name);
            let v = g.uint(&k, default)?;
            if v == 0 || v > i32::MAX as u64 {
                return Err(bad(&k, format!("{v} is not between 1 and 2^31-1")));
            }
            Ok(v as usize)
        };
        let n_heads = size("attention.head_count", None)?;
        let dim = size("embedding_length", None)?;
        let vocab_size = match g.strings("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => size("vocab_size", None)?,
        };
        // Heads are dim / n_heads wide unless the file says otherwise.
        let head_size = match g.get(&key("attention.key_length")) {
            Some(_) => size("attention.key_length", None)?,
            None if dim.is_multiple_of(n_heads) => dim / n_heads,
            None => {
                return Err(bad(
                    &key("attention.head_count"),
                    format!("{n_heads} does not divide {dim}, and no attention.key_length says the head size"),
                ))
            }
        };
        let value_length = size("attention.value_length", Some(head_size as u64))?;
        if value_length != head_size {
            return Err(bad(
                &key("attention.value_length"),
                format!("{value_length} differs from the key length {head_size}"),
            ));
        }
        let info = |name: &str| g.tensor_info(name);
        let rope_theta = g.float(&key("rope.freq_base"), Some(10000.0))? as f32;
        // llama.cpp's base of window layers where the file gives none:
        // 10,000 for Gemma 3, the global base for the others.
        let theta_window = match family.block.window_pattern {
            Some(_) => 10000.0,
            None => rope_theta as f64,
        };
        let mut config = Config {
            dim,
            hidden_dim: size("feed_forward_length", None)?,
            n_layers: size("block_count", None)?,
            n_heads,
            n_kv_heads: size("attention.head_count_kv", Some(n_heads as u64))?,
            head_size,
            vocab_size,
            seq_len: size("context_length", None)?,
            shared_classifier: info("output.weight").is_none(),
            norm_eps: g.float(&key("attention.layer_norm_rms_epsilon"), Some(1e-5))? as f32,
            rope_theta,
            rope_theta_window: g.float(&key("rope.freq_base_swa"), Some(theta_window))? as f32,
            sliding_window: 0,
            rope_dim: 0,
            rope_freq_factors: None,
            family,
        };
        config.rope_dim = size("rope.dimension_count", Some(head_size as u64))?;
        if family.block.window_pattern.is_some() {
            config.sliding_window = size("attention.sliding_window", None)?;
        }
        if info("rope_freqs.weight").is_some() {
            let t = g
                .tensor("rope_freqs.weight", &[config.rope_dim as u64 / 2])
                .map_err(|k| g.error(k))?;
            config.rope_freq_factors = Some(t.to_f32());
        }
        config.validate()?;
        let c = &config;
        let (d, h, kv, v, q, hs) = (
            c.dim as u64,
            c.hidden_dim as u64,
            c.kv_dim() as u64,
            c.vocab_size as u64,
            c.q_dim() as u64,
            c.head_size as u64,
        );
        let t = |name: String, shape: &[u64]| g.tensor(&name, shape).map_err(|k| g.error(k));
        // Vectors side by side as one f32 row.
        let joined = |parts: &[Tensor]| {
            let values: Vec<f32> = parts.iter().flat_map(Tensor::to_f32).collect();
            Tensor::from_f32(1, values.len(), &values)
        };
        let block = c.block();
        let layers = (0..c.n_layers)
            .map(|i| {
                let b = |s: &str| format!("blk.{i}.{s}.weight");
                let (wq, wk, wv) = match family.fused_qkv && info(&b("attn_qkv")).is_some() {
                    true => {
                        let qkv = t(b("attn_qkv"), &[d, q + 2 * kv])?;
                        let (q, kv) = (q as usize, kv as usize);
                        (
                            qkv.slice_rows(0..q),
                            qkv.slice_rows(q..q + kv),
                            qkv.slice_rows(q + kv..q + 2 * kv),
                        )
                    }
                    false => (
                        t(b("attn_q"), &[d, q])?,
                        t(b("attn_k"), &[d, kv])?,
                        t(b("attn_v"), &[d, kv])?,
                    ),
                };
                let (w1, w3) = match family.fused_gate_up {
                    true => {
                        let up = t(b("ffn_up"), &[d, 2 * h])?;
                        let h = h as usize;
                        (up.slice_rows(0..h), up.slice_rows(h..2 * h))
                    }
                    false => (t(b("ffn_gate"), &[d, h])?, t(b("ffn_up"), &[d, h])?),
                };
                let bias = |s: &str, n| t(format!("blk.{i}.attn_{s}.bias"), &[n]);
                Ok(LayerWeights {
                    rms_att: t(b("attn_norm"), &[d])?,
                    wq,
                    wk,
                    wv,
                    qkv_bias: match block.qkv_bias {
                        true => Some(joined(&[bias("q", q)?, bias("k", kv)?, bias("v", kv)?])),
                        false => None,
                    },
                    qk_norm: match block.qk_norm {
                        true => Some(joined(&[
                            t(b("attn_q_norm"), &[hs])?,
                            t(b("attn_k_norm"), &[hs])?,
                        ])),
                        false => None,
                    },
                    wo: t(b("attn_output"), &[q, d])?,
                    post_norms: match block.post_norms {
                        true => Some((
                            t(b("post_attention_norm"), &[d])?,
                            t(b("post_ffw_norm"), &[d])?,
                        )),
                        false => None,
                    },
                    rms_ffn: t(b("ffn_norm"), &[d])?,
                    w1,
                    w2: t(b("ffn_down"), &[h, d])?,
                    w3,
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
        let model = Model { config, weights };
        model.validate()?;
        Ok(model)
    }

    /// The model and its tokenizer as a GGUF v3 file, with every matrix
    /// converted to `dtype` (rows that are not whole `dtype` blocks stay F16;
    /// norm vectors stay F32). What `kvgpu quantize` and `examples/quantize.rs` write.
    pub fn to_gguf(&self, tokenizer: &Tokenizer, dtype: DType) -> Result<Vec<u8>> {
        let model = self;
        let c = &model.config;
        let u = |v: usize| Value::U32(v as u32);
        let arch = c.family.arch;
        let key = |name: &str| format!("{arch}.{name}");
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (key("context_length"), u(c.seq_len)),
            (key("embedding_length"), u(c.dim)),
            (key("block_count"), u(c.n_layers)),
            (key("feed_forward_length"), u(c.hidden_dim)),
            (key("attention.head_count"), u(c.n_heads)),
            (key("attention.head_count_kv"), u(c.n_kv_heads)),
            (key("attention.key_length"), u(c.head_size)),
            (key("attention.value_length"), u(c.head_size)),
            (key("rope.dimension_count"), u(c.rope_dim)),
            (
                key("attention.layer_norm_rms_epsilon"),
                Value::F32(c.norm_eps),
            ),
            (key("rope.freq_base"), Value::F32(c.rope_theta)),
        ];
        if c.block().window_pattern.is_some() {
            metadata.extend([
                (key("attention.sliding_window"), u(c.sliding_window)),
                (key("rope.freq_base_swa"), Value::F32(c.rope_theta_window)),
            ]);
        }
        metadata.extend(tokenizer.gguf_metadata().ok_or_else(|| {
            Error::Tokenizer("only SentencePiece vocabularies can be written to GGUF".into())
        })?);
        Ok(self.to_gguf_with(&metadata, dtype))
    }

    /// The model as a GGUF v3 file with `metadata` (e.g. a source GGUF
    /// file's, tokenizer and chat template included) and every matrix
    /// converted to `dtype` as [`Model::to_gguf`] does, its tensors named
    /// and laid out as its family's files have them.
    pub fn to_gguf_with(&self, metadata: &[(String, Value)], dtype: DType) -> Vec<u8> {
        let model = self;
        let c = &model.config;
        let family = c.family;
        let w = model.weights.convert(dtype);
        let mut named: Vec<(String, Cow<Tensor>)> = vec![(
            "token_embd.weight".into(),
            Cow::Borrowed(&w.token_embedding),
        )];
        // Columns `at..at + n` of a vector, as a tensor of its own.
        let part = |t: &Tensor, at: usize, n: usize| {
            Cow::Owned(Tensor::from_f32(1, n, &t.to_f32()[at..at + n]))
        };
        let stacked = |parts: &[&Tensor]| {
            Cow::Owned(Tensor::stack_rows(parts).expect("the parts share a type and width"))
        };
        let (q, kv, hs) = (c.q_dim(), c.kv_dim(), c.head_size);
        for (i, l) in w.layers.iter().enumerate() {
            let mut layer = vec![("attn_norm.weight", Cow::Borrowed(&l.rms_att))];
            match family.fused_qkv && l.wq.dtype == l.wk.dtype && l.wk.dtype == l.wv.dtype {
                true => layer.push(("attn_qkv.weight", stacked(&[&l.wq, &l.wk, &l.wv]))),
                false => layer.extend([
                    ("attn_q.weight", Cow::Borrowed(&l.wq)),
                    ("attn_k.weight", Cow::Borrowed(&l.wk)),
                    ("attn_v.weight", Cow::Borrowed(&l.wv)),
                ]),
            }
            if let Some(b) = &l.qkv_bias {
                layer.extend([
                    ("attn_q.bias", part(b, 0, q)),
                    ("attn_k.bias", part(b, q, kv)),
                    ("attn_v.bias", part(b, q + kv, kv)),
                ]);
            }
            if let Some(n) = &l.qk_norm {
                layer.extend([
                    ("attn_q_norm.weight", part(n, 0, hs)),
                    ("attn_k_norm.weight", part(n, hs, hs)),
                ]);
            }
            layer.extend([
                ("attn_output.weight", Cow::Borrowed(&l.wo)),
                ("ffn_norm.weight", Cow::Borrowed(&l.rms_ffn)),
                ("ffn_down.weight", Cow::Borrowed(&l.w2)),
            ]);
            if let Some((att, ffn)) = &l.post_norms {
                layer.extend([
                    ("post_attention_norm.weight", Cow::Borrowed(att)),
                    ("post_ffw_norm.weight", Cow::Borrowed(ffn)),
                ]);
            }
            match family.fused_gate_up {
                // Gate rows, then up rows; one type for both (F16 where they differ).
                true if l.w1.dtype == l.w3.dtype => {
                    layer.push(("ffn_up.weight", stacked(&[&l.w1, &l.w3])))
                }
                true => {
                    let (g, u) = (l.w1.convert(DType::F16), l.w3.convert(DType::F16));
                    let (g, u) = (g.expect("F16 takes any row"), u.expect("F16 takes any row"));
                    layer.push(("ffn_up.weight", stacked(&[&g, &u])))
                }
                false => layer.extend([
                    ("ffn_gate.weight", Cow::Borrowed(&l.w1)),
                    ("ffn_up.weight", Cow::Borrowed(&l.w3)),
                ]),
            }
            named.extend(layer.into_iter().map(|(n, t)| (format!("blk.{i}.{n}"), t)));
        }
        named.push(("output_norm.weight".into(), Cow::Borrowed(&w.rms_final)));
        if let Some(cls) = &w.wcls {
            named.push(("output.weight".into(), Cow::Borrowed(cls)));
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
