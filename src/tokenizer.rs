//! Tokenizers: SentencePiece-style BPE by merge score (llama2.c's
//! `tokenizer.bin`, and GGUF `tokenizer.ggml.model = "llama"`) and GPT-2-style
//! byte-level BPE by merge rank (GGUF `"gpt2"`, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`). Both fall back to bytes for text outside the
//! vocabulary, and both decode to bytes that [`TextStream`] turns into text
//! without splitting a UTF-8 character.
//!
//! llama2.c file format: i32 `max_token_length`, then per token: f32 score,
//! i32 byte length, the bytes.

use std::collections::HashMap;
use std::path::Path;

use crate::gguf::{Gguf, GgufError};
use crate::{Error, Result};

/// Beginning-of-sequence token id of llama2.c tokenizers.
pub const BOS: u32 = 1;
/// End-of-sequence token id of llama2.c tokenizers.
pub const EOS: u32 = 2;

/// How text is split and merged.
#[derive(Clone, Debug)]
enum Merges {
    /// SentencePiece BPE: merge the adjacent pair whose merged piece has the
    /// highest score; a space is prefixed to non-empty text.
    Score {
        /// (vocab,) merge score per token.
        scores: Vec<f32>,
        /// Prefix a space to non-empty text (llama2.c's dummy prefix).
        space_prefix: bool,
    },
    /// Byte-level BPE: pre-tokenize, map bytes to GPT-2's printable
    /// characters, merge the lowest-ranked pair.
    Rank {
        /// (left, right) -> (rank, merged token).
        ranks: HashMap<(u32, u32), (u32, u32)>,
        /// (256,) token of each single byte.
        byte_token: Vec<u32>,
        pre: Box<PreTokenizer>,
    },
}

/// GPT-2-family pre-tokenizers (`tokenizer.ggml.pre`).
#[derive(Clone, Debug)]
pub struct PreTokenizer {
    name: String,
    /// Digits are split off one by one first (SmolLM).
    split_digits: bool,
    regex: fancy_regex::Regex,
}

/// GPT-2's pattern (also HF's `ByteLevel` pre-tokenizer).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pattern.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp names `name`: "gpt2"/"default", "llama-bpe"/"llama3", "smollm".
    pub fn named(name: &str) -> Option<Self> {
        let (pattern, split_digits) = match name {
            "gpt2" | "default" => (GPT2_PATTERN, false),
            "llama-bpe" | "llama3" | "llama-v3" => (LLAMA3_PATTERN, false),
            "smollm" => (GPT2_PATTERN, true),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            split_digits,
            regex: fancy_regex::Regex::new(pattern).expect("valid pattern"),
        })
    }

    /// Splits `text` into the words BPE merges within.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut words = Vec::new();
        let mut push_matches = |piece: &'t str| {
            let mut end = 0;
            for m in self.regex.find_iter(piece) {
                // The patterns match every character; a backtracking limit is the only failure.
                let Ok(m) = m else { break };
                words.push(m.as_str());
                end = m.end();
            }
            if end < piece.len() {
                words.push(&piece[end..]);
            }
        };
        if self.split_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    if start < i {
                        push_matches(&text[start..i]);
                    }
                    push_matches(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            if start < text.len() {
                push_matches(&text[start..]);
            }
        } else {
            push_matches(text);
        }
        words
    }

    /// The name it was made from.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode`):
/// printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("Latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

/// A vocabulary and its merge rules.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// (vocab,) bytes each token stands for (empty for control tokens).
    pieces: Vec<Vec<u8>>,
    /// Piece bytes -> lowest token id with that piece (SentencePiece), or
    /// token text -> id (byte-level BPE).
    lookup: HashMap<Vec<u8>, u32>,
    /// (256,) token of each byte for byte fallback, if the vocabulary has one.
    byte_fallback: Vec<Option<u32>>,
    /// (vocab,) `Some(byte)` for byte tokens.
    byte_of: Vec<Option<u8>>,
    merges: Merges,
    bos: u32,
    eos: u32,
    unknown: Option<u32>,
    add_bos: bool,
    /// Control and user-defined tokens (text, id), longest first, matched in
    /// text by [`Tokenizer::encode_special`].
    specials: Vec<(String, u32)>,
}

