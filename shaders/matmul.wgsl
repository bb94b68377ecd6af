// Matrix-matrix product (projection of a prompt's tokens in one pass): for
// each token t < step.n and row r of a weight matrix (or one row-chunk of it)
// stored as any dtype of dequant.wgsl, whose source is prepended to this
// file, by `mode` (as matvec.wgsl):
//   MODE_SET     out[t, out_offset + r]  = W[r] . x[t]
//   MODE_ADD     out[t, out_offset + r] += W[r] . x[t]
//   MODE_SWIGLU  out[t, out_offset + r]  = silu(W[r] . x[t]) * (W_up[r] . x[t])
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols, dtype, row_bytes, out_offset, mode, up_dtype, up_row_bytes, out_stride }
//   1 w:      texture_2d<u32>        (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 step:   Step (uniform)         { pos, n }
//   3 x:      array<f32> (storage)   (n, cols)
//   4 out:    array<f32> (storage)   (n, out_stride)
//   5 w_up:   texture_2d<u32>        (rows, up_row_bytes); MODE_SWIGLU only (else w again)
//
// Tiled: a workgroup computes 64 rows x 8 tokens. Per 64 columns it stages
// the 8 tokens' inputs in workgroup memory, then each thread decodes 8
// weights of its row at a time and uses each for all 8 tokens, so weights
// are read once per 8 tokens instead of once per token. Grid: (rows / 64
// workgroups, spilling into y; ceil(n / 8)) with z the token tile.

struct Params {
    rows: u32,
    cols: u32,
    dtype: u32,
    row_bytes: u32,
    out_offset: u32,
    mode: u32,
    up_dtype: u32,
    up_row_bytes: u32,
    out_stride: u32,
}

struct Step {
    pos: u32,
    n: u32,
}

const MODE_SET: u32 = 0u;
const MODE_ADD: u32 = 1u;
const MODE_SWIGLU: u32 = 2u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var w_up: texture_2d<u32>;

const TOKENS: u32 = 8u;
const COLS: u32 = 64u;
// (TOKENS, COLS / 4) inputs of the current column tile.
var<workgroup> xs: array<vec4<f32>, 128>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.x + wg.y * num_wg.x) * 64u + lid;
    let t0 = wg.z * TOKENS;
    let live = r < params.rows;
    let cols = params.cols;
    let swiglu = params.mode == MODE_SWIGLU;
    let row = r * params.row_bytes;
    let up_row = r * params.up_row_bytes;
    var acc: array<vec4<f32>, 8>;
    var acc_up: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < cols; k0 += COLS) {
        // Stage x[t0 .. t0 + 8, k0 .. k0 + 64], zero outside: 2 vec4 per thread.
        for (var i = 0u; i < 2u; i++) {
            let v = i * 64u + lid;
            let t = t0 + v / 16u;
            let c = k0 + 4u * (v % 16u);
            var e = vec4<f32>(0.0);
            if t < step.n {
                for (var j = 0u; j < 4u; j++) {
                    if c + j < cols {
                        e[j] = x[t * cols + c + j];
                    }
                }
            }
            xs[v] = e;
        }
        workgroupBarrier();
        if live {
            for (var g = 0u; g < COLS / 8u; g++) {
                let c = k0 + 8u * g;
                if c >= cols {
                    break;
                }
                let m = weights8(w, params.dtype, row, c, cols);
                for (var t = 0u; t < TOKENS; t++) {
                    acc[t] += m[0] * xs[16u * t + 2u * g] + m[1] * xs[16u * t + 2u * g + 1u];
                }
                if swiglu {
                    let u = weights8(w_up, params.up_dtype, up_row, c, cols);
                    for (var t = 0u; t < TOKENS; t++) {
                        acc_up[t] += u[0] * xs[16u * t + 2u * g] + u[1] * xs[16u * t + 2u * g + 1u];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if !live {
        return;
    }
    for (var t = 0u; t < TOKENS; t++) {
        if t0 + t >= step.n {
            break;
        }
        let a = acc[t].x + acc[t].y + acc[t].z + acc[t].w;
        let o = (t0 + t) * params.out_stride + params.out_offset + r;
        switch params.mode {
            case MODE_ADD: {
                out[o] += a;
            }
            case MODE_SWIGLU: {
                let b = acc_up[t].x + acc_up[t].y + acc_up[t].z + acc_up[t].w;
                out[o] = a * (1.0 / (1.0 + exp(-a))) * b;
            }
            default: {
                out[o] = a;
            }
        }
    }
}
