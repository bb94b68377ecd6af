// RoPE and append to the KV cache, for each token t of the pass at position
// pos = step.pos + t (or, with a paged pool, its own position, written into
// the row its sequence's page table gives: prelude.wgsl): rotates each (even, odd) pair of the token's q and k by
// the position's angle (as llama2.c: pair i of a head uses frequency
// theta^(-2i / head_size); cos/sin from a table computed on the host, so
// every adapter rotates by the same numbers), writes q to `q` and k, v into
// slot pos of the layer's cache. The cache is never moved or copied: this is
// the write. It holds f32 (one word per value), f16 (a rotated pair packed
// in one word with `pack2x16float`, so SHADER_F16 is not needed), or Q8_0 /
// Q4_0 blocks quantized here (kv.wgsl, prepended to this file).
//
// Families whose block changes q and k before RoPE (arch/) build it with
// QKV_BIAS (q, k and v each add their bias: Qwen2) and QK_NORM (q and k are
// RMS-normed head by head, with weights of their own: Qwen3); both read
// `prep`. Half-split (NEOX) models need nothing here: their q and k rows,
// biases and norm weights went to the GPU in adjacent order.
//
// Bindings (group 0):
//   0 params:  Params (uniform)      { q_dim, kv_dim, head_size, capacity (positions a token may take), eps,
//                                    rows (of a flat cache: position p goes to row p % rows) }
//   1 step:    Step (uniform)        { pos, n }
//   2 table:   array<f32> (storage)  (capacity, head_size / 2, 2) = (cos, sin)
//   3 qkv:     array<f32> (storage)  (n, q_dim + 2 kv_dim) projections: q, k, v
//   4 q:       array<f32> (storage)  (n, q_dim) rotated q
//   5 k_cache: array<u32> (storage)  (capacity, kv_row_words) rows as kv.wgsl lays them out
//   6 v_cache: array<u32> (storage)  as k_cache
//   7 paging:  array<u32> (storage)  (2 n + tables) positions and page tables; unread when flat
//   8 prep:    array<f32> (storage)  (q_dim + 2 kv_dim + 2 head_size) biases of q, k, v, then
//                                    the norm weights of a q head and of a k head; unread
//                                    unless QKV_BIAS or QK_NORM
//
// One thread per pair of q (q_dim / 2 threads), grid z = token; pairs below
// kv_dim / 2 also rotate k and store k and v; with a quantized cache,
// threads g below ceil(kv_dim / 64) instead rotate and quantize two whole
// blocks (values 64 g .. 64 g + 64) of k, and of v.

struct Params {
    q_dim: u32,
    kv_dim: u32,
    head_size: u32,
    capacity: u32,
    eps: f32,
    rows: u32,
}

override QKV_BIAS: bool = false;
override QK_NORM: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read> paging: array<u32>;
@group(0) @binding(8) var<storage, read> prep: array<f32>;

// Value c of the token's projections row starting at `row` (q at 0, k at
// q_dim, v at q_dim + kv_dim), with its bias.
fn biased(row: u32, c: u32) -> f32 {
    var x = qkv[row + c];
    if QKV_BIAS {
        x += prep[c];
    }
    return x;
}

// Values c and c + 1 (one pair of one head of q or k) of the row, biased
// and, with QK_NORM, normed over their head: g * x / sqrt(mean(x^2) + eps).
fn prepared(row: u32, c: u32) -> vec2<f32> {
    var x = vec2(biased(row, c), biased(row, c + 1u));
    if QK_NORM {
        let hs = params.head_size;
        let head = c - c % hs;
        var ss = 0.0;
        for (var j = 0u; j < hs; j++) {
            let y = biased(row, head + j);
            ss += y * y;
        }
        let scale = 1.0 / sqrt(ss / f32(hs) + params.eps);
        // q's weights, then k's.
        let g = params.q_dim + 2u * params.kv_dim + select(0u, hs, c >= params.q_dim) + c % hs;
        x = vec2(prep[g] * (scale * x.x), prep[g + 1u] * (scale * x.y));
    }
    return x;
}

fn rotate(a: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2(a.x * cs.x - a.y * cs.y, a.x * cs.y + a.y * cs.x);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = 2u * gid.x;
    let t = gid.z;
    if t >= step.n {
        return;
    }
    var pos = step.pos + t;
    var slot_row = pos % params.rows;
    if PAGED {
        pos = paging[2u * t];
        let table = paging[2u * t + 1u];
        slot_row = paging[table + pos / step.page] * step.page + pos % step.page;
    }
    let dtype = KV_DTYPE;
    let kv = params.kv_dim;
    let slot = slot_row * kv_row_words(dtype, kv);
    // The host never steps past capacity; the check keeps a bad position or
    // page from landing in another slot or outside the cache.
    if i >= params.q_dim || pos >= params.capacity || slot >= arrayLength(&k_cache) {
        return;
    }
    let row = t * (params.q_dim + 2u * kv);
    let qr = rotate(prepared(row, i), angle(pos, i));
    q[t * params.q_dim + i] = qr.x;
    q[t * params.q_dim + i + 1u] = qr.y;
    // Where k and v start in the row.
    let k_at = params.q_dim;
    let v_at = k_at + kv;
    if dtype >= KV_Q8_0 {
        // Two blocks of k (rotated) and of v, quantized.
        let g = gid.x;
        if 64u * g >= kv {
            return;
        }
        let two = 64u * g + 32u < kv;
        var k = array<f32, 64>();
        var v = array<f32, 64>();
        for (var j = 0u; j < select(32u, 64u, two); j += 2u) {
            let c = 64u * g + j;
            let r = rotate(prepared(row, k_at + c), angle(pos, c));
            k[j] = r.x;
            k[j + 1u] = r.y;
            v[j] = biased(row, v_at + c);
            v[j + 1u] = biased(row, v_at + c + 1u);
        }
        let kw = kv_quantize(dtype, k, two);
        let vw = kv_quantize(dtype, v, two);
        for (var w = 0u; w < kv_quantized_words(dtype, two); w++) {
            let at = slot + kv_quantized_word(dtype, kv, g, w);
            k_cache[at] = kw[w];
            v_cache[at] = vw[w];
        }
    } else if i < kv {
        let k = rotate(prepared(row, k_at + i), angle(pos, i));
        let v = vec2(biased(row, v_at + i), biased(row, v_at + i + 1u));
        if dtype == KV_F32 {
            k_cache[slot + i] = bitcast<u32>(k.x);
            k_cache[slot + i + 1u] = bitcast<u32>(k.y);
            v_cache[slot + i] = bitcast<u32>(v.x);
            v_cache[slot + i + 1u] = bitcast<u32>(v.y);
        } else {
            k_cache[slot + i / 2u] = pack2x16float(k);
            v_cache[slot + i / 2u] = pack2x16float(v);
        }
    }
}

// (cos, sin) of the rotation of pair (c, c + 1) of a head at `pos`.
fn angle(pos: u32, c: u32) -> vec2<f32> {
    let at = 2u * (pos * (params.head_size / 2u) + (c % params.head_size) / 2u);
    return vec2(table[at], table[at + 1u]);
}
