//! The work model: bytes read and FLOPs of a pass, from which the bench
//! turns rates into bandwidth and predicts cache vs no-cache times.

use kvgpu::Model;

/// Work of one pass: bytes read and floating-point operations.
#[derive(Clone, Copy, Default)]
pub struct Work {
    /// Bytes read.
    pub bytes: f64,
    /// Floating-point operations.
    pub flops: f64,
}

/// Work of a pass over `n` tokens from position `pos` (decode when n = 1,
/// with the classifier when `logits`): weights are read once per pass of
/// one token and once per 8-token tile in a prefill pass; each token reads
/// its cache prefix; 2 FLOPs per weight per token, 4 per cached value.
pub fn pass_work(model: &Model, kv_per_pos: f64, pos: usize, n: usize, logits: bool) -> Work {
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

/// Predicted time ratio of generating `t` tokens without and with the KV
/// cache, from the work of every pass at the rates measured in this run:
/// bytes at the decode bandwidth (`decode_bw`, bytes/s) plus FLOPs at the
/// prefill rate (`prefill_flops`, FLOP/s).
pub fn predicted_no_cache_ratio(
    model: &Model,
    kv_per_pos: f64,
    t: usize,
    decode_bw: f64,
    prefill_flops: f64,
) -> f64 {
    let time = |w: Work| w.bytes / decode_bw + w.flops / prefill_flops;
    let cache_s: f64 = (0..t)
        .map(|p| time(pass_work(model, kv_per_pos, p, 1, true)))
        .sum();
    // Length L: a prefill pass over the L - 1 earlier tokens, then the new one.
    let no_cache_s: f64 = (0..t)
        .map(|p| {
            let prefix = match p {
                0 => Work::default(),
                _ => pass_work(model, kv_per_pos, 0, p, false),
            };
            time(prefix) + time(pass_work(model, kv_per_pos, p, 1, true))
        })
        .sum();
    no_cache_s / cache_s
}
