//! Convert a llama2.c checkpoint (with its tokenizer) or an F32/F16 GGUF into
//! a GGUF whose matrices are Q8_0 or Q4_0 (rows that are not whole 32-value
//! blocks stay F16; norm vectors stay F32).
//!
//! ```text
//! cargo run --release --example quantize -- --model stories260K.bin --tokenizer tok512.bin --type q8_0 --out stories260K-q8_0.gguf
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use kvgpu::{DType, Model, Tokenizer};

/// Quantize a model to a GGUF file.
#[derive(Parser, Debug)]
struct Args {
    /// Input: a llama2.c checkpoint or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// llama2.c tokenizer (needed for a llama2.c checkpoint).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Weight type to write.
    #[arg(long = "type", value_enum)]
    dtype: Quant,
    /// Output GGUF file.
    #[arg(long)]
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
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (model, gguf_tokenizer) = Model::load(&args.model)?;
    let tokenizer = match (&args.tokenizer, gguf_tokenizer) {
        (Some(t), _) => Tokenizer::load(t, model.config.vocab_size)?,
        (None, Some(t)) => t,
        (None, None) => return Err("a llama2.c checkpoint needs --tokenizer".into()),
    };
    let dtype = match args.dtype {
        Quant::Q8_0 => DType::Q8_0,
        Quant::Q4_0 => DType::Q4_0,
        Quant::F16 => DType::F16,
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
