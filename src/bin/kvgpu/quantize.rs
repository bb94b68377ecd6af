//! `kvgpu quantize`: a llama2.c checkpoint (with its tokenizer) or a GGUF
//! model written as a GGUF whose matrices are Q8_0, Q4_0, F16 or F32 (rows
//! that are not whole 32-value blocks stay F16; norm vectors stay F32).

use std::path::PathBuf;

use clap::ValueEnum;
use kvgpu::{DType, Model};

/// Quantize a model to a GGUF file.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input: a llama2.c checkpoint or a GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// llama2.c tokenizer (default: tok<vocab>.bin or tokenizer.bin beside a llama2.c checkpoint).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Weight type to write.
    #[arg(long = "type", value_enum)]
    dtype: Quant,
    /// Output GGUF file.
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Quant {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "f16")]
    F16,
    #[value(name = "f32")]
    F32,
}

/// Writes the converted file.
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (model, gguf_tokenizer) = Model::load(&args.model)?;
    let vocab = model.config.vocab_size;
    let tokenizer = match (&args.tokenizer, gguf_tokenizer) {
        (Some(t), _) => crate::load_tokenizer(t, vocab)?,
        (None, Some(t)) => t,
        (None, None) => {
            crate::load_tokenizer(&crate::tokenizer_beside(&args.model, vocab)?, vocab)?
        }
    };
    let dtype = match args.dtype {
        Quant::Q8_0 => DType::Q8_0,
        Quant::Q4_0 => DType::Q4_0,
        Quant::F16 => DType::F16,
        Quant::F32 => DType::F32,
    };
    let bytes = model.to_gguf(&tokenizer, dtype)?;
    std::fs::write(&args.out, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} bytes, weights {} -> {} bytes)",
        args.out.display(),
        bytes.len(),
        model.weights.bytes(),
        model.weights.convert(dtype).bytes()
    );
    Ok(())
}
