// Append to the KV cache: writes the new token's K and V into slot `pos` of
// one layer's cache. The cache is never moved or copied: this is the write.
// The cache holds f32 (one u32 word per value) or f16 (two values per word,
// `pack2x16float`, so SHADER_F16 is not needed).
//
// Bindings (group 0):
//   0 params:  Params (uniform)      { kv_dim, capacity, f16 }
//   1 step:    Step (uniform)        { pos }
//   2 k:       array<f32> (storage)  (kv_dim,)
//   3 v:       array<f32> (storage)  (kv_dim,)
//   4 k_cache: array<u32> (storage)  (capacity, kv_dim) f32 bits, or (capacity, kv_dim / 2) f16 pairs
//   5 v_cache: array<u32> (storage)  as k_cache
//
// One thread per stored word: kv_dim threads for f32, kv_dim / 2 for f16.

struct Params {
    kv_dim: u32,
    capacity: u32,
    f16: u32,
}

struct Step {
    pos: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    // The host never steps past capacity; the check keeps a bad `pos` from
    // landing in another slot.
    if step.pos >= params.capacity {
        return;
    }
    if params.f16 == 0u {
        if i < params.kv_dim {
            let slot = step.pos * params.kv_dim + i;
            k_cache[slot] = bitcast<u32>(k[i]);
            v_cache[slot] = bitcast<u32>(v[i]);
        }
    } else if 2u * i < params.kv_dim {
        let slot = (step.pos * params.kv_dim) / 2u + i;
        k_cache[slot] = pack2x16float(vec2(k[2u * i], k[2u * i + 1u]));
        v_cache[slot] = pack2x16float(vec2(v[2u * i], v[2u * i + 1u]));
    }
}
