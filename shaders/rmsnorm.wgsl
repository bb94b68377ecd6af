// RMSNorm of each token's row: out[t, i] = weight[i] * x[t, i] / sqrt(mean(x[t]^2) + eps).
// With `last` set, only the pass's last token: out[0] = rmsnorm(x[step.n - 1])
// (the classifier's input after a prompt).
//
// Built with RESIDUAL = true (the norms after attention and after the
// feed-forward block, Gemma's), the normed row joins the residual stream
// instead: out[t, i] += weight[i] * x[t, i] / rms(x[t]), and xg[t, i] =
// out[t, i] * next_g[i], the input of the NORM projection that reads the
// stream next (matvec_row.wgsl).
//
// Bindings (group 0):
//   0 params: Params (uniform)       { n, eps, last, stride }
//   1 x:      array<f32> (storage)   (tokens, stride), n values used per row
//   2 weight: array<f32> (storage)   (n,)
//   3 out:    array<f32> (storage)   (tokens, stride), n values used per row
//   4 step:   Step (uniform)         { pos, n }
//   5 next_g: array<f32> (storage)   (n,) the next norm's weights; RESIDUAL only (else weight)
//   6 xg:     array<f32> (storage)   (tokens, stride) out * next_g; RESIDUAL only (else out)
//
// One workgroup of 256 threads per token (grid z): strided sum of squares,
// tree reduction.

struct Params {
    n: u32,
    eps: f32,
    last: u32,
    stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read> next_g: array<f32>;
@group(0) @binding(6) var<storage, read_write> xg: array<f32>;

override RESIDUAL: bool = false;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let src = select(wg.z, step.n - 1u, params.last == 1u) * params.stride;
    let dst = select(wg.z * params.stride, 0u, params.last == 1u);
    var ss = 0.0;
    for (var i = lid; i < params.n; i += WG) {
        ss += x[src + i] * x[src + i];
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
        let y = weight[i] * (scale * x[src + i]);
        if RESIDUAL {
            let r = out[dst + i] + y;
            out[dst + i] = r;
            xg[dst + i] = r * next_g[i];
        } else {
            out[dst + i] = y;
        }
    }
}
