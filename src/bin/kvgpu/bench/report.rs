//! The bench's results: one struct per table row, printed as markdown
//! tables or as JSON lines (`--json`, serialized with serde_json).

use serde::Serialize;

/// Decode, sampling and prefill rates of one model.
#[derive(Serialize)]
pub struct Row {
    pub model: String,
    #[serde(rename = "weights")]
    pub weight_dtype: String,
    pub weight_bytes: u64,
    pub decode_tok_s: f64,
    /// Greedy, 4 and 16 steps per submit and readback (`Session::greedy_block`).
    pub block4_tok_s: f64,
    pub block16_tok_s: f64,
    /// 1 / (submit + readback + dispatches x empty launch): the ceiling
    /// that launch costs alone put on decode.
    pub launch_bound_tok_s: f64,
    pub sampled_tok_s: f64,
    pub prefill_tok_s: f64,
    #[serde(rename = "gpu_ms_per_token")]
    pub gpu_ms: Option<f64>,
    #[serde(rename = "host_ms_per_token")]
    pub host_ms: f64,
    #[serde(rename = "dispatches_per_token")]
    pub dispatches: usize,
    pub bytes_per_token: f64,
    pub gb_s: f64,
    /// The adapter's copy bandwidth in the same run.
    pub copy_gb_s: f64,
    #[serde(rename = "fraction_of_copy")]
    pub copy_fraction: f64,
}

/// KV cache memory of one model.
pub struct KvRow {
    pub model: String,
    pub layers: usize,
    pub context: usize,
    /// Bytes per position, all layers, K and V, for each cache type
    /// (`KvDtype::ALL`; `None` where rows are not whole quantized blocks).
    pub per_position: Vec<Option<u64>>,
    /// Bytes of a session's cache at full context, likewise: sliding-window
    /// layers keep only their rings (`KvCache::bytes_for`).
    pub total: Vec<Option<u64>>,
}

/// Generating `tokens` tokens with and without the KV cache.
#[derive(Serialize)]
pub struct CacheRow {
    pub model: String,
    pub tokens: usize,
    pub cache_s: f64,
    pub no_cache_s: f64,
    pub speedup: f64,
    pub predicted_speedup: f64,
}

/// One row per line, as JSON.
pub fn print_json(rows: &[Row], cache_rows: &[CacheRow]) -> serde_json::Result<()> {
    for r in rows {
        println!("{}", serde_json::to_string(r)?);
    }
    for r in cache_rows {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}

/// The rates table.
pub fn print_rows(rows: &[Row], prompt: usize) {
    println!("| model | weights | weight bytes | decode tok/s (greedy on GPU) | 4 / 16 steps per submit | launch-bound tok/s (no kernel work) | top-p tok/s (logits read back) | prefill tok/s ({prompt} tokens) | GPU ms/token | host ms/token | dispatches/token | bytes/token | GB/s | of copy BW |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} / {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {} | {:.0} | {:.3} | {:.1}% |",
            r.model,
            r.weight_dtype,
            r.weight_bytes,
            r.decode_tok_s,
            r.block4_tok_s,
            r.block16_tok_s,
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
}

/// The KV memory table.
pub fn print_kv(kv_rows: &[KvRow]) {
    println!("\nKV cache memory, bytes per position and a session's at full context (2 x rows x row bytes, summed over layers; a sliding-window layer's rows are its ring):\n");
    let names: Vec<&str> = kvgpu::KvDtype::ALL.iter().map(|t| t.name()).collect();
    println!(
        "| model | layers | context | {} | {} |",
        names
            .iter()
            .map(|n| format!("{n}/position"))
            .collect::<Vec<_>>()
            .join(" | "),
        names
            .iter()
            .map(|n| format!("{n} total"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(2 * names.len()));
    for r in kv_rows {
        let cell = |p: &Option<u64>, times: u64| p.map_or("-".into(), |p| (p * times).to_string());
        let per: Vec<String> = r.per_position.iter().map(|p| cell(p, 1)).collect();
        let total: Vec<String> = r.total.iter().map(|p| cell(p, 1)).collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            r.model,
            r.layers,
            r.context,
            per.join(" | "),
            total.join(" | ")
        );
    }
}

/// The cache vs no-cache table.
pub fn print_cache(cache_rows: &[CacheRow]) {
    if cache_rows.is_empty() {
        return;
    }
    println!("\nGenerating T tokens with vs without the KV cache (greedy):\n");
    println!(
        "| model | T | with cache s | without s | speedup | predicted (work at measured rates) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in cache_rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1}x | {:.1}x |",
            r.model, r.tokens, r.cache_s, r.no_cache_s, r.speedup, r.predicted_speedup
        );
    }
}

/// A per-kernel GPU time table.
pub fn print_profile(what: &str, p: &kvgpu::Profile) {
    println!("\nGPU time of {what} by kernel (each kernel in its own timed pass):\n");
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
