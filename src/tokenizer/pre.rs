//! GPT-2-family pre-tokenizers and GPT-2's byte-to-character map.

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
