// SwiGLU: gate[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
//
// Bindings (group 0):
//   0 params: Params (uniform)       { n }
//   1 gate:   array<f32> (storage)   (n,) W1 x, overwritten with the result
//   2 up:     array<f32> (storage)   (n,) W3 x

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.n {
        return;
    }
    let g = gate[i];
    gate[i] = g * (1.0 / (1.0 + exp(-g))) * up[i];
}
