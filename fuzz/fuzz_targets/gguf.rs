//! GGUF reader, Llama model and tokenizer from arbitrary bytes: errors are
//! fine, panics and huge allocations are not. A tokenizer that loads must
//! encode text and decode every token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = kvgpu::gguf::Gguf::from_vec(data.to_vec()) else {
        return;
    };
    for t in &g.tensors {
        // Small tensors of any block type decode without a panic.
        if let Ok(t) = g.tensor(&t.name, &t.dims) {
            if t.rows.saturating_mul(t.cols) <= 1 << 16 {
                let _ = t.to_f32();
            }
        }
    }
    let _ = kvgpu::Model::from_gguf(&g);
    if let Ok(tok) = kvgpu::Tokenizer::from_gguf(&g) {
        let _ = tok.encode_special("Hello <s> world 123 🦀", true, true);
        for id in 0..tok.vocab_size().min(4096) as u32 {
            let _ = tok.decode(tok.bos(), id);
        }
    }
});
