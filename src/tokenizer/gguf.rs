//! Tokenizers stored in GGUF metadata: reading one (SentencePiece or
//! byte-level BPE) and the metadata that writes one.

use std::collections::HashMap;

use super::{byte_to_char, Merges, PreTokenizer, Tokenizer};
use crate::error::Result;
use crate::gguf::{Gguf, GgufError};

/// What a byte-level BPE is made from (see [`Tokenizer::byte_bpe`]).
#[derive(Clone, Debug)]
pub struct ByteBpe<'a> {
    /// Token texts in GPT-2 byte characters, by id.
    pub tokens: &'a [String],
    /// Token types by id (3 = control, 4 = user-defined, else normal).
    pub types: &'a [i64],
    /// Merges, "left right", by rank.
    pub merges: &'a [String],
    /// How text is split before BPE.
    pub pre: PreTokenizer,
    /// Beginning-of-sequence token.
    pub bos: u32,
    /// End-of-sequence token.
    pub eos: u32,
    /// Token for text the vocabulary cannot spell, if any.
    pub unknown: Option<u32>,
    /// Whether encoding adds BOS.
    pub add_bos: bool,
}

impl Tokenizer {
    /// Reads the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let bad = |key: &str, reason: String| {
            g.error(GgufError::BadValue {
                key: key.into(),
                reason,
            })
        };
        let model = g
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| g.error(GgufError::MissingKey("tokenizer.ggml.model".into())))?;
        let tokens = g
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| g.error(GgufError::MissingKey("tokenizer.ggml.tokens".into())))?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(bad("tokenizer.ggml.tokens", format!("{n} tokens")));
        }
        let types: Vec<i64> = match g.ints("tokenizer.ggml.token_type")? {
            Some(t) if t.len() != n => {
                return Err(bad(
                    "tokenizer.ggml.token_type",
                    format!("{} entries for {n} tokens", t.len()),
                ))
            }
            Some(t) => t,
            None => vec![1; n],
        };
        let id = |key: &str, default: Option<u64>| -> Result<Option<u32>> {
            match (g.get(key), default) {
                (None, None) => Ok(None),
                _ => {
                    let v = g.uint(key, default)?;
                    if v >= n as u64 {
                        return Err(bad(
                            key,
                            format!("token id {v} is not below the vocabulary size {n}"),
                        ));
                    }
                    Ok(Some(v as u32))
                }
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", Some(1.min(n as u64 - 1)))?.expect("default");
        let eos = id("tokenizer.ggml.eos_token_id", Some(2.min(n as u64 - 1)))?.expect("default");
        let unknown = id("tokenizer.ggml.unknown_token_id", None)?;
        let mut end_tokens = vec![bos, eos];
        end_tokens.extend(id("tokenizer.ggml.eot_token_id", None)?);
        end_tokens.extend(id("tokenizer.ggml.eom_token_id", None)?);
        let specials = special_tokens(tokens, &types);
        end_tokens.extend(
            specials
                .iter()
                .filter(|(text, _)| END_MARKERS.contains(&text.as_str()))
                .map(|&(_, id)| id),
        );
        end_tokens.sort_unstable();
        end_tokens.dedup();
        let mut tokenizer = match model {
            "llama" => {
                let scores: Vec<f32> = match g.floats("tokenizer.ggml.scores")? {
                    Some(s) if s.len() == n => s,
                    Some(s) => {
                        return Err(bad(
                            "tokenizer.ggml.scores",
                            format!("{} scores for {n} tokens", s.len()),
                        ))
                    }
                    None => {
                        return Err(g.error(GgufError::MissingKey("tokenizer.ggml.scores".into())))
                    }
                };
                let pieces = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        3 => Vec::new(), // control tokens print nothing
                        _ => t.replace('\u{2581}', " ").into_bytes(),
                    })
                    .collect();
                let add_bos = g.boolean("tokenizer.ggml.add_bos_token", true)?;
                let mut t = Self::score_bpe(pieces, scores, bos, eos, unknown, add_bos, specials);
                // Control pieces are empty: keep them out of the lookup.
                t.lookup.remove(&Vec::new());
                if let Merges::Score { space_prefix, .. } = &mut t.merges {
                    *space_prefix = g.boolean("tokenizer.ggml.add_space_prefix", true)?;
                }
                Ok(t)
            }
            "gpt2" => {
                let pre_name = g.string("tokenizer.ggml.pre")?.unwrap_or("default");
                let pre = PreTokenizer::named(pre_name).ok_or_else(|| {
                    bad(
                        "tokenizer.ggml.pre",
                        format!(
                            "unsupported pre-tokenizer {pre_name:?} (gpt2, llama-bpe, smollm are)"
                        ),
                    )
                })?;
                let merges = g.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
                    g.error(GgufError::MissingKey("tokenizer.ggml.merges".into()))
                })?;
                Self::byte_bpe(ByteBpe {
                    tokens,
                    types: &types,
                    merges,
                    pre,
                    bos,
                    eos,
                    unknown,
                    add_bos: g.boolean("tokenizer.ggml.add_bos_token", false)?,
                })
                .map_err(|reason| bad("tokenizer.ggml.merges", reason))
            }
            other => Err(bad(
                "tokenizer.ggml.model",
                format!("unsupported tokenizer model {other:?} (llama, gpt2 are)"),
            )),
        }?;
        tokenizer.end_tokens = end_tokens;
        tokenizer.user_defined = (0..n as u32).filter(|&i| types[i as usize] == 4).collect();
        // The file's template, else its family's (Gemma 3's base models
        // carry none, and their instruct turns are the same).
        let arch = g.string("general.architecture")?.unwrap_or("");
        let family_template = crate::arch::Family::from_arch(arch).and_then(|f| f.chat_template);
        tokenizer.chat_template = g
            .string("tokenizer.chat_template")?
            .or(family_template)
            .map(str::to_string);
        Ok(tokenizer)
    }

    /// A byte-level BPE from its token texts (GPT-2 byte characters), token
    /// types (3 = control, 4 = user-defined) and merges ("left right", by rank).
    pub fn byte_bpe(spec: ByteBpe) -> std::result::Result<Self, String> {
        let ByteBpe {
            tokens,
            types,
            merges,
            pre,
            bos,
            eos,
            unknown,
            add_bos,
        } = spec;
        let chars = byte_to_char();
        let mut char_to_byte = HashMap::with_capacity(256);
        for (b, c) in chars.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let mut lookup = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate().rev() {
            lookup.insert(t.as_bytes().to_vec(), id as u32);
        }
        let pieces = tokens
            .iter()
            .zip(types)
            .map(|(t, ty)| match ty {
                3 => Vec::new(),
                4 => t.as_bytes().to_vec(),
                _ => t
                    .chars()
                    .map(|c| char_to_byte.get(&c).copied().unwrap_or(b'?'))
                    .collect(),
            })
            .collect();
        // A byte with no token (SmolLM2 lacks 21) is skipped when encoding.
        let byte_token = chars
            .iter()
            .map(|c| lookup.get(c.to_string().as_bytes()).copied())
            .collect();
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .ok_or_else(|| format!("merge {rank} {m:?} is not two tokens"))?;
            let id = |s: &str| {
                lookup
                    .get(s.as_bytes())
                    .copied()
                    .ok_or_else(|| format!("merge {rank} {m:?}: {s:?} is not a token"))
            };
            let merged = format!("{l}{r}");
            ranks
                .entry((id(l)?, id(r)?))
                .or_insert((rank as u32, id(&merged)?));
        }
        Ok(Self {
            byte_of: vec![None; tokens.len()],
            pieces,
            lookup,
            byte_fallback: vec![None; 256],
            merges: Merges::Rank {
                ranks,
                byte_token,
                pre: Box::new(pre),
            },
            bos,
            eos,
            unknown,
            add_bos,
            specials: special_tokens(tokens, types),
            user_defined: Vec::new(),
            end_tokens: vec![bos, eos],
            show_special: false,
            chat_template: None,
        })
    }

    /// The metadata a GGUF file needs to hold this tokenizer (SentencePiece
    /// vocabularies only; `None` for byte-level BPE, which kvgpu only reads).
    pub fn gguf_metadata(&self) -> Option<Vec<(String, crate::gguf::Value)>> {
        use crate::gguf::{Array, Value};
        let Merges::Score {
            scores,
            space_prefix,
        } = &self.merges
        else {
            return None;
        };
        let specials: HashMap<u32, &str> = self
            .specials
            .iter()
            .map(|(s, id)| (*id, s.as_str()))
            .collect();
        let (mut tokens, mut types) = (Vec::new(), Vec::new());
        for (id, piece) in self.pieces.iter().enumerate() {
            let id = id as u32;
            let (text, ty) = if let Some(s) = specials.get(&id) {
                let user_defined = self.user_defined.binary_search(&id).is_ok();
                (s.to_string(), if user_defined { 4 } else { 3 })
            } else if self.byte_of[id as usize].is_some() {
                (String::from_utf8_lossy(piece).into_owned(), 6)
            } else if Some(id) == self.unknown {
                ("<unk>".to_string(), 2)
            } else if id == self.bos || id == self.eos {
                (String::from_utf8_lossy(piece).trim().to_string(), 3)
            } else {
                (String::from_utf8_lossy(piece).replace(' ', "\u{2581}"), 1)
            };
            tokens.push(text);
            types.push(ty);
        }
        // Byte tokens keep their "<0xXX>" text.
        for (id, b) in self.byte_of.iter().enumerate() {
            if let Some(b) = b {
                tokens[id] = format!("<0x{b:02X}>");
            }
        }
        let s = |v: &str| Value::String(v.to_string());
        Some(vec![
            ("tokenizer.ggml.model".into(), s("llama")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::String(tokens)),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(Array::F32(scores.clone())),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(Array::I32(types)),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(self.bos)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(self.eos)),
            (
                "tokenizer.ggml.add_bos_token".into(),
                Value::Bool(self.add_bos),
            ),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                Value::Bool(*space_prefix),
            ),
        ])
    }
}

/// Control-token texts that end a turn or a document in the chat formats
/// llama.cpp knows (its end-of-generation list).
const END_MARKERS: [&str; 10] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<EOT>",
    "<|return|>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// Control (type 3) and user-defined (type 4) tokens as (text, id), longest
/// first, so a special token's text is never split by a shorter one.
fn special_tokens(tokens: &[String], types: &[i64]) -> Vec<(String, u32)> {
    let mut specials: Vec<(String, u32)> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (t, ty))| matches!(ty, 3 | 4) && !t.is_empty())
        .map(|(i, (t, _))| (t.clone(), i as u32))
        .collect();
    specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    specials
}
