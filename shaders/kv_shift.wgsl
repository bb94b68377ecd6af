// Context shift of a layer's K cache (llama.cpp's K-shift): rows that move
// down by `delta` positions are re-rotated by RoPE of -delta, so each key
// is as if computed at its new position; nothing is recomputed from tokens.
// Rotations compose: rope(p - d) = rope(-d) rope(p), and rope(-d) of pair i
// is (cos, -sin) of the table's row d. The rows come from `src` (a copy of
// the moved rows, so reading and writing never overlap) and go to k_cache
// rows dst .. dst + rows; V rows move by plain copies. Quantized rows
// (kv.wgsl, prepended) are dequantized, rotated and quantized again.
//
// Bindings (group 0):
//   0 params:  Params (uniform)      { kv_dim, head_size, rows, delta, dst }
//   1 table:   array<f32> (storage)  (positions, head_size / 2, 2) = (cos, sin)
//   2 src:     array<u32> (storage)  (rows, kv_row_words) the moved K rows
//   3 k_cache: array<u32> (storage)  (capacity, kv_row_words) rows dst .. dst + rows written
//
// One thread per pair of values (f32, f16) or per two blocks (quantized) of
// a row, grid y = row.

struct Params {
    kv_dim: u32,
    head_size: u32,
    rows: u32,
    delta: u32,
    dst: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;

// Pair (c, c + 1) rotated back by delta positions.
fn unrotate(a: vec2<f32>, c: u32) -> vec2<f32> {
    let at = 2u * (params.delta * (params.head_size / 2u) + (c % params.head_size) / 2u);
    let cs = vec2(table[at], -table[at + 1u]);
    return vec2(a.x * cs.x - a.y * cs.y, a.x * cs.y + a.y * cs.x);
}

// Value c of moved row r.
fn moved(r: u32, c: u32) -> f32 {
    let dtype = KV_DTYPE;
    let row = r * kv_row_words(dtype, params.kv_dim);
    var s = 0u;
    if dtype >= KV_Q8_0 {
        s = src[row + c / 64u];
    }
    return kv_value(dtype, src[row + kv_word(dtype, params.kv_dim, c)], s, c);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let dtype = KV_DTYPE;
    let kv = params.kv_dim;
    if r >= params.rows {
        return;
    }
    let row = (params.dst + r) * kv_row_words(dtype, kv);
    if dtype >= KV_Q8_0 {
        let g = gid.x;
        if 64u * g >= kv {
            return;
        }
        let two = 64u * g + 32u < kv;
        var k = array<f32, 64>();
        for (var j = 0u; j < select(32u, 64u, two); j += 2u) {
            let c = 64u * g + j;
            let p = unrotate(vec2(moved(r, c), moved(r, c + 1u)), c);
            k[j] = p.x;
            k[j + 1u] = p.y;
        }
        let words = kv_quantize(dtype, k, two);
        for (var w = 0u; w < kv_quantized_words(dtype, two); w++) {
            k_cache[row + kv_quantized_word(dtype, kv, g, w)] = words[w];
        }
        return;
    }
    let c = 2u * gid.x;
    if c >= kv {
        return;
    }
    let p = unrotate(vec2(moved(r, c), moved(r, c + 1u)), c);
    if dtype == KV_F32 {
        k_cache[row + c] = bitcast<u32>(p.x);
        k_cache[row + c + 1u] = bitcast<u32>(p.y);
    } else {
        k_cache[row + c / 2u] = pack2x16float(p);
    }
}
