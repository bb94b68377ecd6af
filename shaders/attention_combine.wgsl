// Merges the split-K partial results of attention.wgsl for each token t of
// the pass (position pos = step.pos + t, or its entry in `paging` with a
// paged pool, prelude.wgsl) whose positions span several
// splits: with split s holding o_s = sum_t e^(score_t - m_s) v_t, its max
// score m_s and l_s = sum_t e^(score_t - m_s),
//
//   M   = max_s m_s
//   out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
//
// Tokens whose positions fit one split were finished by attention.wgsl.
//
// Bindings (group 0):
//   0 params:   Params (uniform)      { n_heads, head_size, capacity, out_stride, split, splits, window }
//   1 step:     Step (uniform)        { pos, n }
//   2 partials: array<f32> (storage)  (n, n_heads, splits, head_size + 2): o, then m and l
//   3 out:      array<f32> (storage)  (n, out_stride), n_heads * head_size values used per row
//   4 paging:   array<u32> (storage)  (2 n + tables) positions and page tables; unread when flat
//
// One workgroup per (query head, token); threads own the head's dimensions.

struct Params {
    n_heads: u32,
    head_size: u32,
    capacity: u32,
    out_stride: u32,
    split: u32,
    splits: u32,
    window: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> paging: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wg.x;
    let token = wg.z;
    var pos = step.pos + token;
    if PAGED {
        pos = paging[2u * token];
    }
    // Positions attended: pos + 1, at most the window (0: no window).
    var n = pos + 1u;
    if params.window != 0u {
        n = min(n, params.window);
    }
    if h >= params.n_heads || token >= step.n || pos >= params.capacity || n <= params.split {
        return;
    }
    let hs = params.head_size;
    let used = (n + params.split - 1u) / params.split;
    let base = (token * params.n_heads + h) * params.splits * (hs + 2u);
    var big_m = -3.402823e38;
    for (var s = 0u; s < used; s++) {
        big_m = max(big_m, partials[base + s * (hs + 2u) + hs]);
    }
    var l = 0.0;
    for (var s = 0u; s < used; s++) {
        let at = base + s * (hs + 2u);
        l += exp(partials[at + hs] - big_m) * partials[at + hs + 1u];
    }
    for (var i = lid; i < hs; i += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < used; s++) {
            let at = base + s * (hs + 2u);
            acc += exp(partials[at + hs] - big_m) * partials[at + i];
        }
        out[token * params.out_stride + h * hs + i] = acc / l;
    }
}
