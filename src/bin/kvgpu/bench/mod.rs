//! Decode benchmark: decode and prefill tok/s, GPU time per token (timestamp
//! queries), host time, dispatches and bytes per token, the achieved
//! bandwidth against the adapter's own copy bandwidth, the ceiling that the
//! adapter's launch costs put on decode, KV cache memory,
//! decoding with vs without the KV cache, and (`--profile`, `--profile-at`)
//! where one decode step's GPU time goes, kernel by kernel.
//!
//! ```text
//! kvgpu bench --models stories260K,15M,110M --profile
//! ```
//!
//! Models: `stories260K` (found or downloaded as `kvgpu run` does), synthetic Llama shapes from a
//! seeded RNG (`15M`: dim 288, 6 layers, F32; `110M`: dim 768, 12 layers,
//! F16), or `--shape name:dim,hidden,layers,heads,kv_heads,vocab,context,dtype`.

mod adapter;
mod batch;
mod models;
mod report;
mod tokenizer;
mod work;

use std::time::Instant;

use kvgpu::{wgpu, Decoder, Gpu, GpuModel, Model, NoCache, Profile, Sampler, Session};

use report::{CacheRow, KvRow, Row};
use work::pass_work;

/// Decode, prefill and no-cache rates, measured against the adapter's own
/// copy bandwidth and launch costs.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Comma-separated models: stories260K, 15M, 110M, smollm2 (the Q4_1
    /// file in $KVGPU_MODELS), smollm2-<type> (its weights converted to
    /// f16, q8_0, q4_0, ...), gemma3 and gemma3-f16 (Gemma 3 270M as
    /// published and converted, scripts/fetch-gemma3.sh), or names from --shape.
    #[arg(long, default_value = "stories260K,15M,110M")]
    models: String,
    /// Extra synthetic shape: name:dim,hidden,layers,heads,kv_heads,vocab,context,dtype
    /// (any weight type; K-quants and IQ4 are random blocks, for speed only).
    #[arg(long)]
    shape: Vec<String>,
    /// Tokens decoded per timed run.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Timed runs per model (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Generation lengths for the cache vs no-cache comparison (empty to skip).
    #[arg(long, default_value = "32,128,256")]
    no_cache_lengths: String,
    /// Models to run the no-cache comparison on (it recomputes T(T+1)/2
    /// positions: minutes for bigger shapes).
    #[arg(long, default_value = "stories260K,15M")]
    no_cache_models: String,
    /// Prompt length for the prefill rate.
    #[arg(long, default_value_t = 64)]
    prompt: usize,
    /// Print each model's per-kernel GPU time of one decode step.
    #[arg(long)]
    profile: bool,
    /// Positions to profile a decode step at, e.g. 16,256,500, in a
    /// session whose cache holds the model's whole context (as `kvgpu
    /// run`'s does; the timed runs size it to their tokens): the least of
    /// --runs profiles at each.
    #[arg(long, default_value = "")]
    profile_at: String,
    /// Print JSON rows instead of markdown tables.
    #[arg(long)]
    json: bool,
    /// Batch sizes for the many-sequence table (`Engine`: one pass per
    /// step decodes every sequence), e.g. 1,2,4,8,16; empty to skip.
    #[arg(long, default_value = "")]
    batch: String,
    /// Tokenizer throughput on texts of these sizes in KB (one letter,
    /// spaces, words), e.g. 10,100,1000, for both kinds of tokenizer
    /// (stories260K's SentencePiece, SmolLM2's byte-level BPE); empty to skip.
    #[arg(long, default_value = "")]
    tokenizer_kb: String,
}

