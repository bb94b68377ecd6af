//! `kvgpu`: Llama-family text generation with a KV cache on any GPU wgpu
//! reaches, and the tools around it.
//!
//! ```text
//! kvgpu run -p "Once upon a time" -n 100 --temp 0.8
//! kvgpu run -m SmolLM2-135M-Instruct.Q4_1.gguf -p "The capital of France is" -n 30 --temp 0
//! kvgpu chat -m SmolLM2-135M-Instruct.Q4_1.gguf --system "Answer briefly."
//! kvgpu bench --models stories260K,15M
//! kvgpu quantize -m stories260K.bin --tokenizer tok512.bin --type q8_0 -o stories260K-q8_0.gguf
//! ```
//!
//! Flags follow llama.cpp (`-m -p -n --temp --top-p --top-k -s -c`); run.c's
//! `--steps` (positions, prompt included) is kept so its reference texts can
//! be reproduced. Model files are found as `kvgpu::files` says: the path
//! given, `$KVGPU_MODELS`, the user cache folder, else (stories260K, the
//! default) downloaded there with a SHA-256 check.

mod bench;
mod chat;
mod perplexity;
mod quantize;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Llama-family text generation with a KV cache on any GPU wgpu reaches.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Run(Box<run::Args>),
    /// Chat with an instruct model (its file's chat template); scripted
    /// turns, one per line, when stdin is not a terminal.
    Chat(chat::Args),
    /// Perplexity of a text file, as llama.cpp's llama-perplexity scores it.
    Perplexity(perplexity::Args),
    /// Measure decode, prefill and cache vs no-cache rates on this adapter.
    Bench(bench::Args),
    /// Write a model's weights as Q8_0, Q4_0, F16 or F32 GGUF.
    Quantize(quantize::Args),
    /// Render one chat template request from stdin (run by kvgpu itself:
    /// templates from model files render in such a child, its memory and
    /// time bounded).
    #[command(hide = true)]
    RenderTemplate,
}

