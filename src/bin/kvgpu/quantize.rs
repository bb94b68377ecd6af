//! `kvgpu quantize`: a llama2.c checkpoint (with its tokenizer) or a GGUF
//! model of any type kvgpu reads written as a GGUF whose matrices are
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1 (rows that are not whole
//! 32-value blocks stay F16; norm vectors stay F32). A GGUF source keeps its
//! metadata (tokenizer, chat template). Quantized sources are dequantized
//! to f32 first, with a warning, as llama.cpp's `--allow-requantize`.

use std::path::PathBuf;

use kvgpu::tensor::QUANTIZERS;
use kvgpu::DType;

/// Quantize a model to a GGUF file.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input: a llama2.c checkpoint or a GGUF file.
    #[arg(short, long)]
    model: PathBuf,
    /// llama2.c tokenizer (default: tok<vocab>.bin or tokenizer.bin beside a llama2.c checkpoint).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Weight type to write: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1.
    #[arg(long = "type", value_parser = parse_type)]
    dtype: DType,
    /// Output GGUF file.
    #[arg(short, long)]
    out: PathBuf,
}

fn parse_type(name: &str) -> Result<DType, String> {
    DType::from_name(name)
        .filter(|t| QUANTIZERS.contains(t))
        .ok_or_else(|| {
            let names: Vec<String> = QUANTIZERS.iter().map(|t| t.name().to_lowercase()).collect();
            format!("kvgpu writes {}", names.join(", "))
        })
}

/// Writes the converted file.
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    crate::check_output(&args.out, &[Some(&args.model), args.tokenizer.as_deref()])?;
    let gguf = kvgpu::gguf::Gguf::open(crate::found(&args.model)).ok();
    let (model, tokenizer) = crate::load_model(Some(&args.model), args.tokenizer.as_deref())?;
    let dtype = args.dtype;
    let requantized: Vec<&str> = model
        .weights
        .tensors()
        .iter()
        .filter(|t| t.dtype.block_len() > 1 && t.dtype != dtype)
        .map(|t| t.dtype.name())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !requantized.is_empty() {
        eprintln!(
            "warning: requantizing {} weights to {}: they are dequantized to f32 first, so {} carries both roundings (quantize from F16 or F32 weights where you have them)",
            requantized.join(", "),
            dtype.name(),
            args.out.display()
        );
    }
    let bytes = match &gguf {
        // The source's metadata, tokenizer and chat template included.
        Some(g) => model.to_gguf_with(&g.metadata, dtype),
        None => model.to_gguf(&tokenizer, dtype)?,
    };
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
