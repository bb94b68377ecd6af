// RoPE and append to the KV cache, for each token t of the pass at position
// pos = step.pos + t: rotates each (even, odd) pair of the token's q and k by
// the position's angle (as llama2.c: pair i of a head uses frequency
// theta^(-2i / head_size); cos/sin from a table computed on the host, so
// every adapter rotates by the same numbers), writes q to `q` and k, v into
// slot pos of the layer's cache. The cache is never moved or copied: this is
// the write. It holds f32 (one word per value) or f16 (a rotated pair packed
// in one word with `pack2x16float`, so SHADER_F16 is not needed).
//
// Bindings (group 0):
//   0 params:  Params (uniform)      { q_dim, kv_dim, head_size, capacity, f16 }
//   1 step:    Step (uniform)        { pos, n }
//   2 table:   array<f32> (storage)  (capacity, head_size / 2, 2) = (cos, sin)
//   3 qkv:     array<f32> (storage)  (n, q_dim + 2 kv_dim) projections: q, k, v
//   4 q:       array<f32> (storage)  (n, q_dim) rotated q
//   5 k_cache: array<u32> (storage)  (capacity, kv_dim) f32 bits, or (capacity, kv_dim / 2) f16 pairs
//   6 v_cache: array<u32> (storage)  as k_cache
//
// One thread per pair of q (q_dim / 2 threads), grid z = token; pairs below
// kv_dim / 2 also rotate k and store k and v.

struct Params {
    q_dim: u32,
    kv_dim: u32,
    head_size: u32,
    capacity: u32,
    f16: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;

fn rotate(a: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2(a.x * cs.x - a.y * cs.y, a.x * cs.y + a.y * cs.x);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = 2u * gid.x;
    let t = gid.z;
    let pos = step.pos + t;
    // The host never steps past capacity; the check keeps a bad `pos` from
    // landing in another slot.
    if i >= params.q_dim || t >= step.n || pos >= params.capacity {
        return;
    }
    let kv = params.kv_dim;
    let row = t * (params.q_dim + 2u * kv);
    let at = 2u * (pos * (params.head_size / 2u) + (i % params.head_size) / 2u);
    let cs = vec2(table[at], table[at + 1u]);
    let qr = rotate(vec2(qkv[row + i], qkv[row + i + 1u]), cs);
    q[t * params.q_dim + i] = qr.x;
    q[t * params.q_dim + i + 1u] = qr.y;
    if i < kv {
        let k = rotate(vec2(qkv[row + params.q_dim + i], qkv[row + params.q_dim + i + 1u]), cs);
        let v = vec2(qkv[row + params.q_dim + kv + i], qkv[row + params.q_dim + kv + i + 1u]);
        let slot = pos * kv + i;
        if params.f16 == 0u {
            k_cache[slot] = bitcast<u32>(k.x);
            k_cache[slot + 1u] = bitcast<u32>(k.y);
            v_cache[slot] = bitcast<u32>(v.x);
            v_cache[slot + 1u] = bitcast<u32>(v.y);
        } else {
            k_cache[slot / 2u] = pack2x16float(k);
            v_cache[slot / 2u] = pack2x16float(v);
        }
    }
}
