// Attention over the KV cache for each token t of the pass, at position
// pos = step.pos + t (causal: positions 0..=pos; the pass's own K/V are
// already in the cache), or, with a paged pool, at its own position through
// its own sequence's page table (prelude.wgsl). Grouped-query: query head h reads K/V head
// h / (n_heads / n_kv_heads).
//
//   score[t] = q_h . k_cache[t, kv_head] / sqrt(head_size)
//   out_h    = sum_t softmax(score)[t] * v_cache[t, kv_head]
//
// Split-K (flash-decoding): the positions are cut into splits of `split`
// (at most MAX_SPLIT),
// one workgroup per (query head, split, token), so long contexts spread over
// many workgroups. A token whose positions fit one split gets its output
// here; otherwise each split writes its unnormalised partial result
// (sum_t e^(s_t - m) v_t, m = its max score, l = sum_t e^(s_t - m)) and
// attention_combine.wgsl merges them.
//
// Built with PER_TOKEN = true (for a pass of several tokens), a workgroup
// holds 64 tokens of one head and split instead, one thread each (grid z =
// ceil(n / 64)): every thread works through its own positions alone, in the
// same order and arithmetic, with no barrier, and the threads of a
// workgroup read the same cache rows at once. The one-token build spreads a
// token's positions over its threads: a decode step has one token.
//
// The cache holds f32 bits, packed f16 pairs, or Q8_0 / Q4_0 blocks
// (kv.wgsl, prepended to this file; built per type), decoded value by value here.
//
// Bindings (group 0):
//   0 params:   Params (uniform)      { n_heads, n_kv_heads, head_size, capacity, out_stride, split, splits }
//   1 step:     Step (uniform)        { pos, n }
//   2 q:        array<f32> (storage)  (n, n_heads, head_size)
//   3 k_cache:  array<u32> (storage)  (capacity, kv_row_words) rows of n_kv_heads * head_size values (kv.wgsl)
//   4 v_cache:  array<u32> (storage)  as k_cache
//   5 scores:   array<f32> (storage)  (n, n_heads, capacity) scratch
//   6 out:      array<f32> (storage)  (n, out_stride), n_heads * head_size values used per row
//   7 partials: array<f32> (storage)  (n, n_heads, splits, head_size + 2): o, then m and l
//   8 paging:   array<u32> (storage)  (2 n + tables) positions and page tables (prelude.wgsl); unread when flat
//
// The softmax subtracts the maximum score first, so large scores cannot overflow.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_size: u32,
    capacity: u32, // positions a token may attend to (the stride of `scores`)
    out_stride: u32,
    split: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;

// The first word of the cache row holding position p of the pass's token.
fn row_word(token: u32, p: u32) -> u32 {
    let words = kv_row_words(KV_DTYPE, params.n_kv_heads * params.head_size);
    if !PAGED {
        return p * words;
    }
    let table = paging[2u * token + 1u];
    return (paging[table + p / step.page] * step.page + p % step.page) * words;
}

// Value c of the cache row starting at word `row`, decoded.
fn cached_k(row: u32, c: u32) -> f32 {
    let dtype = KV_DTYPE;
    let kv_dim = params.n_kv_heads * params.head_size;
    var s = 0u;
    if dtype >= KV_Q8_0 {
        s = k_cache[row + c / 64u];
    }
    return kv_value(dtype, k_cache[row + kv_word(dtype, kv_dim, c)], s, c);
}

fn cached_v(row: u32, c: u32) -> f32 {
    let dtype = KV_DTYPE;
    let kv_dim = params.n_kv_heads * params.head_size;
    var s = 0u;
    if dtype >= KV_Q8_0 {
        s = v_cache[row + c / 64u];
    }
    return kv_value(dtype, v_cache[row + kv_word(dtype, kv_dim, c)], s, c);
}
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read> paging: array<u32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;
// PAGED: the first word of each of the split's cache rows, found once
// through the page table and read by every thread of the weighted sum.
const MAX_SPLIT: u32 = 256u;
var<workgroup> rows: array<u32, MAX_SPLIT>;

// q values i .. i + 4 of the head at q_off, 0 past its `hs` values.
fn q4(q_off: u32, i: u32, hs: u32) -> vec4<f32> {
    let last = q_off + hs - 1u;
    let v = vec4(q[q_off + i], q[min(q_off + i + 1u, last)], q[min(q_off + i + 2u, last)], q[min(q_off + i + 3u, last)]);
    return select(vec4(0.0), v, vec4(i) + vec4(0u, 1u, 2u, 3u) < vec4(hs));
}

// Cache values c .. c + 4 of the row at word `row`, `last` repeated past it.
fn cached_k4(row: u32, c: u32, last: u32) -> vec4<f32> {
    return vec4(cached_k(row, c), cached_k(row, min(c + 1u, last)), cached_k(row, min(c + 2u, last)), cached_k(row, min(c + 3u, last)));
}

fn cached_v4(row: u32, c: u32, last: u32) -> vec4<f32> {
    return vec4(cached_v(row, c), cached_v(row, min(c + 1u, last)), cached_v(row, min(c + 2u, last)), cached_v(row, min(c + 3u, last)));
}

// Reduces `partial` to its maximum (is_max) or sum, leaving it in every thread's hands.
fn reduce(lid: u32, is_max: bool) -> f32 {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let a = partial[lid];
            let b = partial[lid + stride];
            partial[lid] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier(); // everyone has read partial[0] before it is reused
    return r;
}

override PER_TOKEN: bool = false;

// Head h, split `split` of the pass's token `token`: the positions it
// attends to (n = pos + 1) and this split's start..end of them, where its
// K/V head, q and scores start; ok is false where there is nothing to do
// (past the heads, tokens, capacity or positions).
struct Task {
    ok: bool,
    n: u32,
    start: u32,
    end: u32,
    kv_off: u32,
    q_off: u32,
    s_off: u32,
}

