//! `kvgpu run`: generate text from a prompt with a GGUF or llama2.c model,
//! one GPU decode pass per token, streaming it to stdout; a summary line
//! (adapter, load time, rates, KV cache memory) goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvgpu::cpu::CpuSession;
use kvgpu::{
    generate, generate_parallel, generate_shifting, ContextShift, Decoder, Engine, EngineOptions,
    GpuModel, KvDtype, Length, Lookup, NoCache, Prompt, Sampler, Session, SessionOptions,
    Tokenizer,
};

/// Generate text with a GGUF or llama2.c model.
#[derive(clap::Args, Clone, Debug)]
#[command(allow_negative_numbers = true)]
pub struct Args {
    /// Model: a GGUF file (tokenizer inside) or a llama2.c checkpoint
    /// [default: stories260K.bin, found or downloaded]
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// llama2.c tokenizer for a llama2.c checkpoint [default: tok<vocab>.bin
    /// or tokenizer.bin beside it]
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Text to start from.
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Read the prompt from this file (llama.cpp's flag): no limit of the
    /// command line's length.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    file: Option<PathBuf>,
    /// New tokens to generate after the prompt; -1: until an end token or
    /// the context is full (with --context-shift: until an end token).
    #[arg(short, long = "n-predict", value_name = "N", conflicts_with = "steps",
          allow_negative_numbers = true, value_parser = crate::parse_n_predict)]
    n_predict: Option<usize>,
    /// Positions to run, the prompt's included, as llama2.c's run.c counts
    /// them; 0 = the whole context [default: 256 when -n is not given]
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, visible_alias = "temperature", default_value_t = 1.0)]
    temp: f32,
    /// Top-p (nucleus) threshold; outside (0, 1) samples from all tokens.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Sample only among the k most likely tokens (run.c has no top-k).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Drop tokens less likely than P times the most likely one (llama.cpp's
    /// min-p; applied after temperature and top-k, before top-p); 0: off.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    min_p: f32,
    /// Divide the logit of each token among the last --repeat-last-n by
    /// this (multiply, if negative), as llama.cpp; 1: off.
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the penalties look back over, the prompt's included.
    #[arg(long, value_name = "N", default_value_t = 64)]
    repeat_last_n: usize,
    /// Lower the logit of each token seen there by this, once.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    presence_penalty: f32,
    /// Lower the logit of each token seen there by this, per time seen.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    frequency_penalty: f32,
    /// End the text where it first holds STR (not printed); repeatable.
    #[arg(long, value_name = "STR", conflicts_with = "load_state")]
    stop: Vec<String>,
    /// Print one JSON object (text, token ids, stop reason, timings) at
    /// the end instead of streaming the text.
    #[arg(long, conflicts_with = "parallel")]
    json: bool,
    /// RNG seed; -1: a random one, printed [default: random]
    #[arg(short, long, allow_negative_numbers = true, value_parser = crate::parse_seed)]
    seed: Option<crate::Seed>,
    /// KV cache capacity in positions [default: the model's context length]
    #[arg(short, long = "ctx-size", visible_alias = "capacity", value_name = "N")]
    ctx_size: Option<usize>,
    /// Use the first adapter whose name contains this (else WGPU_ADAPTER_NAME, else the default).
    #[arg(long)]
    adapter: Option<String>,
    /// KV cache storage: f32, f16 (half the memory), q8_0 (34/128 of f32's)
    /// or q4_0 (18/128); values are rounded or quantized as they are appended.
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = crate::parse_kv_type)]
    kv_type: KvDtype,
    /// Same as --kv-type f16.
    #[arg(long, conflicts_with = "kv_type")]
    kv_f16: bool,
    /// llama.cpp's K and V cache types (-ctk, -ctv): kvgpu keeps both in one
    /// type, --kv-type; given one or both (equal), it is that.
    #[arg(long, value_name = "TYPE", value_parser = crate::parse_kv_type, conflicts_with_all = ["kv_type", "kv_f16"])]
    cache_type_k: Option<KvDtype>,
    /// See --cache-type-k.
    #[arg(long, value_name = "TYPE", value_parser = crate::parse_kv_type, conflicts_with_all = ["kv_type", "kv_f16"])]
    cache_type_v: Option<KvDtype>,
    /// Accepted for llama.cpp's command lines (-ngl): every layer runs on the GPU.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    n_gpu_layers: Option<i64>,
    /// Accepted for llama.cpp's command lines and ignored: the work runs on
    /// the GPU, not on CPU threads.
    #[arg(short, long, value_name = "N", allow_negative_numbers = true)]
    threads: Option<i64>,
    /// llama.cpp's conversation mode (-cnv): use `kvgpu chat -m MODEL`.
    #[arg(long, hide = true)]
    conversation: bool,
    /// Decode without the KV cache: every token recomputes the whole prefix (for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Also run the CPU reference on the same input and report its speed.
    #[arg(long)]
    compare_cpu: bool,
    /// Keep generating past the model's end-of-sequence and end-of-turn
    /// tokens (and, for llama2.c models, BOS).
    #[arg(long)]
    ignore_eos: bool,
    /// Print generated control tokens (e.g. `<|im_end|>`, the end token
    /// included), which are otherwise left out, as llama.cpp's --special.
    #[arg(long)]
    special: bool,
    /// When the KV cache is full, drop old positions and go on (llama.cpp's
    /// context shift) instead of stopping: -n can exceed -c.
    #[arg(long, requires = "n_predict")]
    context_shift: bool,
    /// Positions a context shift keeps at the start (attention sinks).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        requires = "context_shift"
    )]
    keep: usize,
    /// Positions each shift drops [default: half of those after --keep];
    /// 1 keeps a sliding window of the last -c minus --keep (StreamingLLM).
    #[arg(long, value_name = "N", requires = "context_shift")]
    discard: Option<usize>,
    /// After generating, save the KV cache, tokens and sampler state here.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["no_cache", "context_shift"])]
    save_state: Option<PathBuf>,
    /// Restore a saved state and go on from it (-n more tokens; the
    /// sampler goes on as saved).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["no_cache", "prompt", "context_shift"], requires = "n_predict")]
    load_state: Option<PathBuf>,
    /// Sample N continuations of the prompt together (seeds seed, seed + 1,
    /// ...): the prompt runs once, then is forked in a paged KV pool; each
    /// step decodes all of them in one pass. Printed when all are done.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_cache", "context_shift", "save_state", "load_state", "compare_cpu"])]
    parallel: Option<usize>,
    /// Greedy decoding with prompt lookup: up to N tokens guessed from
    /// earlier in the context are checked in one batched pass (same text
    /// as plain greedy decoding, several tokens a pass where it repeats);
    /// drafts are passed up while checking them is measured not to pay.
    /// At most 7: with the current token, one 8-token tile of the
    /// matrix-matrix kernels.
    #[arg(long, value_name = "N", conflicts_with_all = ["no_cache", "save_state", "load_state", "parallel"])]
    lookup: Option<usize>,
    /// With --lookup: check every draft, whether or not it pays (to measure acceptance).
    #[arg(long, requires = "lookup")]
    lookup_always: bool,
}