impl Tokenizer {
    /// Reads a llama2.c tokenizer file holding `vocab_size` tokens.
    pub fn load(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_llama2c_bytes(&bytes, vocab_size).map_err(|e| match e {
            Error::TokenizerFormat { offset, reason, .. } => Error::TokenizerFormat {
                path: path.to_path_buf(),
                offset,
                reason,
            },
            e => e,
        })
    }

    /// Parses a llama2.c tokenizer held in memory (see [`Tokenizer::load`]).
    pub fn from_llama2c_bytes(bytes: &[u8], vocab_size: usize) -> Result<Self> {
        let (pieces, scores) =
            read_llama2c(bytes, vocab_size).map_err(|(offset, reason)| Error::TokenizerFormat {
                path: "<memory>".into(),
                offset: offset as u64,
                reason,
            })?;
        Ok(Self::score_bpe(
            pieces,
            scores,
            BOS,
            EOS,
            None,
            true,
            Vec::new(),
        ))
    }

    fn score_bpe(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        bos: u32,
        eos: u32,
        unknown: Option<u32>,
        add_bos: bool,
        specials: Vec<(String, u32)>,
    ) -> Self {
        let mut lookup = HashMap::with_capacity(pieces.len());
        for (id, piece) in pieces.iter().enumerate().rev() {
            lookup.insert(piece.clone(), id as u32);
        }
        let byte_of: Vec<Option<u8>> = pieces.iter().map(|p| parse_byte_piece(p)).collect();
        let mut byte_fallback = vec![None; 256];
        for (id, b) in byte_of.iter().enumerate().rev() {
            if let Some(b) = b {
                byte_fallback[*b as usize] = Some(id as u32);
            }
        }
        let mut t = Self {
            pieces,
            lookup,
            byte_fallback,
            byte_of,
            merges: Merges::Score {
                scores,
                space_prefix: true,
            },
            bos,
            eos,
            unknown,
            add_bos,
            specials,
        };
        // Longest first, so a special token's text is never split by a shorter one.
        t.specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t
    }

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
            Some(t) => t.to_vec(),
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
        let specials = special_tokens(tokens, &types);
        match model {
            "llama" => {
                let scores: Vec<f32> = match g.floats("tokenizer.ggml.scores")? {
                    Some(s) if s.len() == n => s.iter().map(|&v| v as f32).collect(),
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
                Self::byte_bpe(
                    tokens,
                    &types,
                    merges,
                    pre,
                    bos,
                    eos,
                    unknown,
                    g.boolean("tokenizer.ggml.add_bos_token", false)?,
                )
                .map_err(|reason| bad("tokenizer.ggml.merges", reason))
            }
            other => Err(bad(
                "tokenizer.ggml.model",
                format!("unsupported tokenizer model {other:?} (llama, gpt2 are)"),
            )),
        }
    }

