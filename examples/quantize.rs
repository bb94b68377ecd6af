//! Write a model's matrices as Q8_0 in a GGUF file, with the library alone
//! (`kvgpu quantize` is the full tool).
//!
//! ```text
//! cargo run --release --example quantize -- stories260K.bin tok512.bin stories260K-q8_0.gguf
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, tokenizer, out] = args.as_slice() else {
        return Err("usage: quantize MODEL.bin TOKENIZER.bin OUT.gguf".into());
    };
    let (model, _) = kvgpu::Model::load(model)?;
    let tokenizer = kvgpu::Tokenizer::load(tokenizer, model.config.vocab_size)?;
    let bytes = model.to_gguf(&tokenizer, kvgpu::DType::Q8_0)?;
    std::fs::write(out, &bytes).map_err(|e| format!("cannot write {out}: {e}"))?;
    eprintln!("wrote {out}: {} bytes", bytes.len());
    Ok(())
}
