// RMSNorm: out[i] = weight[i] * x[i] / sqrt(mean(x^2) + eps).
//
// Bindings (group 0):
//   0 params: Params (uniform)       { n, eps }
//   1 x:      array<f32> (storage)   (n,)
//   2 weight: array<f32> (storage)   (n,)
//   3 out:    array<f32> (storage)   (n,)
//
// A single workgroup of 256 threads: strided sum of squares, tree reduction.

struct Params {
    n: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var ss = 0.0;
    for (var i = lid; i < params.n; i += WG) {
        ss += x[i] * x[i];
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(params.n) + params.eps);
    for (var i = lid; i < params.n; i += WG) {
        out[i] = weight[i] * (scale * x[i]);
    }
}
