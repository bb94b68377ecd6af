//! The library in a few lines: load a model (GGUF, or llama2.c with its
//! tokenizer), put it on the GPU, and stream 100 new tokens of a prompt.
//! The `kvgpu` binary (`--features cli`) is the full tool.
//!
//! ```text
//! cargo run --release --example generate -- stories260K.bin tok512.bin "Once upon a time"
//! cargo run --release --example generate -- model.gguf "The capital of France is"
//! ```

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_path) = args.first() else {
        return Err("usage: generate MODEL [TOKENIZER] [PROMPT]".into());
    };
    let (model, gguf_tokenizer) = kvgpu::Model::load(model_path)?;
    // A GGUF file carries its tokenizer; a llama2.c checkpoint's comes next.
    let (tokenizer, prompt) = match gguf_tokenizer {
        Some(t) => (t, args.get(1)),
        None => {
            let path = args
                .get(1)
                .ok_or("a llama2.c checkpoint needs its tokenizer")?;
            let t = kvgpu::Tokenizer::load(path, model.config.vocab_size)?;
            (t, args.get(2))
        }
    };
    let gpu = kvgpu::Gpu::new(None)?;
    let mut session = kvgpu::Session::new(&kvgpu::GpuModel::new(&gpu, &model)?, None)?;
    let mut sampler = kvgpu::Sampler::new(0.8, 0.9, 42)?;
    let prompt = prompt.map_or("", String::as_str);
    let length = kvgpu::Length::NewTokens(100);
    let run = kvgpu::generate(
        &mut session,
        &tokenizer,
        &mut sampler,
        prompt,
        length,
        |s| {
            print!("{s}");
            let _ = std::io::stdout().flush();
        },
    )?;
    println!();
    eprintln!(
        "{} tokens at {:.1} tok/s",
        run.generated_tokens, run.tokens_per_second
    );
    Ok(())
}