/// Seconds to decode `t` greedy tokens from token 1 at position 0 (the
/// pipelines are built before timing starts).
fn greedy_seconds(d: &mut dyn Decoder, t: usize) -> kvgpu::Result<f64> {
    let started = Instant::now();
    let mut token = 1;
    for _ in 0..t {
        token = d.next_token(token, &mut Sampler::greedy())?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The adapter's rates, measured once per run.
struct Adapter {
    /// Copy bandwidth, bytes/s.
    copy: f64,
    /// Seconds to submit a pass and read 4 bytes back.
    floor: f64,
    /// Seconds per empty kernel launch.
    launch: f64,
}

/// What one model's runs measured.
struct Measured {
    row: Row,
    /// (what, profile) of a decode step and a prefill pass, with `--profile`.
    profiles: Vec<(String, Profile)>,
    /// Bytes/s the decode runs achieved and FLOP/s the prefill runs did.
    decode_bw: f64,
    prefill_flops: f64,
    kv_per_pos: f64,
}

/// Decode (greedy and top-p), encode-only, GPU time and prefill of `model`,
/// `args.runs` times each; medians.
fn measure(
    gpu: &Gpu,
    name: &str,
    model: &Model,
    gm: &GpuModel,
    args: &Args,
    adapter: &Adapter,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let c = &model.config;
    let capacity = c.seq_len.min((args.tokens + 2).max(args.prompt + 1));
    let mut s = Session::new(gm, Some(capacity))?;
    s.forward_greedy(1)?; // pipelines and first touch
    s.reset();
    let prompt: Vec<u32> = (0..args.prompt.min(capacity - 1) as u32)
        .map(|i| (i * 7919 + 1) % c.vocab_size as u32)
        .collect();
    s.prefill(&prompt)?; // the prefill pipelines
    let (mut decode, mut sampled, mut prefill) = (Vec::new(), Vec::new(), Vec::new());
    let (mut block4, mut block16) = (Vec::new(), Vec::new());
    let (mut host, mut gpu_time) = (Vec::new(), Vec::new());
    let mut profile = None;
    let mut prefill_profile = None;
    for _ in 0..args.runs {
        s.reset();
        let t = Instant::now();
        let mut token = 1;
        for _ in 0..args.tokens {
            token = s.forward_greedy(token)?;
        }
        decode.push(args.tokens as f64 / t.elapsed().as_secs_f64());
        // Greedy blocks: k steps per submit, tokens fed back on the GPU.
        for (k, rates) in [(4, &mut block4), (16, &mut block16)] {
            s.reset();
            let t = Instant::now();
            let mut token = 1;
            while s.len() < args.tokens {
                let steps = k.min(args.tokens - s.len());
                token = *s
                    .greedy_block(token, steps, &[])?
                    .last()
                    .expect("steps > 0");
            }
            rates.push(args.tokens as f64 / t.elapsed().as_secs_f64());
        }
        // Top-p sampling on the host: the logits are read back each token.
        s.reset();
        let mut sampler = Sampler::new(0.8, 0.9, 42)?;
        let t = Instant::now();
        let mut token = 1;
        for _ in 0..args.tokens {
            token = s.next_token(token, &mut sampler)?;
        }
        sampled.push(args.tokens as f64 / t.elapsed().as_secs_f64());
        // Encode + submit only: feed() does not wait for the GPU.
        s.reset();
        let t = Instant::now();
        for _ in 0..args.tokens {
            s.feed(&[token])?;
        }
        host.push(t.elapsed().as_secs_f64() * 1e3 / args.tokens as f64);
        gpu.device.poll(wgpu::PollType::wait_indefinitely())?;
        // GPU time of one decode step at the middle of the run's positions.
        s.truncate(args.tokens / 2)?;
        match s.profile(&[token]) {
            Ok(p) => {
                gpu_time.push(p.total() * 1e3);
                profile = Some(p);
            }
            Err(kvgpu::Error::Unsupported(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if args.profile && prefill_profile.is_none() {
            s.reset();
            let pass = &prompt[..prompt.len().min(s.prefill_tokens())];
            prefill_profile = Some(s.profile(pass)?);
        }
        // The prompt in prefill passes, logits of its last token read back.
        s.reset();
        let t = Instant::now();
        s.prefill(&prompt)?;
        prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
    }
    let tok_s = adapter::median(decode);
    let prefill_tok_s = adapter::median(prefill);
    let kv_per_pos = s.cache().bytes_per_position() as f64;
    // Each token reads every weight once plus the cache prefix (mean position tokens/2).
    let bytes = pass_work(model, kv_per_pos, args.tokens / 2, 1, true).bytes;
    let prefill_flops = pass_work(model, kv_per_pos, 0, prompt.len(), true).flops * prefill_tok_s
        / prompt.len() as f64;
    let mut profiles = Vec::new();
    if let (true, Some(p)) = (args.profile, profile) {
        profiles.push((format!("one decode step of {name}"), p));
    }
    if let Some(p) = prefill_profile {
        profiles.push((
            format!("a {}-token prefill pass of {name}", prompt.len()),
            p,
        ));
    }
    let dispatches = s.dispatches_per_token();
    let row = Row {
        model: name.to_string(),
        weight_dtype: model.weights.layers[0].wq.dtype.name().to_string(),
        weight_bytes: model.weights.bytes(),
        decode_tok_s: tok_s,
        block4_tok_s: adapter::median(block4),
        block16_tok_s: adapter::median(block16),
        launch_bound_tok_s: 1.0 / (adapter.floor + dispatches as f64 * adapter.launch),
        sampled_tok_s: adapter::median(sampled),
        prefill_tok_s,
        gpu_ms: (!gpu_time.is_empty()).then(|| adapter::median(gpu_time)),
        host_ms: adapter::median(host),
        dispatches,
        bytes_per_token: bytes,
        gb_s: bytes * tok_s / 1e9,
        copy_gb_s: adapter.copy / 1e9,
        copy_fraction: bytes * tok_s / adapter.copy,
    };
    Ok(Measured {
        row,
        profiles,
        decode_bw: bytes * tok_s,
        prefill_flops,
        kv_per_pos,
    })
}

/// Per-kernel GPU time of one decode step at each of `positions` (past
/// the context: skipped), in a session whose cache holds the model's whole
/// context: the least total of `runs` profiles at each. None where the
/// adapter cannot time kernels.
fn profile_at(
    name: &str,
    model: &Model,
    gm: &GpuModel,
    positions: &[usize],
    runs: usize,
) -> kvgpu::Result<Vec<(String, Profile)>> {
    let c = &model.config;
    let mut out = Vec::new();
    if !positions.iter().any(|&p| p < c.seq_len) {
        return Ok(out); // no whole-context cache to allocate
    }
    let mut s = Session::new(gm, None)?;
    for &pos in positions.iter().filter(|&&p| p < c.seq_len) {
        s.reset();
        let context: Vec<u32> = (0..pos as u32)
            .map(|i| (i * 7919 + 1) % c.vocab_size as u32)
            .collect();
        if !context.is_empty() {
            s.feed(&context)?;
        }
        let mut least: Option<Profile> = None;
        for _ in 0..runs.max(1) {
            s.truncate(pos)?;
            let p = match s.profile(&[1]) {
                Err(kvgpu::Error::Unsupported(_)) => return Ok(out),
                p => p?,
            };
            if least.as_ref().is_none_or(|l| p.total() < l.total()) {
                least = Some(p);
            }
        }
        let what = format!(
            "one decode step of {name} at position {pos} ({}-position cache, least of {} profiles)",
            c.seq_len,
            runs.max(1)
        );
        out.extend(least.map(|p| (what, p)));
    }
    Ok(out)
}

/// Generation of each of `lengths` tokens with and without the KV cache,
/// measured and predicted from the rates `m` measured.
fn cache_vs_no_cache(
    name: &str,
    model: &Model,
    gm: &GpuModel,
    lengths: &[usize],
    m: &Measured,
) -> kvgpu::Result<Vec<CacheRow>> {
    let mut rows = Vec::new();
    for &t in lengths.iter().filter(|&&t| t <= model.config.seq_len) {
        let mut cached = Session::new(gm, Some(t))?;
        cached.forward_greedy(1)?;
        cached.reset();
        let with = greedy_seconds(&mut cached, t)?;
        let without = greedy_seconds(&mut NoCache::new(Session::new(gm, Some(t))?), t)?;
        let predicted =
            work::predicted_no_cache_ratio(model, m.kv_per_pos, t, m.decode_bw, m.prefill_flops);
        rows.push(CacheRow {
            model: name.to_string(),
            tokens: t,
            cache_s: with,
            no_cache_s: without,
            speedup: without / with,
            predicted_speedup: predicted,
        });
    }
    Ok(rows)
}

/// The comma-separated numbers of `flag`'s `value` (none when empty).
fn counts(flag: &str, value: &str) -> Result<Vec<usize>, String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{flag} {value}: {s:?} is not a whole number"))
        })
        .collect()
}

/// Runs the benchmark.
pub fn main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let shapes: Vec<(String, String)> = args
        .shape
        .iter()
        .map(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(format!("--shape {s}: expected name:fields"))
        })
        .collect::<Result<_, _>>()?;
    let lengths = counts("--no-cache-lengths", &args.no_cache_lengths)?;
    let batches = counts("--batch", &args.batch)?;
    if batches.contains(&0) {
        return Err("--batch sizes are at least 1".into());
    }
    let profile_positions = counts("--profile-at", &args.profile_at)?;
    let tokenizer_kb = counts("--tokenizer-kb", &args.tokenizer_kb)?;
    if !tokenizer_kb.is_empty() {
        tokenizer::measure(&tokenizer_kb, args.runs)?;
    }
    if args.models.is_empty() {
        return Ok(());
    }
    let gpu = Gpu::new(None)?;
    let copy = adapter::copy_bandwidth(&gpu);
    let (floor, launch) = adapter::launch_costs(&gpu);
    let adapter = Adapter {
        copy,
        floor,
        launch,
    };
    let (mut rows, mut kv_rows, mut cache_rows, mut profiles) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut batch_rows, mut reuse_rows) = (Vec::new(), Vec::new());
    for name in args.models.split(',') {
        let model = models::load(name, &shapes)?;
        let c = &model.config;
        let gm = GpuModel::new(&gpu, &model)?;
        let m = measure(&gpu, name, &model, &gm, args, &adapter)?;
        if args.no_cache_models.split(',').any(|n| n == name) {
            cache_rows.extend(cache_vs_no_cache(name, &model, &gm, &lengths, &m)?);
        }
        kv_rows.push(KvRow {
            model: name.to_string(),
            layers: c.n_layers,
            context: c.seq_len,
            per_position: kvgpu::KvDtype::ALL
                .iter()
                .map(|t| t.fits(c.kv_dim()).then(|| t.bytes_per_position(c)))
                .collect(),
            total: kvgpu::KvDtype::ALL
                .iter()
                .map(|&t| {
                    let (whole, window) =
                        kvgpu::KvCache::bytes_for(c, c.seq_len, kvgpu::PREFILL_TOKENS, t);
                    t.fits(c.kv_dim()).then_some(whole + window)
                })
                .collect(),
        });
        let session_tok_s = m.row.decode_tok_s;
        batch_rows.extend(batch::measure(
            name,
            &gm,
            &batches,
            args.tokens,
            args.runs,
            session_tok_s,
        )?);
        if !batches.is_empty() {
            if let Some(r) = batch::prefix_reuse(&gm, 300, args.runs)? {
                reuse_rows.push((name.to_string(), r));
            }
        }
        rows.push(m.row);
        profiles.extend(m.profiles);
        profiles.extend(profile_at(
            name,
            &model,
            &gm,
            &profile_positions,
            args.runs,
        )?);
    }
    if args.json {
        report::print_json(&rows, &cache_rows)?;
        for r in &batch_rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "adapter: {} | copy bandwidth {:.2} GB/s (64 MiB buffer-to-buffer, median of 5) | \
         submit + 4-byte readback {:.0} us, empty kernel launch {:.0} us (medians of 30)\n",
        gpu.describe(),
        copy / 1e9,
        floor * 1e6,
        launch * 1e6
    );
    report::print_rows(&rows, args.prompt);
    report::print_kv(&kv_rows);
    report::print_cache(&cache_rows);
    batch::print(&batch_rows, args.tokens);
    for (name, (cold, warm, reused)) in &reuse_rows {
        println!(
            "{name}: time to first token of a 313-token prompt: {:.1} ms run whole, {:.1} ms when its first {reused} tokens' pages are reused ({:.1}x)",
            cold * 1e3,
            warm * 1e3,
            cold / warm
        );
    }
    for (what, p) in &profiles {
        report::print_profile(what, p);
    }
    Ok(())
}