/// When this process began its work: the stats lines count from here.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    let cli = Cli::parse_from(llama_flags(std::env::args_os()));
    let result = match &cli.command {
        Command::Run(args) => run::main(args),
        Command::Chat(args) => chat::main(args),
        Command::Perplexity(args) => perplexity::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Quantize(args) => quantize::main(args),
        Command::RenderTemplate => return render_template(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// llama.cpp's single-dash long flags as this tool's long ones (clap reads
/// `-ngl` as `-n gl`).
fn llama_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const FLAGS: [(&str, &str); 5] = [
        ("-ngl", "--n-gpu-layers"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
        ("-np", "--parallel"),
        ("-cnv", "--conversation"),
    ];
    args.map(|a| match FLAGS.iter().find(|(short, _)| a == *short) {
        Some((_, long)) => long.into(),
        None => a,
    })
    .collect()
}

/// `-n`: a count, or -1 for as many as the context (or an end token) allows.
pub fn parse_n_predict(value: &str) -> Result<usize, String> {
    match value.parse::<i128>() {
        Ok(-1) => Ok(usize::MAX),
        Ok(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(format!(
            "{value}: -n takes a count of tokens, or -1 for until an end token or a full context"
        )),
    }
}

/// An RNG seed as given: a number, or -1 for a random one.
#[derive(Clone, Copy, Debug)]
pub struct Seed(Option<u64>);

impl Seed {
    /// The seed to use: the given one, else a random one, printed when
    /// `sampling` (it then repeats the run).
    pub fn resolve(given: Option<Seed>, sampling: bool) -> u64 {
        if let Some(Seed(Some(seed))) = given {
            return seed;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed = now.map_or(1, |d| d.as_nanos() as u64);
        if sampling {
            eprintln!("seed: {seed} (random; -s {seed} repeats this)");
        }
        seed
    }
}

/// `-s`: a seed, or -1 for a random one.
pub fn parse_seed(value: &str) -> Result<Seed, String> {
    match value {
        "-1" => Ok(Seed(None)),
        _ => value.parse().map(|s| Seed(Some(s))).map_err(|_| {
            format!("{value}: -s takes a seed (0 to 2^64 - 1), or -1 for a random one")
        }),
    }
}

/// The child's side of `kvgpu::chat::isolate_templates`: its address space
/// limited to `TEMPLATE_MEMORY` (an allocation past it aborts the child,
/// which its parent reports), one request from stdin rendered to stdout.
fn render_template() -> ExitCode {
    use std::io::{Read, Write};
    #[cfg(unix)]
    {
        let limit = libc::rlimit {
            rlim_cur: kvgpu::chat::TEMPLATE_MEMORY as libc::rlim_t,
            rlim_max: kvgpu::chat::TEMPLATE_MEMORY as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given; nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            eprintln!("cannot limit the template's memory");
            return ExitCode::FAILURE;
        }
    }
    let mut request = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut request) {
        eprintln!("cannot read the template request: {e}");
        return ExitCode::FAILURE;
    }
    match kvgpu::chat::render_request(&request) {
        Ok(text) => match std::io::stdout().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(e) => {
            eprint!("{}", e.to_string().trim_start_matches("chat: "));
            ExitCode::from(kvgpu::chat::TEMPLATE_REFUSED as u8)
        }
    }
}

/// Chat templates come inside downloaded model files: render them in a
/// child of this executable (`kvgpu render-template`), bounded in memory
/// and time, not in this process.
pub fn isolate_templates() -> Result<(), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to render chat templates: {e}"))?;
    kvgpu::chat::isolate_templates(exe, &["render-template"]);
    Ok(())
}

/// A device on `adapter` (else the environment's), its compiled kernels
/// kept between runs in the user cache folder's `kernels/` (or
/// `$KVGPU_KERNEL_CACHE`; `off` keeps none).
pub fn open_gpu(adapter: Option<&str>) -> kvgpu::Result<kvgpu::Gpu> {
    let gpu = kvgpu::Gpu::new(adapter)?;
    let dir = match std::env::var_os("KVGPU_KERNEL_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => kvgpu::files::cache_dir().map(|d| d.join("kernels")),
    };
    if let Some(dir) = dir {
        gpu.keep_kernels_in(dir);
    }
    Ok(gpu)
}

/// Runs `f` (a model upload, a session: what compiles kernels) with
/// "compiling kernels: N" counting on a terminal while it does.
pub fn compiling<T>(gpu: &kvgpu::Gpu, f: impl FnOnce() -> T) -> T {
    let before = gpu.compiled().pipelines;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} compiling kernels: {pos}").expect("valid template"),
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Shown only when it takes a while (a warm cache takes none).
            let mut shown = false;
            let started = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let n = gpu.compiled().pipelines - before;
                if !shown && started.elapsed().as_millis() > 300 && n > 0 {
                    shown = true;
                    bar.enable_steady_tick(std::time::Duration::from_millis(100));
                }
                if shown {
                    bar.set_position(n as u64);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            bar.finish_and_clear();
        });
        let value = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        value
    })
}

/// Writes the kernels' pipeline cache where `open_gpu` keeps it; a
/// failure is a warning (the next run compiles again).
pub fn save_kernels(gpu: &kvgpu::Gpu) {
    if let Err(e) = gpu.save_kernels() {
        eprintln!("\nwarning: the compiled kernels were not kept: {e}");
    }
}

/// `file` found as `kvgpu::files::find` does, else downloaded into the user
/// cache folder with a progress bar; offline, what to do instead.
pub fn fetch(file: &kvgpu::files::Known) -> Result<PathBuf, String> {
    let bar = ProgressBar::hidden();
    let mut shown = false;
    let path = kvgpu::files::fetch(file, |done, total| {
        if !shown {
            shown = true;
            eprintln!("downloading {} to {}", file.url, cache_display());
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({eta})")
                    .expect("valid template"),
            );
        }
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    });
    bar.finish_and_clear();
    path.map_err(|e| {
        let looked: Vec<String> = kvgpu::files::search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!(
            "{name} is not in {} and could not be downloaded ({e}).\n\
             Get {url} by hand and put it in {}, pass its path (-m for a model, \
             --tokenizer for a tokenizer), or set KVGPU_MODELS to its folder.",
            looked.join(" or "),
            cache_display(),
            name = file.name,
            url = file.url,
        )
    })
}

