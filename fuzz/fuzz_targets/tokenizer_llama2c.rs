//! llama2.c tokenizer reader from arbitrary bytes; the first 2 bytes choose
//! the vocabulary size. A tokenizer that loads must encode and decode text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let vocab = u16::from_le_bytes([data[0], data[1]]) as usize;
    let Ok(tok) = kvgpu::Tokenizer::from_llama2c_bytes(&data[2..], vocab) else {
        return;
    };
    let text = String::from_utf8_lossy(&data[2..data.len().min(66)]);
    if let Ok(ids) = tok.encode(&text, true, true) {
        for w in ids.windows(2) {
            let _ = tok.decode(w[0], w[1]).expect("encoded ids decode");
        }
    }
});
