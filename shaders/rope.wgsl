// RoPE: rotates each (even, odd) pair of q and k by the angle of the current
// position, as llama2.c does: pair i of a head uses frequency
// theta^(-2i / head_size). The cos/sin values come from a table computed on
// the host, so every adapter rotates by exactly the same numbers.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { q_dim, kv_dim, head_size }
//   1 step:   Step (uniform)         { pos }
//   2 table:  array<f32> (storage)   (capacity, head_size / 2, 2) = (cos, sin)
//   3 q:      array<f32> (storage)   (q_dim,)  rotated in place
//   4 k:      array<f32> (storage)   (kv_dim,) rotated in place
//
// One thread per pair of q (q_dim / 2 threads); pairs below kv_dim / 2 also rotate k.

struct Params {
    q_dim: u32,
    kv_dim: u32,
    head_size: u32,
}

struct Step {
    pos: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = 2u * gid.x;
    if i >= params.q_dim {
        return;
    }
    let half_head = params.head_size / 2u;
    let t = 2u * (step.pos * half_head + (i % params.head_size) / 2u);
    let c = table[t];
    let s = table[t + 1u];
    let q0 = q[i];
    let q1 = q[i + 1u];
    q[i] = q0 * c - q1 * s;
    q[i + 1u] = q0 * s + q1 * c;
    if i < params.kv_dim {
        let k0 = k[i];
        let k1 = k[i + 1u];
        k[i] = k0 * c - k1 * s;
        k[i + 1u] = k0 * s + k1 * c;
    }
}
