//! The llama2.c tokenizer: encode/decode round trips over varied text, byte
//! fallback, and streaming that never splits a UTF-8 character.

mod common;

use kvgpu::tokenizer::{TextStream, BOS};

/// Decodes tokens (after BOS) the way generation does.
fn decode_all(tok: &kvgpu::Tokenizer, tokens: &[u32]) -> String {
    let mut stream = TextStream::new();
    let mut out = String::new();
    for w in tokens.windows(2) {
        out += &stream.push(tok.decode(w[0], w[1]).unwrap());
    }
    out + &stream.finish()
}

#[test]
fn encode_decode_round_trips_varied_text() {
    let (_, tok) = require!(common::stories());
    for text in common::varied_strings(3000, 2024) {
        let tokens = tok.encode(&text, true, false).unwrap();
        assert_eq!(tokens[0], BOS);
        assert!(tokens.iter().all(|&t| (t as usize) < tok.vocab_size()));
        assert_eq!(
            decode_all(&tok, &tokens),
            text,
            "round trip of {text:?} via {tokens:?}"
        );
    }
}

#[test]
fn characters_outside_the_vocabulary_fall_back_to_bytes() {
    let (_, tok) = require!(common::stories());
    let tokens = tok.encode("🦀", false, false).unwrap();
    // Dummy-prefix space, then the crab's four UTF-8 bytes as <0xXX> tokens (id = byte + 3).
    let bytes: Vec<u32> = "🦀".bytes().map(|b| b as u32 + 3).collect();
    assert_eq!(&tokens[tokens.len() - 4..], &bytes[..]);
    assert_eq!(
        tok.encode("", true, true).unwrap(),
        vec![BOS, kvgpu::tokenizer::EOS]
    );
}

#[test]
fn merges_prefer_the_highest_scoring_pair() {
    // Vocabulary: a, b, c, "ab" (score 1), "bc" (score 2), " " — "abc" must merge b+c first.
    let mut bytes = 2i32.to_le_bytes().to_vec();
    let pieces = [
        (0.0f32, "<unk>"),
        (0.0, "<s>"),
        (0.0, "</s>"),
        (0.0, "a"),
        (0.0, "b"),
        (0.0, "c"),
        (1.0, "ab"),
        (2.0, "bc"),
        (0.0, " "),
    ];
    for (score, p) in pieces {
        bytes.extend(score.to_le_bytes());
        bytes.extend((p.len() as i32).to_le_bytes());
        bytes.extend(p.as_bytes());
    }
    let path = common::scratch("merge").join("tok.bin");
    std::fs::write(&path, bytes.clone()).unwrap();
    let err = kvgpu::Tokenizer::load(&path, 9).unwrap_err(); // max length 2 < "<unk>"
    assert!(err.to_string().contains("outside 0..=2"), "{err}");
    bytes[..4].copy_from_slice(&8i32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let tok = kvgpu::Tokenizer::load(&path, 9).unwrap();
    assert_eq!(tok.encode("abc", false, false).unwrap(), vec![8, 3, 7]);
}

#[test]
fn text_stream_never_splits_a_character() {
    let text = "héllo 日本 🦀!";
    let mut stream = TextStream::new();
    let mut out = String::new();
    let mut pieces = Vec::new();
    for b in text.bytes() {
        let piece = stream.push(&[b]);
        pieces.push(piece.clone());
        out += &piece;
    }
    out += &stream.finish();
    assert_eq!(out, text);
    // The crab's first three bytes give nothing; the fourth gives the crab.
    let crab = text.find('🦀').unwrap();
    assert_eq!(pieces[crab..crab + 4], ["", "", "", "🦀"]);
    // Bytes that can never be a character come out as U+FFFD, the rest intact.
    let mut s = TextStream::new();
    assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
    assert_eq!(s.push(&[0xe6, 0x97]), "");
    assert_eq!(s.finish(), "\u{fffd}");
}
