//! llama2.c's tokenizer (`tokenizer.bin`): SentencePiece-style BPE where merges
//! are chosen by the highest score of the merged piece, with UTF-8 byte
//! fallback to the `<0xXX>` tokens (id = byte + 3).
//!
//! File format: i32 `max_token_length`, then per token: f32 score, i32 byte
//! length, the bytes.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// Beginning-of-sequence token id.
pub const BOS: u32 = 1;
/// End-of-sequence token id.
pub const EOS: u32 = 2;

/// A BPE vocabulary with merge scores.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Piece bytes per token id.
    vocab: Vec<Vec<u8>>,
    /// Merge score per token id (higher merges first).
    scores: Vec<f32>,
    /// Piece bytes -> lowest token id with that piece.
    lookup: HashMap<Vec<u8>, u32>,
    /// For each id, `Some(byte)` when the piece is `<0xXX>`.
    byte_of: Vec<Option<u8>>,
}

impl Tokenizer {
    /// Reads a llama2.c tokenizer file holding `vocab_size` tokens.
    pub fn load(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, vocab_size).map_err(|(offset, reason)| Error::TokenizerFormat {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        })
    }

    /// Parses a tokenizer file's bytes; on error returns (byte offset, reason).
    fn from_bytes(bytes: &[u8], vocab_size: usize) -> Result<Self, (usize, String)> {
        let mut r = Cursor { bytes, at: 0 };
        let max_len = r.i32("max_token_length")?;
        if max_len <= 0 {
            return Err((0, format!("max_token_length {max_len} must be positive")));
        }
        // Capacity bounded by what the file can hold (8 bytes per token at least).
        let mut vocab = Vec::with_capacity(vocab_size.min(bytes.len() / 8));
        let mut scores = Vec::with_capacity(vocab.capacity());
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
            vocab.push(r.take(len as usize, "a token's bytes")?.to_vec());
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
        let mut lookup = HashMap::with_capacity(vocab.len());
        for (id, piece) in vocab.iter().enumerate().rev() {
            lookup.insert(piece.clone(), id as u32);
        }
        let byte_of = vocab.iter().map(|p| parse_byte_piece(p)).collect();
        Ok(Self {
            vocab,
            scores,
            lookup,
            byte_of,
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Encodes `text` as run.c's `encode` does: optional BOS, a dummy-prefix
    /// space for non-empty text, one token per UTF-8 character (or its bytes
    /// as `<0xXX>` tokens when the character is not in the vocabulary), then
    /// repeated merging of the adjacent pair whose merged piece scores highest.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            tokens.push(self.piece_id(b" ")?);
        }
        for (start, c) in text.char_indices() {
            let piece = &text.as_bytes()[start..start + c.len_utf8()];
            match self.lookup.get(piece) {
                Some(&id) => tokens.push(id),
                None => {
                    for &b in piece {
                        let id = b as u32 + 3;
                        if id as usize >= self.vocab.len() {
                            return Err(Error::TokenOutOfRange {
                                token: id,
                                vocab_size: self.vocab.len(),
                            });
                        }
                        tokens.push(id);
                    }
                }
            }
        }
        let mut merged = Vec::new();
        loop {
            let mut best: Option<(f32, u32, usize)> = None;
            for i in 0..tokens.len().saturating_sub(1) {
                merged.clear();
                merged.extend_from_slice(&self.vocab[tokens[i] as usize]);
                merged.extend_from_slice(&self.vocab[tokens[i + 1] as usize]);
                if let Some(&id) = self.lookup.get(&merged) {
                    let score = self.scores[id as usize];
                    if score > best.map_or(-1e10, |b| b.0) {
                        best = Some((score, id, i));
                    }
                }
            }
            let Some((_, id, i)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        if eos {
            tokens.push(EOS);
        }
        Ok(tokens)
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
    /// `decode`: the leading space of the piece after BOS is dropped and
    /// `<0xXX>` pieces become their byte.
    pub fn decode(&self, prev: u32, token: u32) -> Result<&[u8]> {
        let id = token as usize;
        let piece = self.vocab.get(id).ok_or(Error::TokenOutOfRange {
            token,
            vocab_size: self.vocab.len(),
        })?;
        if let Some(b) = self.byte_of[id] {
            return Ok(&BYTES[b as usize..b as usize + 1]);
        }
        Ok(match piece.as_slice() {
            [b' ', rest @ ..] if prev == BOS => rest,
            p => p,
        })
    }
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
