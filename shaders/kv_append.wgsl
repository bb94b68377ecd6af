// Append to the KV cache: writes the new token's K and V into slot `pos` of
// one layer's cache. The cache is never moved or copied: this is the write.
//
// Bindings (group 0):
//   0 params:  Params (uniform)      { kv_dim, capacity }
//   1 step:    Step (uniform)        { pos }
//   2 k:       array<f32> (storage)  (kv_dim,)
//   3 v:       array<f32> (storage)  (kv_dim,)
//   4 k_cache: array<f32> (storage)  (capacity, kv_dim)
//   5 v_cache: array<f32> (storage)  (capacity, kv_dim)
//
// One thread per element of kv_dim.

struct Params {
    kv_dim: u32,
    capacity: u32,
}

struct Step {
    pos: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    // The host never steps past capacity; the check keeps a bad `pos` from
    // landing in another slot.
    if i >= params.kv_dim || step.pos >= params.capacity {
        return;
    }
    let slot = step.pos * params.kv_dim + i;
    k_cache[slot] = k[i];
    v_cache[slot] = v[i];
}
