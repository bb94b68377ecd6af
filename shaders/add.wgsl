// Residual add: x[i] += y[i].
//
// Bindings (group 0):
//   0 params: Params (uniform)       { n }
//   1 x:      array<f32> (storage)   (n,) residual stream, updated in place
//   2 y:      array<f32> (storage)   (n,) block output

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.n {
        return;
    }
    x[i] += y[i];
}
