//! Decode benchmark: decode and prefill tok/s, GPU time per token (timestamp
//! queries), host time, dispatches and bytes per token, the achieved
//! bandwidth against the adapter's own copy bandwidth, the ceiling that the
//! adapter's launch costs put on decode, KV cache memory,
//! decoding with vs without the KV cache, and (`--profile`) where one decode
//! step's GPU time goes, kernel by kernel.
//!
//! ```text
//! cargo run --release --example bench -- --models stories260K,15M,110M --profile
//! ```
//!
//! Models: `stories260K` (from `$KVGPU_MODELS`), synthetic Llama shapes from a
//! seeded RNG (`15M`: dim 288, 6 layers, F32; `110M`: dim 768, 12 layers,
//! F16), or `--shape name:dim,hidden,layers,heads,kv_heads,vocab,context,dtype`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use kvgpu::{Config, DType, Decoder, Gpu, GpuModel, Model, NoCache, Sampler, Session, Tensor};

#[derive(Parser, Debug)]
struct Args {
    /// Comma-separated models: stories260K, 15M, 110M, or names from --shape.
    #[arg(long, default_value = "stories260K,15M,110M")]
    models: String,
    /// Extra synthetic shape: name:dim,hidden,layers,heads,kv_heads,vocab,context,dtype
    /// (f32|f16|q8_0|q4_0, or q4_k: random blocks, for speed only; F16 embedding).
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
    /// Print JSON rows instead of markdown tables.
    #[arg(long)]
    json: bool,
}

fn synthetic(name: &str, spec: &str) -> Result<(Config, DType), String> {
    let f: Vec<&str> = spec.split(',').collect();
    if f.len() != 8 {
        return Err(format!("--shape {name}: need 8 fields, got {}", f.len()));
    }
    let n = |i: usize| {
        f[i].parse::<usize>()
            .map_err(|e| format!("--shape {name}: field {i}: {e}"))
    };
    let dtype = match f[7].to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        "q4_k" => DType::Q4_K,
        other => return Err(format!("--shape {name}: unknown dtype {other}")),
    };
    let (dim, heads) = (n(0)?, n(3)?);
    let config = Config {
        dim,
        hidden_dim: n(1)?,
        n_layers: n(2)?,
        n_heads: heads,
        n_kv_heads: n(4)?,
        vocab_size: n(5)?,
        seq_len: n(6)?,
        shared_classifier: true,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_dim: dim / heads.max(1),
        rope_freq_factors: None,
    };
    Ok((config, dtype))
}