/// Generates the text.
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &args.file {
        let prompt = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the prompt file {}: {e}", path.display()))?;
        let file = None;
        return main(&Args {
            prompt,
            file,
            ..args.clone()
        });
    }
    // Settings first: a bad one should not wait for a model to load.
    if args.conversation {
        return Err("kvgpu run has no conversation mode (-cnv): use kvgpu chat -m MODEL".into());
    }
    let kv_type = match (args.cache_type_k, args.cache_type_v) {
        (Some(k), Some(v)) if k != v => {
            return Err(format!(
                "-ctk {} and -ctv {}: kvgpu keeps K and V in one type (--kv-type)",
                k.name(),
                v.name()
            )
            .into())
        }
        (Some(t), _) | (_, Some(t)) => t,
        (None, None) if args.kv_f16 => KvDtype::F16,
        (None, None) => args.kv_type,
    };
    if args.n_gpu_layers.is_some() {
        eprintln!("note: every layer runs on the GPU (-ngl is accepted and ignored)");
    }
    if args.threads.is_some() {
        eprintln!("note: the work runs on the GPU (-t is accepted and ignored)");
    }
    if let Some(path) = &args.save_state {
        let inputs = [args.model.as_deref(), args.tokenizer.as_deref()];
        crate::check_output(path, &inputs)?;
    }
    let seed = crate::Seed::resolve(args.seed, args.temp > 0.0);
    let mut sampler = settings(args, Sampler::new(args.temp, args.top_p, seed)?)?;
    let loading = Instant::now();
    let (model, mut tokenizer) =
        crate::load_model(args.model.as_deref(), args.tokenizer.as_deref())?;
    if args.ignore_eos {
        tokenizer.set_end_tokens(Vec::new());
    }
    tokenizer.set_show_special(args.special);
    let mut options = SessionOptions::default().kv_dtype(kv_type);
    options.capacity = args.ctx_size;
    let capacity = args.ctx_size.unwrap_or(model.config.seq_len);
    let prompt = Prompt::encode(&tokenizer, &args.prompt)?.with_stop(&args.stop);
    let length = length(args, prompt.tokens().expect("encoded").len(), capacity);

    if args.parallel.is_some_and(|n| n == 0) {
        return Err("--parallel takes at least 1".into());
    }
    if args.lookup.is_some() && !sampler.is_greedy() {
        return Err("--lookup decodes greedily: add --temp 0 (and no penalties)".into());
    }
    let file_time = loading.elapsed();
    let gpu = crate::open_gpu(args.adapter.as_deref())?;
    let device_time = loading.elapsed() - file_time;
    let bar = ProgressBar::new(model.weights.bytes()).with_style(
        ProgressStyle::with_template("uploading weights {bar:40} {bytes}/{total_bytes} ({eta})")
            .expect("valid template"),
    );
    // Only worth a bar for big models.
    if model.weights.bytes() < 64 << 20 {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let gpu_model = crate::compiling(&gpu, || {
        GpuModel::with_progress(&gpu, &model, |done, _| bar.set_position(done))
    })?;
    bar.finish_and_clear();
    if let Some(n) = args.parallel {
        let kv_dtype = options.kv_dtype;
        return parallel(
            args,
            &gpu_model,
            &tokenizer,
            prompt,
            sampler,
            (n, length),
            kv_dtype,
        );
    }
    let mut session = crate::compiling(&gpu, || Session::with_options(&gpu_model, options))?;
    let load_time = loading.elapsed();
    // A saved state: its cache, its next token and its sampler.
    let resume = match &args.load_state {
        Some(path) => {
            let saved = session.restore(path)?;
            // The saved random state, with this run's settings; the
            // penalties look back over the restored tokens.
            if let Some(s) = saved.sampler.clone() {
                sampler = settings(args, s)?;
            }
            saved.tokens.iter().for_each(|&t| sampler.accept(t));
            let next = saved.next.ok_or_else(|| {
                format!(
                    "{}: the saved generation had ended (at an end token)",
                    path.display()
                )
            })?;
            Some((saved.tokens, next))
        }
        None => None,
    };
    let cpu_sampler = sampler.clone();
    let cache = session.cache();
    let kv = match cache.has_rings() {
        false => format!(
            "KV cache: {} bytes ({} positions x {} bytes, {:?})",
            cache.bytes(),
            cache.capacity(),
            cache.bytes_per_position(),
            cache.dtype()
        ),
        // Sliding-window layers keep rings of the positions they still read.
        true => {
            let c = session.model().config();
            let batch = session.prefill_tokens();
            let (whole, window) =
                kvgpu::KvCache::bytes_for(c, cache.capacity(), batch, cache.dtype());
            let rows = cache.layer_rows();
            let (n_window, ring) = (0..c.n_layers)
                .filter(|&l| c.layer_window(l).is_some())
                .fold((0, 0), |(n, _), l| (n + 1, rows[l]));
            format!(
                "KV cache: {} bytes ({} whole-context layers x {} positions: {whole} bytes; {n_window} sliding-window layers x {ring} positions: {window} bytes; {:?})",
                cache.bytes(),
                c.n_layers - n_window,
                cache.capacity(),
                cache.dtype()
            )
        }
    };
    let dispatches = session.dispatches_per_token();
    let bytes_per_position = cache.bytes_per_position();
    let (mut cached, mut uncached, mut lookup) = (None, None, None);
    let decoder: &mut dyn Decoder = match (args.no_cache, args.lookup) {
        (true, _) => uncached.insert(NoCache::new(session)),
        (false, Some(n)) => lookup.insert(match args.lookup_always {
            true => Lookup::new(session, n).draft_always(),
            false => Lookup::new(session, n),
        }),
        (false, None) => cached.insert(session),
    };

    let mut stdout = std::io::stdout();
    let started = Instant::now();
    let emit = |piece: &str| {
        if !args.json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    };
    let mut run = match (&resume, args.context_shift, args.n_predict) {
        (Some((_, next)), _, Some(n)) => {
            kvgpu::generate_tokens(decoder, &tokenizer, &mut sampler, &[*next], n, emit)?
        }
        (_, true, Some(n)) => {
            let shift = ContextShift {
                keep: args.keep,
                discard: args.discard,
            };
            let sampler = &mut sampler;
            let prompt = prompt.clone();
            generate_shifting(decoder, &tokenizer, sampler, prompt, n, shift, emit)?
        }
        _ => generate(
            decoder,
            &tokenizer,
            &mut sampler,
            prompt.clone(),
            length,
            emit,
        )?,
    };
    let in_use = format!(
        "KV in use: {} bytes ({} positions)",
        decoder.len() as u64 * bytes_per_position,
        decoder.len()
    );
    if let Some((saved, _)) = resume {
        // The whole sequence: the restored positions, then this run's.
        run.all_tokens.splice(0..0, saved);
    }
    if let (Some(path), Some(session)) = (&args.save_state, cached.as_ref()) {
        // The last token sampled is the next step's input, unless an end token ended the run.
        let len = session.len();
        let next = (!run.ended)
            .then(|| run.all_tokens.get(len).copied())
            .flatten();
        session.save(path, &run.all_tokens[..len], next, Some(&sampler), &[])?;
    }
    let wall = started.elapsed();
    crate::save_kernels(&gpu);
    match args.json {
        true => println!(
            "{}",
            json(args, &run, length, (load_time, wall), gpu.compiled())
        ),
        false => println!(),
    }
    let work = match &uncached {
        Some(no_cache) => format!(
            "no KV cache: {} positions computed in {} passes for {} positions",
            no_cache.positions_run(),
            no_cache.passes(),
            run.positions
        ),
        None => format!("{dispatches} dispatches/token"),
    };
    let work = match &lookup {
        Some(l) => {
            let s = l.stats();
            format!(
                "{work} | prompt lookup: {} verify passes + {} plain steps, {} of {} drafted tokens accepted ({:.0}%), {} drafts passed up (checking them did not pay)",
                s.verify_passes,
                s.plain_steps,
                s.accepted,
                s.drafted,
                100.0 * s.acceptance(),
                s.passed_up
            )
        }
        None => work,
    };
    let kv = format!("{kv} | {in_use}");
    let compiled = gpu.compiled();
    let cache = match gpu.kernel_cache() {
        Some(kvgpu::KernelCache::Loaded { bytes, .. }) => {
            format!(", kernel cache: {bytes} bytes read")
        }
        _ => String::new(),
    };
    let total = crate::STARTED.get().map_or(wall, |s| s.elapsed());
    eprintln!(
        "adapter: {} | load {:.2} s (file {:.2} s, device {:.2} s, kernels {:.2} s: {} compiled{cache}, weights and KV cache {:.2} s) | weights: {} bytes | prompt tokens: {} (first token after {:.3} s) | generated tokens: {} | {:.1} tok/s ({} positions in {:.2} s) | total {:.2} s | {work} | {kv}",
        gpu.describe(),
        load_time.as_secs_f64(),
        file_time.as_secs_f64(),
        device_time.as_secs_f64(),
        compiled.time.as_secs_f64(),
        compiled.pipelines,
        (load_time - file_time - device_time).saturating_sub(compiled.time).as_secs_f64(),
        model.weights.bytes(),
        run.prompt_tokens,
        run.first_token_seconds,
        run.generated_tokens,
        run.tokens_per_second,
        run.positions,
        wall.as_secs_f64(),
        total.as_secs_f64(),
    );
    if args.compare_cpu {
        let mut cpu = CpuSession::with_options(&model, options)?;
        let reference = generate(
            &mut cpu,
            &tokenizer,
            &mut cpu_sampler.clone(),
            prompt,
            length,
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

/// `--parallel N`: N continuations of the prompt through an engine whose
/// pool holds them all, each printed under its number; a summary line with
/// the aggregate rate and the pool's memory against N separate caches.
fn parallel(
    args: &Args,
    model: &GpuModel,
    tokenizer: &Tokenizer,
    prompt: Prompt,
    sampler: Sampler,
    (n, length): (usize, Length),
    kv_dtype: KvDtype,
) -> Result<(), Box<dyn std::error::Error>> {
    let c = model.config();
    let context = args.ctx_size.unwrap_or(c.seq_len);
    let prompt_tokens = prompt.tokens().expect("encoded").len();
    let new_tokens = match length {
        Length::NewTokens(t) => t,
        Length::Steps(s) => s.min(context).saturating_sub(prompt_tokens).max(1),
    };
    let page = 16.min(context);
    // Each continuation's pages, the prompt's counted once per fork: room for all.
    let per_sequence = prompt_tokens
        .saturating_add(new_tokens)
        .min(context)
        .div_ceil(page)
        + 1;
    let pages = n
        .checked_mul(per_sequence)
        .ok_or_else(|| format!("--parallel {n}: {n} sequences of {per_sequence} pages each are more pages than can be counted"))?;
    let options = EngineOptions::default()
        .context(context)
        .page_size(page)
        .pages(pages)
        .kv_dtype(kv_dtype);
    let mut engine = Engine::new(model, options)?;
    let seed = sampler.parts().3;
    let mut samplers: Vec<Sampler> = (0..n as u64)
        .map(|i| sampler.clone().reseeded(seed.wrapping_add(i)))
        .collect();
    let run = generate_parallel(
        &mut engine,
        tokenizer,
        &mut samplers,
        prompt,
        new_tokens,
        |_, _| {},
    )?;
    for (i, text) in run.texts.iter().enumerate() {
        println!(
            "--- continuation {} (seed {}) ---",
            i + 1,
            seed.wrapping_add(i as u64)
        );
        println!("{}{text}", args.prompt);
    }
    let peak = run.peak;
    let flat = n as u64 * context as u64 * kv_dtype.bytes_per_position(c);
    eprintln!(
        "{n} continuations | prompt tokens: {} (run once, first token after {:.3} s) | generated tokens: {} | {:.1} tok/s all together | KV pool peak: {} pages of {} positions held ({} shared), {} bytes (N flat caches of -c: {} bytes)",
        run.prompt_tokens,
        run.first_token_seconds,
        run.generated(),
        run.generated() as f64 / run.seconds,
        peak.pages.held,
        peak.page_size,
        peak.pages.shared,
        peak.held_bytes,
        flat
    );
    Ok(())
}

/// `run --json`'s object: the text (as printed, and what follows the
/// prompt), the sampled token ids, why it stopped, and the timings.
fn json(
    args: &Args,
    run: &kvgpu::Generation,
    length: Length,
    (load, wall): (std::time::Duration, std::time::Duration),
    compiled: kvgpu::Compiled,
) -> serde_json::Value {
    let stop_reason = match (run.ended, run.stop, length) {
        (true, _, _) => "eos",
        (_, Some(_), _) => "stop",
        (_, _, Length::NewTokens(n)) if run.generated_tokens == n => "length",
        (_, _, Length::Steps(n)) if run.positions == n => "length",
        _ => "context",
    };
    serde_json::json!({
        "text": run.text,
        "content": run.text.strip_prefix(args.prompt.as_str()).unwrap_or(&run.text),
        "tokens": run.tokens,
        "prompt_tokens": run.prompt_tokens,
        "generated_tokens": run.generated_tokens,
        "stop_reason": stop_reason,
        "stop": run.stop.and_then(|i| args.stop.iter().filter(|s| !s.is_empty()).nth(i)),
        "timings": {
            "load_seconds": load.as_secs_f64(),
            "kernels_compiled": compiled.pipelines,
            "kernels_seconds": compiled.time.as_secs_f64(),
            "first_token_seconds": run.first_token_seconds,
            "tokens_per_second": run.tokens_per_second,
            "generation_seconds": wall.as_secs_f64(),
        },
    })
}

/// `sampler` with the flags' top-k, min-p and penalties.
fn settings(args: &Args, mut sampler: Sampler) -> kvgpu::Result<Sampler> {
    if let Some(k) = args.top_k {
        sampler = sampler.with_top_k(k)?;
    }
    sampler.with_min_p(args.min_p)?.with_penalties(
        args.repeat_last_n,
        args.repeat_penalty,
        args.frequency_penalty,
        args.presence_penalty,
    )
}

/// How long to generate: `-n` new tokens, or `--steps` positions (256 when
/// neither is given), with a warning when the KV cache cannot hold that many.
fn length(args: &Args, prompt: usize, capacity: usize) -> Length {
    // The prompt's last token is decoded with the new ones.
    let fed = prompt - 1;
    match (args.n_predict, args.steps) {
        (Some(n), _) => {
            if fed.saturating_add(n) > capacity && !args.context_shift && n != usize::MAX {
                eprintln!(
                    "warning: -n {n} after a {prompt}-token prompt needs {} positions, but the KV cache holds {capacity} (-c): generating at most {} tokens",
                    fed.saturating_add(n),
                    capacity.saturating_sub(fed)
                );
            }
            Length::NewTokens(n)
        }
        (None, Some(steps)) => {
            if steps > capacity {
                eprintln!(
                    "warning: --steps {steps} is more than the KV cache's {capacity} positions (-c): running {capacity}"
                );
            }
            Length::Steps(steps)
        }
        (None, None) => Length::Steps(256),
    }
}
