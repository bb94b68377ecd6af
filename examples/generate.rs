//! Generate text with a GGUF or llama2.c model on the GPU, streaming it to stdout.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "Once upon a time"
//! ```
//!
//! With no `--model`, stories260K is taken from `$KVGPU_MODELS`, else from the
//! user cache folder, else downloaded there from the Hugging Face repo
//! `karpathy/tinyllamas`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvgpu::cpu::CpuSession;
use kvgpu::{
    generate, Gpu, GpuModel, KvDtype, Model, NoCache, Sampler, Session, SessionOptions, Tokenizer,
};

/// Generate text with a GGUF or llama2.c model, one GPU decode pass per token.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Model: a GGUF file (tokenizer inside) or a llama2.c checkpoint. Default: stories260K.bin.
    #[arg(long)]
    model: Option<PathBuf>,
    /// llama2.c tokenizer, for a llama2.c checkpoint. Default: tok<vocab>.bin or tokenizer.bin beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Text to start from.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Positions to run, prompt included (as run.c's -n); 0 = the model's context length.
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Top-p (nucleus) sampling threshold; outside (0, 1) samples from all tokens.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// RNG seed (default: the current time).
    #[arg(long)]
    seed: Option<u64>,
    /// Use the first adapter whose name contains this (else WGPU_ADAPTER_NAME, else the default).
    #[arg(long)]
    adapter: Option<String>,
    /// KV cache capacity in positions (default: the model's context length).
    #[arg(long)]
    capacity: Option<usize>,
    /// Store the KV cache as f16 (half the memory; values rounded to f16).
    #[arg(long)]
    kv_f16: bool,
    /// Decode without the KV cache: every token recomputes the whole prefix (for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Also run the CPU reference on the same input and report its speed.
    #[arg(long)]
    compare_cpu: bool,
}

const HF_BASE: &str = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K";
const DEFAULT_FILES: [&str; 2] = ["stories260K.bin", "tok512.bin"];

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (model_path, default_tokenizer) = match &args.model {
        Some(m) => (m.clone(), None),
        None => {
            let dir = default_model_dir()?;
            (dir.join(DEFAULT_FILES[0]), Some(dir.join(DEFAULT_FILES[1])))
        }
    };
    let loading = Instant::now();
    let (model, gguf_tokenizer) = Model::load(&model_path)?;
    let tokenizer = match (&args.tokenizer, gguf_tokenizer, default_tokenizer) {
        (Some(t), _, _) => Tokenizer::load(t, model.config.vocab_size)?,
        (None, Some(t), _) => t,
        (None, None, Some(t)) => Tokenizer::load(t, model.config.vocab_size)?,
        (None, None, None) => Tokenizer::load(
            find_tokenizer(&model_path, model.config.vocab_size)?,
            model.config.vocab_size,
        )?,
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let sampler = Sampler::new(args.temperature, args.top_p, seed)?;

    let gpu = Gpu::new(args.adapter.as_deref())?;
    let bar = ProgressBar::new(model.weights.bytes()).with_style(
        ProgressStyle::with_template("uploading weights {bar:40} {bytes}/{total_bytes} ({eta})")
            .expect("valid template"),
    );
    // Only worth a bar for big models.
    if model.weights.bytes() < 64 << 20 {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let gpu_model = GpuModel::with_progress(&gpu, &model, |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let load_time = loading.elapsed();
    let mut options = SessionOptions::default().kv_dtype(if args.kv_f16 {
        KvDtype::F16
    } else {
        KvDtype::F32
    });
    options.capacity = args.capacity;
    let session = Session::with_options(&gpu_model, options)?;
    let (dispatches, kv_bytes, capacity, per_position, kv_dtype) = (
        session.dispatches_per_token(),
        session.cache().bytes(),
        session.cache().capacity(),
        session.cache().bytes_per_position(),
        session.cache().dtype(),
    );
    let mut cached;
    let mut uncached;
    let decoder: &mut dyn kvgpu::Decoder = if args.no_cache {
        uncached = NoCache::new(session);
        &mut uncached
    } else {
        cached = session;
        &mut cached
    };

    let mut stdout = std::io::stdout();
    let started = Instant::now();
    let run = generate(
        decoder,
        &tokenizer,
        &mut sampler.clone(),
        &args.prompt,
        args.steps,
        |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    let wall = started.elapsed();
    println!();
    if args.no_cache {
        eprintln!("no KV cache: every token recomputed its whole prefix");
    }
    eprintln!(
        "adapter: {} | load {:.2} s | weights: {} bytes | prompt tokens: {} (first token after {:.3} s) | generated tokens: {} | {:.1} tok/s ({} positions in {:.2} s) | {} dispatches/token | KV cache: {} bytes ({} positions x {} bytes, {:?})",
        gpu.describe(),
        load_time.as_secs_f64(),
        model.weights.bytes(),
        run.prompt_tokens,
        run.first_token_seconds,
        run.generated_tokens,
        run.tokens_per_second,
        run.positions,
        wall.as_secs_f64(),
        dispatches,
        kv_bytes,
        capacity,
        per_position,
        kv_dtype,
    );
    if args.compare_cpu {
        let mut cpu = CpuSession::with_options(&model, options)?;
        let reference = generate(
            &mut cpu,
            &tokenizer,
            &mut sampler.clone(),
            &args.prompt,
            args.steps,
            |_| {},
        )?;
        eprintln!(
            "cpu reference: {:.1} tok/s | same text as the GPU: {}",
            reference.tokens_per_second,
            reference.text == run.text
        );
    }
    Ok(())
}

/// `tok<vocab>.bin` or `tokenizer.bin` beside the model.
fn find_tokenizer(model: &Path, vocab: usize) -> Result<PathBuf, String> {
    let dir = model.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(format!("tok{vocab}.bin")),
        dir.join("tokenizer.bin"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
            "no tokenizer given and none found beside the model (looked for {}); pass --tokenizer",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
        })
}

/// Where stories260K lives: `$KVGPU_MODELS`, else the user cache folder,
/// downloading into it when the files are missing.
fn default_model_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("KVGPU_MODELS").map(PathBuf::from) {
        if DEFAULT_FILES.iter().all(|f| dir.join(f).is_file()) {
            return Ok(dir);
        }
    }
    let cache = cache_dir()
        .ok_or("cannot tell where the user cache folder is (set HOME or KVGPU_MODELS)")?;
    for file in DEFAULT_FILES {
        let path = cache.join(file);
        if !path.is_file() {
            download(&format!("{HF_BASE}/{file}"), &path).map_err(|why| {
                format!(
                    "stories260K is not available offline and could not be downloaded ({why}).\n\
                     Get {HF_BASE}/stories260K.bin and {HF_BASE}/tok512.bin by hand and pass\n\
                     --model stories260K.bin --tokenizer tok512.bin, put them in {}, or set KVGPU_MODELS to their folder.",
                    cache.display()
                )
            })?;
        }
    }
    Ok(cache)
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kvgpu"))
}

/// Downloads `url` to `dest` with curl (its progress bar on stderr), via a
/// temporary file so an interrupted download never looks complete.
fn download(url: &str, dest: &Path) -> Result<(), String> {
    let dir = dest.parent().ok_or("bad destination")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let partial = dest.with_extension("part");
    eprintln!("downloading {url}");
    let status = std::process::Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--progress-bar",
            "--connect-timeout",
            "15",
            "-o",
        ])
        .arg(&partial)
        .arg(url)
        .status()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("curl failed ({status}) for {url}"));
    }
    std::fs::rename(&partial, dest).map_err(|e| format!("cannot move download into place: {e}"))
}
