//! `kvgpu perplexity`: a model's perplexity over a text file, chunked and
//! scored as llama.cpp's `llama-perplexity` does (see
//! `kvgpu::perplexity`), each chunk through the batched prefill. With
//! `--kl-divergence-base FILE` the scored rows' log-probabilities are saved
//! (f16); adding `--kl-divergence` compares this run against them instead:
//! mean KL divergence, top-1 agreement and Δppl, how a quantized file or KV
//! cache is measured against F16.

use std::io::{Read, Write};
use std::path::PathBuf;

use kvgpu::perplexity::{chunks, first_scored, log_softmax, Comparison, Perplexity};
use kvgpu::{GpuModel, KvDtype, Session, SessionOptions};

/// Measure perplexity (and KL divergence against a base run).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a llama2.c checkpoint [default: stories260K]
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// llama2.c tokenizer for a llama2.c checkpoint.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The text to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short, long = "ctx-size", value_name = "N", default_value_t = 512)]
    ctx_size: usize,
    /// Score at most this many chunks [default: all]
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// KV cache storage: f32, f16, q8_0 or q4_0.
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = crate::parse_kv_type)]
    kv_type: KvDtype,
    /// Save the scored log-probabilities here (or, with --kl-divergence, read them).
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare against --kl-divergence-base instead of writing it.
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
    /// Use the first adapter whose name contains this.
    #[arg(long)]
    adapter: Option<String>,
}

/// Base file: magic, then u32 n_ctx, vocab, chunks, the chunks' tokens, and
/// per scored row its log-probabilities as f16.
const MAGIC: &[u8; 8] = b"KVGPUKL1";

/// Scores the text.
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let (Some(base), false) = (&args.kl_divergence_base, args.kl_divergence) {
        let inputs = [
            args.model.as_deref(),
            args.tokenizer.as_deref(),
            Some(&args.file),
        ];
        crate::check_output(base, &inputs)?;
    }
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let (model, tokenizer) = crate::load_model(args.model.as_deref(), args.tokenizer.as_deref())?;
    let n_ctx = args.ctx_size;
    let tokens = tokenizer.encode(&text, tokenizer.add_bos(), false)?;
    let bos = tokenizer.add_bos().then(|| tokenizer.bos());
    let chunks = chunks(&tokens, n_ctx, bos, args.chunks.unwrap_or(usize::MAX));
    if n_ctx < 4 || chunks.is_empty() {
        return Err(format!(
            "{} tokens: need at least one chunk of -c {n_ctx} (and -c of at least 4)",
            tokens.len()
        )
        .into());
    }
    let vocab = model.config.vocab_size;
    let gpu = crate::open_gpu(args.adapter.as_deref())?;
    let gpu_model = crate::compiling(&gpu, || GpuModel::new(&gpu, &model))?;
    let mut options = SessionOptions::default().kv_dtype(args.kv_type);
    options.capacity = Some(n_ctx);
    let mut session = crate::compiling(&gpu, || Session::with_options(&gpu_model, options))?;
    let first = first_scored(n_ctx);
    let rows = n_ctx - 1 - first;
    eprintln!(
        "{} tokens, {} chunks of {n_ctx}, {rows} tokens scored per chunk",
        tokens.len(),
        chunks.len()
    );
    let compare = args.kl_divergence;
    let mut base = match (&args.kl_divergence_base, compare) {
        (Some(path), true) => Some(BaseReader::open(path, n_ctx, vocab, &chunks)?),
        _ => None,
    };
    let mut save = match (&args.kl_divergence_base, compare) {
        (Some(path), false) => Some(BaseWriter::create(path, n_ctx, vocab, &chunks)?),
        _ => None,
    };
    let mut nll = Vec::new();
    let mut comparison = Comparison::default();
    let started = std::time::Instant::now();
    for (i, chunk) in chunks.iter().enumerate() {
        session.reset();
        session.feed(&chunk[..first])?;
        let logits = session.prefill_all(&chunk[first..n_ctx - 1])?;
        for (j, row) in logits.chunks_exact(vocab).enumerate() {
            let lp = log_softmax(row);
            let next = chunk[first + j + 1];
            nll.push(-lp[next as usize]);
            if let Some(w) = &mut save {
                w.row(&lp)?;
            }
            if let Some(b) = &mut base {
                comparison.add(&b.row()?, &lp, next);
            }
        }
        let p = Perplexity::from_nll(&nll);
        eprintln!(
            "[{}/{}] ppl {:.4} ({:.1} s)",
            i + 1,
            chunks.len(),
            p.ppl,
            started.elapsed().as_secs_f64()
        );
    }
    crate::save_kernels(&gpu);
    let p = Perplexity::from_nll(&nll);
    println!("Final estimate: PPL = {:.4} +/- {:.5}", p.ppl, p.error);
    if compare {
        let d = comparison.result();
        println!(
            "Base PPL = {:.4} +/- {:.5} | PPL ratio {:.6} | Δppl = {:.4}",
            d.base.ppl,
            d.base.error,
            d.ppl.ppl / d.base.ppl,
            d.ppl.ppl - d.base.ppl
        );
        println!("Mean KLD: {:.6} +/- {:.6}", d.mean, d.error);
        println!("Same top p: {:.3} %", 100.0 * d.top1);
    }
    if let Some(w) = save {
        w.finish()?;
    }
    Ok(())
}