fn load(name: &str, shapes: &[(String, String)]) -> Result<Model, Box<dyn std::error::Error>> {
    let spec = match name {
        "stories260K" => {
            let dir = std::env::var_os("KVGPU_MODELS")
                .map(PathBuf::from)
                .ok_or("set KVGPU_MODELS for stories260K")?;
            return Ok(Model::load_llama2c(dir.join("stories260K.bin"))?);
        }
        "15M" => "288,768,6,6,6,32000,256,f32".to_string(),
        "110M" => "768,2048,12,12,12,32000,1024,f16".to_string(),
        other => shapes
            .iter()
            .find(|(n, _)| n == other)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| format!("unknown model {other}"))?,
    };
    let (config, dtype) = synthetic(name, &spec)?;
    let model = Model::random(config, 2024)?;
    if dtype != DType::Q4_K {
        return Ok(Model {
            weights: model.weights.convert(dtype),
            config: model.config,
        });
    }
    // No K-quant quantizer: random Q4_K blocks with small scales (the
    // kernels' speed does not depend on the values), F16 elsewhere.
    let mut weights = model.weights.convert(DType::F16);
    let mut rng = kvgpu::sampler::XorShift::new(7);
    for l in &mut weights.layers {
        for t in [
            &mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w1, &mut l.w2, &mut l.w3,
        ] {
            let row_bytes = DType::Q4_K.row_bytes(t.cols).ok_or(format!(
                "{name}: {} columns are not whole Q4_K blocks",
                t.cols
            ))?;
            let mut bytes: Vec<u8> = (0..t.rows * row_bytes)
                .map(|_| rng.next_u32() as u8)
                .collect();
            for block in bytes.chunks_mut(DType::Q4_K.block_bytes()) {
                block[..4].copy_from_slice(&[0x00, 0x14, 0x00, 0x10]); // d, dmin ~ 1e-3
            }
            let n = bytes.len();
            *t = Tensor::from_shared(
                DType::Q4_K,
                t.rows,
                t.cols,
                std::sync::Arc::new(bytes),
                0..n,
            );
        }
    }
    Ok(Model {
        weights,
        config: model.config,
    })
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Bytes per second of a buffer-to-buffer copy on the device (median of 5).
fn copy_bandwidth(gpu: &Gpu) -> f64 {
    let size = 64u64 << 20;
    let make = |usage| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench copy"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make(wgpu::BufferUsages::COPY_SRC);
    let dst = make(wgpu::BufferUsages::COPY_DST);
    let times: Vec<f64> = (0..6)
        .map(|_| {
            let t = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for _ in 0..4 {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
            }
            gpu.queue.submit([enc.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .expect("poll");
            t.elapsed().as_secs_f64()
        })
        .skip(1) // first touch of the pages
        .collect();
    4.0 * size as f64 / median(times)
}

/// The adapter's fixed costs of a decode step (medians of 30): seconds to
/// submit a pass and read 4 bytes back, and seconds per launch of an empty
/// kernel (32 launches in one pass, each with its own bind group, as a
/// decode step records them). A step of `d` launches can run no faster than
/// `floor + d * launch`, whatever its kernels do.
fn launch_costs(gpu: &Gpu) -> (f64, f64) {
    let d = &gpu.device;
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench empty kernel"),
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read_write> o: array<f32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                 o[g.x] += 1.0;
             }"
            .into(),
        ),
    });
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench empty kernel"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let buffer = |size, usage| {
        d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench launch"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let out = buffer(
        256,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let readback = buffer(
        4,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let groups: Vec<wgpu::BindGroup> = (0..32)
        .map(|_| {
            d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: out.as_entire_binding(),
                }],
            })
        })
        .collect();
    let step = |launches: usize| {
        let times = (0..31).map(|_| {
            let t = Instant::now();
            let mut enc = d.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                for g in &groups[..launches] {
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(1, 1, 1);
                }
            }
            enc.copy_buffer_to_buffer(&out, 0, &readback, 0, 4);
            gpu.queue.submit([enc.finish()]);
            readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            d.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            readback.unmap();
            t.elapsed().as_secs_f64()
        });
        median(times.skip(1).collect())
    };
    let floor = step(0);
    (floor, (step(32) - floor) / 32.0)
}

/// Work of one pass: bytes read and floating-point operations.
#[derive(Clone, Copy, Default)]
struct Work {
    bytes: f64,
    flops: f64,
}

/// Work of a pass over `n` tokens from position `pos` (decode when n = 1,
/// with the classifier when `logits`): weights are read once per pass of
/// one token and once per 8-token tile in a prefill pass; each token reads
/// its cache prefix; 2 FLOPs per weight per token, 4 per cached value.
fn pass_work(model: &Model, kv_per_pos: f64, pos: usize, n: usize, logits: bool) -> Work {
    let c = &model.config;
    let cls = (c.vocab_size * c.dim) as f64;
    let projections = model
        .weights
        .layers
        .iter()
        .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3]);
    let layer_bytes: f64 = projections.clone().map(|t| t.bytes().len() as f64).sum();
    let layer_params: f64 = projections.map(|t| (t.rows * t.cols) as f64).sum();
    let cls_bytes = model.weights.classifier().bytes().len() as f64;
    let reads = if n == 1 { 1.0 } else { n.div_ceil(8) as f64 };
    let prefix: f64 = (pos..pos + n).map(|p| (p + 1) as f64).sum();
    let mut w = Work {
        bytes: layer_bytes * reads + prefix * kv_per_pos,
        flops: 2.0 * layer_params * n as f64 + prefix * 4.0 * (c.n_layers * c.dim) as f64,
    };
    if logits {
        w.bytes += cls_bytes;
        w.flops += 2.0 * cls;
    }
    w
}

