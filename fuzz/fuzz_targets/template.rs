//! Chat template rendering from arbitrary text, with the bounds a template
//! from a downloaded file runs under (instructions, nesting, output): the
//! bytes up to the first NUL are the template, the rest NUL-separated
//! messages. Errors are fine (a template may fail, or exceed a bound);
//! panics and hangs are not, and what renders is valid UTF-8 within the
//! output bound.
#![no_main]

use std::sync::OnceLock;

use kvgpu::{Chat, Message, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> Tokenizer {
    let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    pieces.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    let mut bytes = 8i32.to_le_bytes().to_vec();
    for p in &pieces {
        bytes.extend(0f32.to_le_bytes());
        bytes.extend((p.len() as i32).to_le_bytes());
        bytes.extend(p.as_bytes());
    }
    Tokenizer::from_llama2c_bytes(&bytes, pieces.len()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    let tok = TOK.get_or_init(tokenizer);
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or_default();
    let roles = ["system", "user", "assistant", "tool"];
    let messages: Vec<Message> = parts
        .enumerate()
        .map(|(i, content)| Message::new(roles[i % roles.len()], content))
        .collect();
    let Ok(chat) = Chat::with_template(template, tok, None) else {
        return;
    };
    for add_generation_prompt in [false, true] {
        if let Ok(out) = chat.render(&messages, add_generation_prompt) {
            assert!(out.len() <= kvgpu::chat::TEMPLATE_OUTPUT);
        }
    }
});
