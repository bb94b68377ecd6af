//! Both tokenizer kinds on arbitrary text: a SentencePiece vocabulary with
//! byte fallback and a byte-level BPE (each pre-tokenizer) must encode any
//! UTF-8 text and decode it back exactly.
#![no_main]

use std::sync::OnceLock;

use kvgpu::tokenizer::{byte_to_char, ByteBpe, PreTokenizer, TextStream};
use kvgpu::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn spm() -> Tokenizer {
    // <unk>, <s>, </s>, 256 byte tokens, then pieces that merge.
    let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    pieces.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    for p in [
        " ", "a", "b", "c", "ab", "bc", " a", "abc", "é", "日", "本", "日本", "1", "11",
    ] {
        pieces.push(p.to_string());
    }
    let mut bytes = 8i32.to_le_bytes().to_vec();
    for (i, p) in pieces.iter().enumerate() {
        bytes.extend((i as f32 * 0.37 % 5.0).to_le_bytes());
        bytes.extend((p.len() as i32).to_le_bytes());
        bytes.extend(p.as_bytes());
    }
    Tokenizer::from_llama2c_bytes(&bytes, pieces.len()).unwrap()
}

fn bpe(pre: &str) -> Tokenizer {
    let chars = byte_to_char();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let g = chars[b' ' as usize];
    let mut merges = Vec::new();
    for (l, r) in [
        (g.to_string(), "t".to_string()),
        ("h".into(), "e".into()),
        (format!("{g}t"), "he".into()),
        ("1".into(), "2".into()),
        ("a".into(), "a".into()),
    ] {
        merges.push(format!("{l} {r}"));
        tokens.push(format!("{l}{r}"));
    }
    let types = vec![1; tokens.len()];
    Tokenizer::byte_bpe(ByteBpe {
        tokens: &tokens,
        types: &types,
        merges: &merges,
        pre: PreTokenizer::named(pre).unwrap(),
        bos: 0,
        eos: 0,
        unknown: None,
        add_bos: false,
    })
    .unwrap()
}

fn round_trip(tok: &Tokenizer, text: &str, spm: bool) {
    let ids = tok.encode(text, spm, false).unwrap();
    let mut stream = TextStream::new();
    let mut back = String::new();
    let mut prev = if spm { tok.bos() } else { u32::MAX };
    for &id in &ids[spm as usize..] {
        back += &stream.push(tok.decode(prev, id).unwrap());
        prev = id;
    }
    back += &stream.finish();
    assert_eq!(back, text, "{ids:?}");
}

fuzz_target!(|data: &[u8]| {
    static TOKS: OnceLock<Vec<(Tokenizer, bool)>> = OnceLock::new();
    let toks = TOKS.get_or_init(|| {
        vec![
            (spm(), true),
            (bpe("gpt2"), false),
            (bpe("llama-bpe"), false),
            (bpe("smollm"), false),
        ]
    });
    let text = String::from_utf8_lossy(data);
    for (tok, spm) in toks {
        round_trip(tok, &text, *spm);
    }
});