/// Checks, before any work, that `path` can be written and is none of
/// `inputs` (a file being read: writing a model whose memory map is live
/// would fault the reader).
pub fn check_output(path: &Path, inputs: &[Option<&Path>]) -> Result<(), String> {
    // Inputs as they will be read (a bare model name found in $KVGPU_MODELS).
    let inputs: Vec<PathBuf> = inputs.iter().flatten().map(|i| found(i)).collect();
    if let Some(input) = inputs.iter().find(|i| same_file(path, i)) {
        return Err(format!(
            "will not write {}: it is the input file {}",
            path.display(),
            input.display()
        ));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Whether `a` and `b` name one file (device and inode, or canonical path).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The model at `model` (else stories260K, found or downloaded) and its
/// tokenizer: the GGUF file's own, `tokenizer`, or the llama2.c one beside
/// the checkpoint.
pub fn load_model(
    model: Option<&Path>,
    tokenizer: Option<&Path>,
) -> Result<(kvgpu::Model, kvgpu::Tokenizer), Box<dyn std::error::Error>> {
    let path = match model {
        Some(m) => found(m),
        None => fetch(&kvgpu::files::STORIES260K)?,
    };
    let (weights, gguf_tokenizer) = kvgpu::Model::load(&path)?;
    let vocab = weights.config.vocab_size;
    let tokenizer = match (tokenizer, gguf_tokenizer) {
        (Some(t), _) => load_tokenizer(t, vocab)?,
        (None, Some(t)) => t,
        (None, None) if model.is_none() => load_tokenizer(&fetch(&kvgpu::files::TOK512)?, vocab)?,
        (None, None) => load_tokenizer(&tokenizer_beside(&path, vocab)?, vocab)?,
    };
    Ok((weights, tokenizer))
}

/// `path` as given when it exists or names a folder; else a bare file
/// name is looked for as `kvgpu::files::find` does (`$KVGPU_MODELS`, then
/// the user cache folder), and if it is not there either, the path as
/// given (whose error then names it).
pub fn found(path: &Path) -> PathBuf {
    let bare = path.parent().is_none_or(|p| p.as_os_str().is_empty());
    match (path.exists(), bare, path.to_str()) {
        (false, true, Some(name)) => kvgpu::files::find(name).unwrap_or_else(|_| path.into()),
        _ => path.into(),
    }
}

/// A KV cache type by name: f32, f16, q8_0 or q4_0.
pub fn parse_kv_type(name: &str) -> Result<kvgpu::KvDtype, String> {
    kvgpu::KvDtype::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("{name}: the KV cache types are f32, f16, q8_0 and q4_0"))
}

/// A llama2.c tokenizer, or an error saying what the file is instead when
/// it is a model.
pub fn load_tokenizer(path: &Path, vocab: usize) -> kvgpu::Result<kvgpu::Tokenizer> {
    kvgpu::Tokenizer::load(path, vocab).map_err(|e| match e {
        kvgpu::Error::TokenizerFormat { .. } if is_llama2c_checkpoint(path) => {
            kvgpu::Error::NotATokenizer {
                path: path.to_path_buf(),
                reason: "it is a llama2.c model checkpoint (pass it with -m)".into(),
            }
        }
        e => e,
    })
}

/// Whether `path` starts with a llama2.c header whose implied size is the file's.
fn is_llama2c_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 28];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let size = file.metadata().map_or(0, |m| m.len());
    if file.read_exact(&mut head).is_err() {
        return false;
    }
    let header = std::array::from_fn(|i| {
        i32::from_le_bytes(head[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    });
    kvgpu::Config::from_llama2c_header(header)
        .ok()
        .and_then(|c| c.llama2c_file_size())
        == Some(size)
}

fn cache_display() -> String {
    kvgpu::files::cache_dir().map_or("the cache folder".into(), |d| d.display().to_string())
}

/// `tok<vocab>.bin` or `tokenizer.bin` beside a llama2.c checkpoint.
pub fn tokenizer_beside(model: &Path, vocab: usize) -> Result<PathBuf, String> {
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
                "{}: a llama2.c checkpoint needs a tokenizer, and none was given or found beside it (looked for {}); pass --tokenizer",
                model.display(),
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
