// Attention over the KV cache for each token t of the pass, at position
// pos = step.pos + t (causal: positions 0..=pos, or on a sliding-window
// layer the last `window` of them; the pass's own K/V are already in the
// cache), or, with a paged pool, at its own position through
// its own sequence's page table (prelude.wgsl). Grouped-query: query head h reads K/V head
// h / (n_heads / n_kv_heads).
//
//   score[t] = q_h . k_cache[t, kv_head] / sqrt(head_size)
//   out_h    = sum_t softmax(score)[t] * v_cache[t, kv_head]
//
// Split-K (flash-decoding): the positions are cut into splits of `split`
// (at most MAX_SPLIT),
// one workgroup per (HEADS query heads of one K/V head, split, token), so
// long contexts spread over many workgroups; the host launches only the
// splits the pass's positions reach. A token whose positions fit one split gets its output
// here; otherwise each split writes its unnormalised partial result
// (sum_t e^(s_t - m) v_t, m = its max score, l = sum_t e^(s_t - m)) and
// attention_combine.wgsl merges them.
//
// Built with PER_TOKEN = true (for a pass of several tokens), a workgroup
// holds 64 tokens of HEADS heads and one split instead, one thread each (grid z =
// ceil(n / 64)): every thread works through its own positions alone, in the
// same order and arithmetic, with no barrier, and the threads of a
// workgroup read the same cache rows at once. The one-token build spreads a
// token's positions over its threads: a decode step has one token.
//
// The cache holds f32 bits, packed f16 pairs, or Q8_0 / Q4_0 blocks
// (kv.wgsl, prepended to this file; built per type), decoded value by value here.
//
// Bindings (group 0):
//   0 params:   Params (uniform)      { n_heads, n_kv_heads, head_size, capacity, out_stride, split, splits,
//                                       window (0: the whole context), rows }
//   1 step:     Step (uniform)        { pos, n }
//   2 q:        array<f32> (storage)  (n, n_heads, head_size)
//   3 k_cache:  array<u32> (storage)  (rows, kv_row_words) rows of n_kv_heads * head_size values (kv.wgsl):
//                                     position p in row p % rows (a flat window layer's ring;
//                                     rows = capacity elsewhere)
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
    window: u32,
    rows: u32,
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
        return ring_row(p) * words;
    }
    let table = paging[2u * token + 1u];
    return (paging[table + p / step.page] * step.page + p % step.page) * words;
}

