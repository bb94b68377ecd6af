//! `--batch 1,2,4,8,16`: B sequences decoded together by one `Engine`, a
//! pass per step, against the same model's single-sequence `Session`.

use std::time::Instant;

use kvgpu::{Engine, EngineOptions, GpuModel, Sampler};
use serde::Serialize;

use super::adapter::median;

/// Decoding `batch` sequences together.
#[derive(Serialize)]
pub struct BatchRow {
    pub model: String,
    pub batch: usize,
    /// Tokens per second, all sequences together.
    pub aggregate_tok_s: f64,
    /// Tokens per second of each sequence.
    pub per_sequence_tok_s: f64,
    /// Aggregate against batch 1 of the same engine.
    pub vs_batch_1: f64,
    /// Aggregate against a `Session`'s greedy decode (the rates table).
    pub vs_session: f64,
}

/// Aggregate tok/s of `tokens` greedy steps of each batch size (median of
/// `runs`), each sequence from its own one-token prompt; the logits of every
/// sequence are read back each step and sampled on the host.
pub fn measure(
    name: &str,
    gm: &GpuModel,
    batches: &[usize],
    tokens: usize,
    runs: usize,
    session_tok_s: f64,
) -> kvgpu::Result<Vec<BatchRow>> {
    let c = gm.config();
    let context = c.seq_len.min(tokens + 2);
    let most = batches.iter().copied().max().unwrap_or(1);
    let page = 16.min(context);
    let options = EngineOptions::default()
        .context(context)
        .page_size(page)
        .pages(most * context.div_ceil(page))
        .pass_tokens(most.max(1));
    let mut engine = Engine::new(gm, options)?;
    let mut rows: Vec<BatchRow> = Vec::new();
    for &batch in batches {
        let mut rates = Vec::new();
        // One untimed run: pipelines and first touch.
        for run in 0..=runs {
            let ids = (0..batch as u32)
                .map(|i| engine.add(&[(1 + 7919 * i) % c.vocab_size as u32]))
                .collect::<kvgpu::Result<Vec<_>>>()?;
            let started = Instant::now();
            for step in 0..tokens {
                let ready = engine.step()?;
                if step + 1 == tokens {
                    break;
                }
                for id in ready {
                    let next = Sampler::greedy().sample(engine.logits(id)?);
                    engine.push(id, next)?;
                }
            }
            if run > 0 {
                rates.push((batch * tokens) as f64 / started.elapsed().as_secs_f64());
            }
            for id in ids {
                engine.remove(id)?;
            }
        }
        let aggregate = median(rates);
        let one = rows
            .first()
            .map_or(aggregate, |r| r.aggregate_tok_s / r.batch as f64);
        rows.push(BatchRow {
            model: name.to_string(),
            batch,
            aggregate_tok_s: aggregate,
            per_sequence_tok_s: aggregate / batch as f64,
            vs_batch_1: aggregate / one,
            vs_session: aggregate / session_tok_s,
        });
    }
    Ok(rows)
}

/// Time to first token of a prompt of `prefix + 13` tokens run whole, and
/// of a second one sharing its first `prefix` tokens, whose whole pages the
/// pool still holds: (seconds cold, seconds warm, tokens reused), medians
/// of `runs`. `None` when the context is too short.
pub fn prefix_reuse(
    gm: &GpuModel,
    prefix: usize,
    runs: usize,
) -> kvgpu::Result<Option<(f64, f64, u64)>> {
    let c = gm.config();
    let len = prefix + 13;
    if c.seq_len < len {
        return Ok(None);
    }
    let prompt = |tail: u32| -> Vec<u32> {
        (0..len as u32)
            .map(|i| match i < prefix as u32 {
                true => (i * 7919 + 1) % c.vocab_size as u32,
                false => (i * 31 + tail) % c.vocab_size as u32,
            })
            .collect()
    };
    let options = EngineOptions::default().context(len);
    let first_token = |engine: &mut Engine, tokens: &[u32]| -> kvgpu::Result<f64> {
        let started = Instant::now();
        let id = engine.add(tokens)?;
        while !engine.step()?.contains(&id) {}
        let seconds = started.elapsed().as_secs_f64();
        engine.remove(id)?;
        Ok(seconds)
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..=runs as u32 {
        // A fresh pool each run: nothing cached for the cold prompt.
        let mut engine = Engine::new(gm, options)?;
        let reused = engine.stats().reused;
        let t_cold = first_token(&mut engine, &prompt(3 * run))?;
        let t_warm = first_token(&mut engine, &prompt(3 * run + 1))?;
        if run > 0 {
            cold.push(t_cold);
            warm.push(t_warm);
        }
        debug_assert!(engine.stats().reused > reused);
    }
    let reused = (prefix / options.page_size * options.page_size) as u64;
    Ok(Some((median(cold), median(warm), reused)))
}

/// The batch table.
pub fn print(rows: &[BatchRow], tokens: usize) {
    if rows.is_empty() {
        return;
    }
    println!("\nBatched decode (`Engine`, paged KV pool, {tokens} greedy steps per sequence, logits of every sequence read back each step):\n");
    println!(
        "| model | batch | aggregate tok/s | per-sequence tok/s | vs batch 1 | vs Session decode |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
            r.model, r.batch, r.aggregate_tok_s, r.per_sequence_tok_s, r.vs_batch_1, r.vs_session
        );
    }
}