    /// A byte-level BPE from its token texts (GPT-2 byte characters), token
    /// types (3 = control, 4 = user-defined) and merges ("left right", by rank).
    #[allow(clippy::too_many_arguments)]
    pub fn byte_bpe(
        tokens: &[String],
        types: &[i64],
        merges: &[String],
        pre: PreTokenizer,
        bos: u32,
        eos: u32,
        unknown: Option<u32>,
        add_bos: bool,
    ) -> std::result::Result<Self, String> {
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
        let byte_token = chars
            .iter()
            .map(|c| {
                lookup
                    .get(c.to_string().as_bytes())
                    .copied()
                    .ok_or_else(|| format!("no token for byte character {c:?}"))
            })
            .collect::<std::result::Result<Vec<u32>, String>>()?;
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
                (s.to_string(), 3)
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
                Value::Array(Array::Float(scores.iter().map(|&v| v as f64).collect())),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(Array::Int(types)),
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

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Whether a prompt starts with BOS by default.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Encodes `text` (control-token text is encoded as plain text). With the
    /// llama2.c tokenizer this is run.c's `encode`: optional BOS, a
    /// dummy-prefix space for non-empty text, one token per UTF-8 character
    /// (or its bytes as `<0xXX>` tokens when the character is not in the
    /// vocabulary), then repeated merging of the adjacent pair whose merged
    /// piece scores highest.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(self.bos);
        }
        self.encode_text(text, true, &mut tokens)?;
        if eos {
            tokens.push(self.eos);
        }
        Ok(tokens)
    }

    /// Like [`Tokenizer::encode`], but control and user-defined token texts
    /// in `text` (e.g. `<|begin_of_text|>`) become their tokens, unsplit.
    pub fn encode_special(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        let mut tokens = Vec::new();
        if bos {
            tokens.push(self.bos);
        }
        let mut rest = text;
        let mut plain_start = 0;
        let mut at = 0;
        let mut first = true;
        while at < rest.len() {
            if let Some((s, id)) = self
                .specials
                .iter()
                .find(|(s, _)| rest[at..].starts_with(s.as_str()))
            {
                self.encode_segment(&rest[plain_start..at], first, &mut tokens)?;
                first = false;
                tokens.push(*id);
                rest = &rest[at + s.len()..];
                plain_start = 0;
                at = 0;
            } else {
                at += rest[at..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_segment(&rest[plain_start..], first, &mut tokens)?;
        if eos {
            tokens.push(self.eos);
        }
        Ok(tokens)
    }

    fn encode_segment(&self, text: &str, first: bool, out: &mut Vec<u32>) -> Result<()> {
        // Only the start of the text gets SentencePiece's dummy prefix.
        self.encode_text(text, first, out)
    }

    fn encode_text(&self, text: &str, at_start: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.merges {
            Merges::Score {
                scores,
                space_prefix,
            } => {
                let start = out.len();
                if *space_prefix && at_start && !text.is_empty() {
                    out.push(self.piece_id(b" ")?);
                }
                for (at, c) in text.char_indices() {
                    let piece = &text.as_bytes()[at..at + c.len_utf8()];
                    match self.lookup.get(piece) {
                        Some(&id) => out.push(id),
                        None => {
                            for &b in piece {
                                out.push(self.byte_token(b)?);
                            }
                        }
                    }
                }
                let tokens = &mut out[start..];
                let mut len = tokens.len();
                let mut merged = Vec::new();
                loop {
                    let mut best: Option<(f32, u32, usize)> = None;
                    for i in 0..len.saturating_sub(1) {
                        merged.clear();
                        merged.extend_from_slice(&self.pieces[tokens[i] as usize]);
                        merged.extend_from_slice(&self.pieces[tokens[i + 1] as usize]);
                        if let Some(&id) = self.lookup.get(&merged) {
                            let score = scores[id as usize];
                            if score > best.map_or(-1e10, |b| b.0) {
                                best = Some((score, id, i));
                            }
                        }
                    }
                    let Some((_, id, i)) = best else { break };
                    tokens[i] = id;
                    tokens.copy_within(i + 2..len, i + 1);
                    len -= 1;
                }
                out.truncate(start + len);
                Ok(())
            }
            Merges::Rank {
                ranks,
                byte_token,
                pre,
            } => {
                for word in pre.split(text) {
                    let mut symbols: Vec<u32> =
                        word.bytes().map(|b| byte_token[b as usize]).collect();
                    loop {
                        let best = symbols
                            .windows(2)
                            .enumerate()
                            .filter_map(|(i, w)| {
                                ranks.get(&(w[0], w[1])).map(|&(rank, id)| (rank, i, id))
                            })
                            .min();
                        let Some((_, i, id)) = best else { break };
                        symbols[i] = id;
                        symbols.remove(i + 1);
                    }
                    out.extend(symbols);
                }
                Ok(())
            }
        }
    }

    fn byte_token(&self, b: u8) -> Result<u32> {
        self.byte_fallback[b as usize]
            .or(self.unknown)
            .ok_or_else(|| {
                Error::Tokenizer(format!(
                    "byte 0x{b:02X} is not in the vocabulary and there is no unknown token"
                ))
            })
    }

    fn piece_id(&self, piece: &[u8]) -> Result<u32> {
        self.lookup.get(piece).copied().ok_or_else(|| {
            Error::Tokenizer(format!(
                "vocabulary has no piece {:?}",
                String::from_utf8_lossy(piece)
            ))
        })
    }

    /// The bytes `token` stands for when it follows `prev`, as run.c's
    /// `decode`: for SentencePiece vocabularies the leading space of the
    /// piece after BOS is dropped; byte tokens become their byte; control
    /// tokens give nothing.
    pub fn decode(&self, prev: u32, token: u32) -> Result<&[u8]> {
        let id = token as usize;
        let piece = self.pieces.get(id).ok_or(Error::TokenOutOfRange {
            token,
            vocab_size: self.pieces.len(),
        })?;
        if let Some(b) = self.byte_of[id] {
            return Ok(&BYTES[b as usize..b as usize + 1]);
        }
        Ok(match (&self.merges, piece.as_slice()) {
            (Merges::Score { .. }, [b' ', rest @ ..]) if prev == self.bos => rest,
            (_, p) => p,
        })
    }
}

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

/// Pieces and scores of a llama2.c tokenizer file.
type Llama2cVocab = (Vec<Vec<u8>>, Vec<f32>);

/// Parses a llama2.c tokenizer file; on error returns (byte offset, reason).
fn read_llama2c(
    bytes: &[u8],
    vocab_size: usize,
) -> std::result::Result<Llama2cVocab, (usize, String)> {
    let mut r = Cursor { bytes, at: 0 };
    let max_len = r.i32("max_token_length")?;
    if max_len <= 0 {
        return Err((0, format!("max_token_length {max_len} must be positive")));
    }
    // Capacity bounded by what the file can hold (8 bytes per token at least).
    let mut pieces = Vec::with_capacity(vocab_size.min(bytes.len() / 8));
    let mut scores = Vec::with_capacity(pieces.capacity());
    for id in 0..vocab_size {
        let score = f32::from_bits(r.i32("a token score")? as u32);
        let len_at = r.at;
        let len = r.i32("a token length")?;
        if len < 0 || len > max_len {
            return Err((
                len_at,
                format!("token {id} has length {len}, outside 0..={max_len}"),
            ));
        }
        pieces.push(r.take(len as usize, "a token's bytes")?.to_vec());
        scores.push(score);
    }
    if r.at != bytes.len() {
        return Err((
            r.at,
            format!(
                "{} trailing bytes after {vocab_size} tokens (wrong vocabulary size?)",
                bytes.len() - r.at
            ),
        ));
    }
    Ok((pieces, scores))
}

/// Reads a tokenizer file front to back; errors are (offset, reason).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], (usize, String)> {
        let remain = self.bytes.len() - self.at;
        if n > remain {
            return Err((
                self.at,
                format!("file cut short: {what} needs {n} bytes, {remain} remain"),
            ));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, (usize, String)> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// All 256 byte values, so a byte piece can be returned as a slice.
static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// `Some(0xXX)` for a piece that reads exactly `<0xXX>` (hex digits).
fn parse_byte_piece(p: &[u8]) -> Option<u8> {
    let hex = p.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Turns a stream of token bytes into text without ever splitting a UTF-8
/// character: bytes of an incomplete character wait for the next piece;
/// bytes that can never form a character come out as U+FFFD.
#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// A stream with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes`; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"),
                    );
                    match e.error_len() {
                        // Incomplete character at the end: keep it for later.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: whatever is pending comes out (as U+FFFD if incomplete).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