struct Row {
    model: String,
    weight_dtype: String,
    weight_bytes: u64,
    decode_tok_s: f64,
    /// 1 / (submit + readback + dispatches x empty launch): the ceiling
    /// that launch costs alone put on decode.
    launch_bound_tok_s: f64,
    sampled_tok_s: f64,
    prefill_tok_s: f64,
    gpu_ms: Option<f64>,
    host_ms: f64,
    dispatches: usize,
    bytes_per_token: f64,
    gb_s: f64,
    copy_fraction: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let shapes: Vec<(String, String)> = args
        .shape
        .iter()
        .map(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(format!("--shape {s}: expected name:fields"))
        })
        .collect::<Result<_, _>>()?;
    let gpu = Gpu::new(None)?;
    let copy = copy_bandwidth(&gpu);
    let (floor, launch) = launch_costs(&gpu);
    let mut rows = Vec::new();
    let mut kv_rows = Vec::new();
    let mut cache_rows = Vec::new();
    let mut profiles = Vec::new();
    let lengths: Vec<usize> = args
        .no_cache_lengths
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    for name in args.models.split(',') {
        let model = load(name, &shapes)?;
        let c = model.config.clone();
        let gm = GpuModel::new(&gpu, &model)?;
        let capacity = c.seq_len.min((args.tokens + 2).max(args.prompt + 1));
        let mut s = Session::new(&gm, Some(capacity))?;
        s.forward_greedy(1)?; // pipelines and first touch
        s.reset();
        let prompt: Vec<u32> = (0..args.prompt.min(capacity - 1) as u32)
            .map(|i| (i * 7919 + 1) % c.vocab_size as u32)
            .collect();
        s.prefill(&prompt)?; // the prefill pipelines
        let mut decode = Vec::new();
        let mut sampled = Vec::new();
        let mut prefill = Vec::new();
        let mut host = Vec::new();
        let mut gpu_time = Vec::new();
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
        let tok_s = median(decode);
        let prefill_tok_s = median(prefill);
        let kv_per_pos = s.cache().bytes_per_position() as f64;
        // Each token reads every weight once plus the cache prefix (mean position tokens/2).
        let bytes = pass_work(&model, kv_per_pos, args.tokens / 2, 1, true).bytes;
        let dtype = model.weights.layers[0].wq.dtype.name().to_string();
        // Achieved rates, for the cache vs no-cache prediction below.
        let decode_bw = bytes * tok_s;
        let prefill_flops = pass_work(&model, kv_per_pos, 0, prompt.len(), true).flops
            * prefill_tok_s
            / prompt.len() as f64;
        if let (true, Some(p)) = (args.profile, &profile) {
            profiles.push((format!("one decode step of {name}"), p.clone()));
        }
        if let Some(p) = prefill_profile {
            let what = format!("a {}-token prefill pass of {name}", prompt.len());
            profiles.push((what, p));
        }
        rows.push(Row {
            model: name.to_string(),
            weight_dtype: dtype,
            weight_bytes: model.weights.bytes(),
            decode_tok_s: tok_s,
            sampled_tok_s: median(sampled),
            prefill_tok_s,
            gpu_ms: (!gpu_time.is_empty()).then(|| median(gpu_time)),
            host_ms: median(host),
            dispatches: s.dispatches_per_token(),
            bytes_per_token: bytes,
            launch_bound_tok_s: 1.0 / (floor + s.dispatches_per_token() as f64 * launch),
            gb_s: bytes * tok_s / 1e9,
            copy_fraction: bytes * tok_s / copy,
        });
        let per_layer_pos = 2 * c.kv_dim() as u64;
        kv_rows.push((
            name.to_string(),
            c.n_layers,
            c.seq_len,
            per_layer_pos * c.n_layers as u64,
            per_layer_pos * c.seq_len as u64,
            per_layer_pos * c.n_layers as u64 * c.seq_len as u64,
        ));
        if args.no_cache_models.split(',').any(|m| m == name) {
            for &t in lengths.iter().filter(|&&t| t <= c.seq_len) {
                let mut cached = Session::new(&gm, Some(t))?;
                cached.forward_greedy(1)?;
                cached.reset();
                let with = greedy_seconds(&mut cached, t)?;
                let without = greedy_seconds(&mut NoCache::new(Session::new(&gm, Some(t))?), t)?;
                // Predicted from the work of each pass at this adapter's achieved
                // rates: bytes at the decode bandwidth plus FLOPs at the prefill rate.
                let time = |w: Work| w.bytes / decode_bw + w.flops / prefill_flops;
                let cache_s: f64 = (0..t)
                    .map(|p| time(pass_work(&model, kv_per_pos, p, 1, true)))
                    .sum();
                // Length L: a prefill pass over the L - 1 earlier tokens, then the new one.
                let no_cache_s: f64 = (0..t)
                    .map(|p| {
                        let prefix = match p {
                            0 => Work::default(),
                            _ => pass_work(&model, kv_per_pos, 0, p, false),
                        };
                        time(prefix) + time(pass_work(&model, kv_per_pos, p, 1, true))
                    })
                    .sum();
                cache_rows.push((
                    name.to_string(),
                    t,
                    with,
                    without,
                    without / with,
                    no_cache_s / cache_s,
                ));
            }
        }
    }
    if args.json {
        for r in &rows {
            println!(
                "{{\"model\":\"{}\",\"weights\":\"{}\",\"weight_bytes\":{},\"decode_tok_s\":{:.2},\"launch_bound_tok_s\":{:.1},\"sampled_tok_s\":{:.2},\"prefill_tok_s\":{:.2},\"gpu_ms_per_token\":{},\"host_ms_per_token\":{:.3},\"dispatches_per_token\":{},\"bytes_per_token\":{:.0},\"gb_s\":{:.3},\"copy_gb_s\":{:.3},\"fraction_of_copy\":{:.4}}}",
                r.model, r.weight_dtype, r.weight_bytes, r.decode_tok_s, r.launch_bound_tok_s, r.sampled_tok_s, r.prefill_tok_s, r.gpu_ms.map_or("null".to_string(), |g| format!("{g:.3}")), r.host_ms, r.dispatches, r.bytes_per_token, r.gb_s, copy / 1e9, r.copy_fraction
            );
        }
        for (m, t, with, without, measured, predicted) in &cache_rows {
            println!("{{\"model\":\"{m}\",\"tokens\":{t},\"cache_s\":{with:.3},\"no_cache_s\":{without:.3},\"speedup\":{measured:.2},\"predicted_speedup\":{predicted:.2}}}");
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
    println!("| model | weights | weight bytes | decode tok/s (greedy on GPU) | launch-bound tok/s (no kernel work) | top-p tok/s (logits read back) | prefill tok/s ({} tokens) | GPU ms/token | host ms/token | dispatches/token | bytes/token | GB/s | of copy BW |", args.prompt);
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {} | {:.0} | {:.3} | {:.1}% |",
            r.model,
            r.weight_dtype,
            r.weight_bytes,
            r.decode_tok_s,
            r.launch_bound_tok_s,
            r.sampled_tok_s,
            r.prefill_tok_s,
            r.gpu_ms.map_or("n/a".to_string(), |g| format!("{g:.3}")),
            r.host_ms,
            r.dispatches,
            r.bytes_per_token,
            r.gb_s,
            100.0 * r.copy_fraction
        );
    }
    println!("\nKV cache memory (F16 is half of F32):\n");
    println!("| model | layers | context | F32 bytes/token | F32 bytes/layer (full context) | F32 total | F16 total |");
    println!("|---|---|---|---|---|---|---|");
    for (m, l, ctx, per_token, per_layer, total) in &kv_rows {
        println!(
            "| {m} | {l} | {ctx} | {} | {} | {} | {} |",
            per_token * 4,
            per_layer * 4,
            total * 4,
            total * 2
        );
    }
    if !cache_rows.is_empty() {
        println!("\nGenerating T tokens with vs without the KV cache (greedy):\n");
        println!("| model | T | with cache s | without s | speedup | predicted (work at measured rates) |");
        println!("|---|---|---|---|---|---|");
        for (m, t, with, without, measured, predicted) in &cache_rows {
            println!("| {m} | {t} | {with:.2} | {without:.2} | {measured:.1}x | {predicted:.1}x |");
        }
    }
    for (m, p) in &profiles {
        println!("\nGPU time of {m} by kernel (each kernel in its own timed pass):\n");
        println!("| kernel | launches | ms | share |");
        println!("|---|---|---|---|");
        for (k, t, n) in p.by_kernel() {
            println!(
                "| {k} | {n} | {:.3} | {:.1}% |",
                t * 1e3,
                100.0 * t / p.total()
            );
        }
        println!("| total | {} | {:.3} | |", p.kernels.len(), p.total() * 1e3);
    }
    Ok(())
}