/// Writes a base file.
struct BaseWriter(std::io::BufWriter<std::fs::File>);

impl BaseWriter {
    fn create(
        path: &std::path::Path,
        n_ctx: usize,
        vocab: usize,
        chunks: &[Vec<u32>],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        w.write_all(MAGIC)?;
        for v in [n_ctx, vocab, chunks.len()] {
            w.write_all(&(v as u32).to_le_bytes())?;
        }
        for t in chunks.iter().flatten() {
            w.write_all(&t.to_le_bytes())?;
        }
        Ok(Self(w))
    }

    fn row(&mut self, lp: &[f64]) -> std::io::Result<()> {
        let bytes: Vec<u8> = lp
            .iter()
            .flat_map(|&v| half::f16::from_f64(v.max(-65000.0)).to_le_bytes())
            .collect();
        self.0.write_all(&bytes)
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Reads a base file made from the same tokens, chunking and vocabulary.
struct BaseReader {
    file: std::io::BufReader<std::fs::File>,
    buf: Vec<u8>,
}

impl BaseReader {
    fn open(
        path: &std::path::Path,
        n_ctx: usize,
        vocab: usize,
        chunks: &[Vec<u32>],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let err = |what: &str| format!("{}: {what}", path.display());
        let file = std::fs::File::open(path).map_err(|e| err(&e.to_string()))?;
        let mut file = std::io::BufReader::new(file);
        let mut head = [0u8; 20];
        file.read_exact(&mut head)
            .map_err(|_| err("not a kvgpu KL base file"))?;
        let word = |i: usize| u32::from_le_bytes(head[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        if &head[..8] != MAGIC {
            return Err(err("not a kvgpu KL base file").into());
        }
        let (n, v, c) = (word(0) as usize, word(1) as usize, word(2) as usize);
        if (n, v) != (n_ctx, vocab) || c < chunks.len() {
            return Err(err(&format!(
                "made with -c {n}, vocabulary {v}, {c} chunks; this run has -c {n_ctx}, vocabulary {vocab}, {} chunks",
                chunks.len()
            ))
            .into());
        }
        // The file's size follows from its header: checked before anything
        // is read or allocated (a header may claim 2^32 - 1 chunks).
        let rows = n_ctx - 1 - first_scored(n_ctx);
        let expected = (c as u64)
            .checked_mul(n as u64 * 4 + rows as u64 * vocab as u64 * 2)
            .and_then(|b| b.checked_add(20));
        let found = file
            .get_ref()
            .metadata()
            .map_err(|e| err(&e.to_string()))?
            .len();
        if expected != Some(found) {
            return Err(err(&format!(
                "{found} bytes, but its header ({c} chunks of {n} tokens, vocabulary {v}) says {}: truncated or not a kvgpu KL base file",
                expected.map_or("more than can be counted".into(), |e| e.to_string())
            ))
            .into());
        }
        // This run's chunks come first; the base's further chunks are not compared.
        let mut tokens = vec![0u8; chunks.len() * n * 4];
        file.read_exact(&mut tokens).map_err(|_| err("truncated"))?;
        file.seek_relative(((c - chunks.len()) * n * 4) as i64)
            .map_err(|e| err(&e.to_string()))?;
        let same = tokens
            .chunks_exact(4)
            .zip(chunks.iter().flatten())
            .all(|(b, &t)| u32::from_le_bytes(b.try_into().unwrap()) == t);
        if !same {
            return Err(err("made from other tokens (another text or tokenizer)").into());
        }
        Ok(Self {
            file,
            buf: vec![0; vocab * 2],
        })
    }

    fn row(&mut self) -> Result<Vec<f64>, String> {
        self.file
            .read_exact(&mut self.buf)
            .map_err(|_| "the KL base file is truncated".to_string())?;
        Ok(self
            .buf
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect())
    }
}