// The row of a flat cache that holds position p: a window layer's cache is
// a ring of `rows` (more than its window: a pass's later tokens must not
// overwrite what its earlier ones read).
fn ring_row(p: u32) -> u32 {
    if params.window == 0u {
        return p;
    }
    return p % params.rows;
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
var<workgroup> partial: array<vec4<f32>, WG>;
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

// Reduces `partial` to its maximum (is_max) or sum, lane by lane (a head
// each), leaving it in every thread's hands.
fn reduce(lid: u32, is_max: bool) -> vec4<f32> {
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

// Head h, split `split` of the pass's token `token`: how many positions it
// attends to (n: pos + 1, at most the window) and this split's start..end
// of them (splits count from the first position attended), where its K/V
// head, q and scores start; ok is false where there is nothing to do (past
// the heads, tokens, capacity or positions).
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
    var first = 0u;
    if params.window != 0u && n > params.window {
        first = n - params.window;
    }
    let start = first + split * params.split;
    let ok = h < params.n_heads && token < step.n && pos < params.capacity && start < n;
    let head = token * params.n_heads + h;
    return Task(
        ok,
        n - first,
        start,
        min(n, start + params.split),
        (h / (params.n_heads / params.n_kv_heads)) * params.head_size,
        head * params.head_size,
        head * params.capacity,
    );
}

// Query heads per workgroup of the one-token build: the largest divisor of
// n_heads / n_kv_heads up to 4. The heads of a workgroup share their K/V
// head, so each cache value it reads serves all of them.
override HEADS: u32 = 1u;

// v.x + v.y + v.z + v.w, in that order.
fn sum4(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// Score j (< HEADS) of the workgroup's heads at position t, its head's
// scores starting at `s_off` (head 0) and `capacity` apart.
fn score(s_off: u32, j: u32, t: u32) -> f32 {
    return scores[s_off + j * params.capacity + t];
}

fn set_score(s_off: u32, j: u32, t: u32, v: f32) {
    scores[s_off + j * params.capacity + t] = v;
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
    // Heads h .. h + HEADS (one K/V head's), the first one's task: the
    // others' positions and K/V head are the same, their q, scores and
    // outputs one head (or a head's scores) further each.
    let h = wg.x * HEADS;
    let token = wg.z;
    let a = task(h, wg.y, token);
    if !a.ok {
        return;
    }
    let hs = params.head_size;
    let scale = sqrt(f32(hs));

    // Scores and their maxima, one lane of a vec4 per head.
    var m = vec4(-3.402823e38);
    for (var t = a.start + lid; t < a.end; t += WG) {
        let row = row_word(token, t);
        if PAGED {
            rows[t - a.start] = row;
        }
        // Four dimensions at a time (q's past the head's end count 0),
        // each cache read once for every head.
        var dot0 = vec4(0.0);
        var dot1 = vec4(0.0);
        var dot2 = vec4(0.0);
        var dot3 = vec4(0.0);
        for (var i = 0u; i < hs; i += 4u) {
            let k = cached_k4(row, a.kv_off + i, a.kv_off + hs - 1u);
            dot0 += q4(a.q_off, i, hs) * k;
            if HEADS > 1u {
                dot1 += q4(a.q_off + hs, i, hs) * k;
            }
            if HEADS > 2u {
                dot2 += q4(a.q_off + 2u * hs, i, hs) * k;
            }
            if HEADS > 3u {
                dot3 += q4(a.q_off + 3u * hs, i, hs) * k;
            }
        }
        let s = vec4(sum4(dot0), sum4(dot1), sum4(dot2), sum4(dot3)) / scale;
        for (var j = 0u; j < HEADS; j++) {
            set_score(a.s_off, j, t, s[j]);
        }
        m = max(m, s);
    }
    partial[lid] = m;
    m = reduce(lid, true);

    // Exponentials (each thread revisits its own t) and their sums.
    var sum = vec4(0.0);
    for (var t = a.start + lid; t < a.end; t += WG) {
        for (var j = 0u; j < HEADS; j++) {
            let e = exp(score(a.s_off, j, t) - m[j]);
            set_score(a.s_off, j, t, e);
            sum[j] += e;
        }
    }
    partial[lid] = sum;
    sum = reduce(lid, false);
    storageBarrier(); // scores written above are read by other threads below

    // Weighted sums of values: each thread owns four of the head size's
    // dimensions, in every head of the workgroup.
    let whole = a.n <= params.split; // one split: the final output
    let words = kv_row_words(KV_DTYPE, params.n_kv_heads * hs);
    for (var i = 4u * lid; i < hs; i += 4u * WG) {
        var acc0 = vec4(0.0);
        var acc1 = vec4(0.0);
        var acc2 = vec4(0.0);
        var acc3 = vec4(0.0);
        for (var t = a.start; t < a.end; t++) {
            var row = ring_row(t) * words;
            if PAGED {
                row = rows[t - a.start];
            }
            let v = cached_v4(row, a.kv_off + i, a.kv_off + hs - 1u);
            acc0 += score(a.s_off, 0u, t) * v;
            if HEADS > 1u {
                acc1 += score(a.s_off, 1u, t) * v;
            }
            if HEADS > 2u {
                acc2 += score(a.s_off, 2u, t) * v;
            }
            if HEADS > 3u {
                acc3 += score(a.s_off, 3u, t) * v;
            }
        }
        store_heads(token, h, wg.y, i, array(acc0, acc1, acc2, acc3), sum, whole);
    }
    if !whole && lid == 0u {
        store_stats(token, h, wg.y, m, sum);
    }
}

// Dimensions i .. i + 4 (those below the head size) of heads h .. h + HEADS
// of the pass's token `token`, from `acc` (a head each): their output, acc /
// sum, where the token's positions fit one split (`whole`), else split
// `split`'s partial result.
fn store_heads(token: u32, h: u32, split: u32, i: u32, acc: array<vec4<f32>, 4>, sum: vec4<f32>, whole: bool) {
    let hs = params.head_size;
    for (var j = 0u; j < HEADS; j++) {
        let p_off = ((token * params.n_heads + h + j) * params.splits + split) * (hs + 2u);
        for (var d = 0u; d < 4u && i + d < hs; d++) {
            if whole {
                out[token * params.out_stride + (h + j) * hs + i + d] = acc[j][d] / sum[j];
            } else {
                partials[p_off + i + d] = acc[j][d];
            }
        }
    }
}

// Split `split`'s maximum score and sum of exponentials of heads h .. h +
// HEADS (a lane of m and sum each) of token `token`, for attention_combine.
fn store_stats(token: u32, h: u32, split: u32, m: vec4<f32>, sum: vec4<f32>) {
    let hs = params.head_size;
    for (var j = 0u; j < HEADS; j++) {
        let p_off = ((token * params.n_heads + h + j) * params.splits + split) * (hs + 2u);
        partials[p_off + hs] = m[j];
        partials[p_off + hs + 1u] = sum[j];
    }
}

// The PER_TOKEN build: heads g HEADS .. (g + 1) HEADS (one K/V head's, as
// a workgroup of the one-token build takes them), split `split` of token
// `token`, by one thread. Each dot product and weighted sum adds its terms in the order of
// the one-token build; four positions (scores) or four dimensions (weighted
// sum) go side by side, so each q value and score is read a quarter as often.
fn one_token(g: u32, split: u32, token: u32) {
    // Heads h .. h + HEADS, as the one-token build's workgroup.
    let h = g * HEADS;
    let a = task(h, split, token);
    if !a.ok {
        return;
    }
    let hs = params.head_size;
    let scale = sqrt(f32(hs));

    // Scores of positions t .. t + 4 (the last position repeated past the
    // end) and their maxima, a lane of m per head; each cache value read
    // once for every head.
    var m = vec4(-3.402823e38);
    for (var t = a.start; t < a.end; t += 4u) {
        let last = a.end - 1u;
        let rows = vec4(
            row_word(token, t),
            row_word(token, min(t + 1u, last)),
            row_word(token, min(t + 2u, last)),
            row_word(token, min(t + 3u, last)),
        );
        var dot0 = vec4(0.0);
        var dot1 = vec4(0.0);
        var dot2 = vec4(0.0);
        var dot3 = vec4(0.0);
        for (var i = 0u; i < hs; i++) {
            let c = a.kv_off + i;
            let k = vec4(cached_k(rows.x, c), cached_k(rows.y, c), cached_k(rows.z, c), cached_k(rows.w, c));
            dot0 += q[a.q_off + i] * k;
            if HEADS > 1u {
                dot1 += q[a.q_off + hs + i] * k;
            }
            if HEADS > 2u {
                dot2 += q[a.q_off + 2u * hs + i] * k;
            }
            if HEADS > 3u {
                dot3 += q[a.q_off + 3u * hs + i] * k;
            }
        }
        let dots = array(dot0, dot1, dot2, dot3);
        for (var hj = 0u; hj < HEADS; hj++) {
            for (var j = 0u; j < 4u && t + j < a.end; j++) {
                let s = dots[hj][j] / scale;
                set_score(a.s_off, hj, t + j, s);
                m[hj] = max(m[hj], s);
            }
        }
    }
    // Exponentials and their sums.
    var sum = vec4(0.0);
    for (var hj = 0u; hj < HEADS; hj++) {
        for (var t = a.start; t < a.end; t++) {
            let e = exp(score(a.s_off, hj, t) - m[hj]);
            set_score(a.s_off, hj, t, e);
            sum[hj] += e;
        }
    }
    // Weighted sums of values, dimensions i .. i + 4 (the head's last
    // repeated past its end) of every head.
    let whole = a.n <= params.split;
    for (var i = 0u; i < hs; i += 4u) {
        let last = a.kv_off + hs - 1u;
        let c = a.kv_off + i;
        var acc0 = vec4(0.0);
        var acc1 = vec4(0.0);
        var acc2 = vec4(0.0);
        var acc3 = vec4(0.0);
        for (var t = a.start; t < a.end; t++) {
            let v = cached_v4(row_word(token, t), c, last);
            acc0 += score(a.s_off, 0u, t) * v;
            if HEADS > 1u {
                acc1 += score(a.s_off, 1u, t) * v;
            }
            if HEADS > 2u {
                acc2 += score(a.s_off, 2u, t) * v;
            }
            if HEADS > 3u {
                acc3 += score(a.s_off, 3u, t) * v;
            }
        }
        store_heads(token, h, split, i, array(acc0, acc1, acc2, acc3), sum, whole);
    }
    if !whole {
        store_stats(token, h, split, m, sum);
    }
}
