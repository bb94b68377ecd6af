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

use crate::error::{Error, Result};

mod gguf;
mod pre;
mod stream;

mod merge;

pub use gguf::ByteBpe;
pub use pre::{byte_to_char, PreTokenizer};
pub use stream::TextStream;

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
        /// (256,) token of each single byte; `None` for a byte the
        /// vocabulary lacks, which encoding skips (as llama.cpp and Hugging
        /// Face `tokenizers` do).
        byte_token: Vec<Option<u32>>,
        pre: Box<PreTokenizer>,
    },
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
    /// The user-defined ones among them (sorted ids), matched by
    /// [`Tokenizer::encode`] too, as llama.cpp does (Gemma's whitespace runs).
    pub(crate) user_defined: Vec<u32>,
    /// Tokens that end a generation (see [`Tokenizer::end_tokens`]).
    end_tokens: Vec<u32>,
    /// Whether [`Tokenizer::decode`] gives control tokens' text.
    show_special: bool,
    /// The file's chat template (Jinja), if any.
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Reads a llama2.c tokenizer file holding `vocab_size` tokens.
    pub fn load(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.starts_with(b"GGUF") {
            return Err(Error::NotATokenizer {
                path: path.to_path_buf(),
                reason:
                    "it is a GGUF model file, which holds its own tokenizer (leave --tokenizer out)"
                        .into(),
            });
        }
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
            user_defined: Vec::new(),
            // run.c stops at BOS.
            end_tokens: vec![bos],
            show_special: false,
            chat_template: None,
        };
        // Longest first, so a special token's text is never split by a shorter one.
        t.specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t
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

    /// The tokens that end a generation. llama2.c tokenizers: BOS (run.c's
    /// rule). GGUF tokenizers: BOS, EOS, the end-of-turn and end-of-message
    /// tokens the file names (`eot_token_id`, `eom_token_id`), and control
    /// tokens that are end markers (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`, `<end_of_turn>`, ...), as llama.cpp's
    /// end-of-generation set.
    pub fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }

    /// The fewest tokens `text` can encode to, BOS not counted: no token
    /// stands for more text bytes than its piece has bytes (`▁` and
    /// byte-level BPE's characters take at least the byte they stand for),
    /// so a text whose bound exceeds a cache's room is refused before it is
    /// tokenized.
    pub fn min_tokens(&self, text: &str) -> usize {
        let longest = self.lookup.keys().map(Vec::len);
        let specials = self.specials.iter().map(|(s, _)| s.len());
        let longest = longest.chain(specials).max().unwrap_or(1).max(1);
        text.len().div_ceil(longest)
    }

    /// The chat template (Jinja) a GGUF file carries
    /// (`tokenizer.chat_template`), for [`crate::Chat`].
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The text of control token `id` (e.g. `<|im_start|>`), if it is one.
    pub fn control_text(&self, id: u32) -> Option<&str> {
        self.specials
            .iter()
            .find(|(_, t)| *t == id)
            .map(|(s, _)| s.as_str())
    }

    /// Whether `token` ends a generation.
    pub fn is_end(&self, token: u32) -> bool {
        self.end_tokens.contains(&token)
    }

    /// Makes [`Tokenizer::decode`] give control tokens' text (e.g.
    /// `<|im_end|>`), which it otherwise leaves out (llama.cpp's `--special`);
    /// a generation then prints its end token too.
    pub fn set_show_special(&mut self, show: bool) {
        self.show_special = show;
    }

    /// Whether control tokens' text is shown ([`Tokenizer::set_show_special`]).
    pub fn shows_special(&self) -> bool {
        self.show_special
    }

    /// Replaces the tokens that end a generation (empty: run to the
    /// length asked for, like llama.cpp's `--ignore-eos`).
    pub fn set_end_tokens(&mut self, tokens: Vec<u32>) {
        self.end_tokens = tokens;
    }

    /// Encodes `text` (control-token text is encoded as plain text;
    /// user-defined pieces, such as Gemma's whitespace runs, become their
    /// tokens, as llama.cpp has them). With the llama2.c tokenizer this is
    /// run.c's `encode`: optional BOS, a dummy-prefix space for non-empty
    /// text, one token per UTF-8 character (or its bytes as `<0xXX>` tokens
    /// when the character is not in the vocabulary), then repeated merging
    /// of the adjacent pair whose merged piece scores highest.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, bos, eos, false)
    }

    /// Like [`Tokenizer::encode`], but control token texts in `text` (e.g.
    /// `<|begin_of_text|>`) become their tokens, unsplit, too.
    pub fn encode_special(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, bos, eos, true)
    }

    /// `text` encoded piece by piece between the special tokens it spells:
    /// user-defined ones, and with `control` control ones too.
    fn encode_parts(&self, text: &str, bos: bool, eos: bool, control: bool) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(self.bos);
        }
        // The specials to match, by first byte (longest first in each).
        let mut by_first: Vec<Vec<&(String, u32)>> = vec![Vec::new(); 256];
        for special in &self.specials {
            let (s, id) = special;
            if !s.is_empty() && (control || self.user_defined.binary_search(id).is_ok()) {
                by_first[s.as_bytes()[0] as usize].push(special);
            }
        }
        let mut rest = text;
        let mut plain_start = 0;
        let mut at = 0;
        let mut first = true;
        while at < rest.len() {
            if let Some((s, id)) = by_first[rest.as_bytes()[at] as usize]
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
                // Merge the pair whose merged piece scores highest.
                let mut symbols = out.split_off(start);
                let mut joined = Vec::new();
                merge::merge(&mut symbols, |a, b| {
                    joined.clear();
                    joined.extend_from_slice(&self.pieces[a as usize]);
                    joined.extend_from_slice(&self.pieces[b as usize]);
                    let id = *self.lookup.get(&joined)?;
                    let score = scores[id as usize];
                    (score > -1e10).then(|| (merge::highest_first(score), id))
                });
                out.extend(symbols);
                Ok(())
            }
            Merges::Rank {
                ranks,
                byte_token,
                pre,
            } => {
                for word in pre.split(text) {
                    let mut symbols: Vec<u32> = word
                        .bytes()
                        .filter_map(|b| byte_token[b as usize])
                        .collect();
                    // Merge the lowest-ranked pair.
                    merge::merge(&mut symbols, |a, b| ranks.get(&(a, b)).copied());
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
    /// tokens give nothing (their text with [`Tokenizer::set_show_special`]).
    pub fn decode(&self, prev: u32, token: u32) -> Result<&[u8]> {
        let id = token as usize;
        let piece = self.pieces.get(id).ok_or(Error::TokenOutOfRange {
            token,
            vocab_size: self.pieces.len(),
        })?;
        if let Some(b) = self.byte_of[id] {
            return Ok(&BYTES[b as usize..b as usize + 1]);
        }
        if self.show_special {
            if let Some(text) = self.control_text(token) {
                return Ok(text.as_bytes());
            }
        }
        Ok(match (&self.merges, piece.as_slice()) {
            (Merges::Score { .. }, [b' ', rest @ ..]) if prev == self.bos => rest,
            (_, p) => p,
        })
    }
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