fn task(h: u32, split: u32, token: u32) -> Task {
    var pos = step.pos + token;
    if PAGED && token < step.n {
        pos = paging[2u * token];
    }
    let n = pos + 1u;
    let start = split * params.split;
    let ok = h < params.n_heads && token < step.n && pos < params.capacity && start < n;
    let head = token * params.n_heads + h;
    return Task(
        ok,
        n,
        start,
        min(n, start + params.split),
        (h / (params.n_heads / params.n_kv_heads)) * params.head_size,
        head * params.head_size,
        head * params.capacity,
    );
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if PER_TOKEN {
        one_token(wg.x, wg.y, wg.z * WG + lid);
        return;
    }
    let h = wg.x;
    let token = wg.z;
    let a = task(h, wg.y, token);
    if !a.ok {
        return;
    }
    let hs = params.head_size;
    let scale = sqrt(f32(hs));

    // Scores and their maximum.
    var m = -3.402823e38;
    for (var t = a.start + lid; t < a.end; t += WG) {
        let row = row_word(token, t);
        if PAGED {
            rows[t - a.start] = row;
        }
        // Four dimensions at a time (q's past the head's end count 0).
        var dot = vec4(0.0);
        for (var i = 0u; i < hs; i += 4u) {
            dot += q4(a.q_off, i, hs) * cached_k4(row, a.kv_off + i, a.kv_off + hs - 1u);
        }
        let s = (dot.x + dot.y + dot.z + dot.w) / scale;
        scores[a.s_off + t] = s;
        m = max(m, s);
    }
    partial[lid] = m;
    m = reduce(lid, true);

    // Exponentials (each thread revisits its own t) and their sum.
    var sum = 0.0;
    for (var t = a.start + lid; t < a.end; t += WG) {
        let e = exp(scores[a.s_off + t] - m);
        scores[a.s_off + t] = e;
        sum += e;
    }
    partial[lid] = sum;
    sum = reduce(lid, false);
    storageBarrier(); // scores written above are read by other threads below

    // Weighted sum of values: each thread owns four of the head's dimensions.
    let whole = a.n <= params.split; // one split: the final output
    let p_off = ((token * params.n_heads + h) * params.splits + wg.y) * (hs + 2u);
    let words = kv_row_words(KV_DTYPE, params.n_kv_heads * hs);
    for (var i = 4u * lid; i < hs; i += 4u * WG) {
        var acc = vec4(0.0);
        for (var t = a.start; t < a.end; t++) {
            var row = t * words;
            if PAGED {
                row = rows[t - a.start];
            }
            acc += scores[a.s_off + t] * cached_v4(row, a.kv_off + i, a.kv_off + hs - 1u);
        }
        for (var j = 0u; j < 4u && i + j < hs; j++) {
            if whole {
                out[token * params.out_stride + h * hs + i + j] = acc[j] / sum;
            } else {
                partials[p_off + i + j] = acc[j];
            }
        }
    }
    if !whole && lid == 0u {
        partials[p_off + hs] = m;
        partials[p_off + hs + 1u] = sum;
    }
}

// The PER_TOKEN build: head h, split `split` of token `token`, by one
// thread. Each dot product and weighted sum adds its terms in the order of
// the one-token build; four positions (scores) or four dimensions (weighted
// sum) go side by side, so each q value and score is read a quarter as often.
fn one_token(h: u32, split: u32, token: u32) {
    let a = task(h, split, token);
    if !a.ok {
        return;
    }
    let hs = params.head_size;
    let scale = sqrt(f32(hs));

    // Scores of positions t .. t + 4 (the last position repeated past the
    // end) and their maximum.
    var m = -3.402823e38;
    for (var t = a.start; t < a.end; t += 4u) {
        let last = a.end - 1u;
        let rows = vec4(
            row_word(token, t),
            row_word(token, min(t + 1u, last)),
            row_word(token, min(t + 2u, last)),
            row_word(token, min(t + 3u, last)),
        );
        var dot = vec4(0.0);
        for (var i = 0u; i < hs; i++) {
            let c = a.kv_off + i;
            let k = vec4(cached_k(rows.x, c), cached_k(rows.y, c), cached_k(rows.z, c), cached_k(rows.w, c));
            dot += q[a.q_off + i] * k;
        }
        for (var j = 0u; j < 4u && t + j < a.end; j++) {
            let s = dot[j] / scale;
            scores[a.s_off + t + j] = s;
            m = max(m, s);
        }
    }
    // Exponentials and their sum.
    var sum = 0.0;
    for (var t = a.start; t < a.end; t++) {
        let e = exp(scores[a.s_off + t] - m);
        scores[a.s_off + t] = e;
        sum += e;
    }
    // Weighted sum of values, dimensions i .. i + 4 (the head's last
    // repeated past its end).
    let whole = a.n <= params.split;
    let p_off = ((token * params.n_heads + h) * params.splits + split) * (hs + 2u);
    for (var i = 0u; i < hs; i += 4u) {
        let last = a.kv_off + hs - 1u;
        let c = a.kv_off + i;
        var acc = vec4(0.0);
        for (var t = a.start; t < a.end; t++) {
            acc += scores[a.s_off + t] * cached_v4(row_word(token, t), c, last);
        }
        for (var j = 0u; j < 4u && i + j < hs; j++) {
            if whole {
                out[token * params.out_stride + h * hs + i + j] = acc[j] / sum;
            } else {
                partials[p_off + i + j] = acc[j];
            }
        }
    }
    if !whole {
        partials[p_off + hs] = m;
        partials[p_off + hs + 1u] = sum;
    }
}
