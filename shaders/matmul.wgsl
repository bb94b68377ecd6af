// Matrix-matrix product (projection of a prompt's tokens in one pass): for
// each token t of a tile of up to 8 tokens of the pass and each row r of a
// weight matrix (or one row-chunk of it) stored as any dtype of
// dequant.wgsl, whose source is prepended to this file, by `mode` (as
// matvec.wgsl):
//   MODE_SET     out[t, out_offset + r]  = W[r] . x[t]
//   MODE_ADD     out[t, out_offset + r] += W[r] . x[t]
//   MODE_SWIGLU  out[t, out_offset + r]  = silu(W[r] . x[t]) * (W_up[r] . x[t])
//
// Bindings (group 0):
//   0 params: Params (uniform)                  { rows, cols, dtype, row_bytes, out_offset, mode, up_dtype, up_row_bytes, out_stride, x_stride, first_token, tile }
//   1 w:      texture_2d<u32>                   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 step:   Step (uniform)                    { pos, n }
//   3 x:      array<vec4<f32>, 4096> (uniform)  (tile, x_stride): the tile's input rows, 64 KiB from token first_token
//   4 out:    array<f32> (storage)              (n, out_stride)
//   5 w_up:   texture_2d<u32>                   (rows, up_row_bytes); MODE_SWIGLU only (else w again)
//
// One thread per row, 64 rows per workgroup, one launch per tile of tokens;
// each thread decodes 8 weights of its row at a time and uses them for
// every token of the tile, so weights are read once per tile instead of
// once per token. The inputs are a uniform buffer, which every thread reads
// at the same address (software adapters broadcast it), and the kernel has
// no barriers (software adapters switch coroutines at each). Grids of more
// than 65535 workgroups spill into y.

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
    x_stride: u32,
    first_token: u32,
    tile: u32,
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
@group(0) @binding(3) var<uniform> x: array<vec4<f32>, 4096>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var w_up: texture_2d<u32>;

// One accumulator per token, named rather than
// indexed: a private array indexed in a loop becomes per-lane memory
// traffic on SIMD adapters.
var<private> a0: f32;
var<private> a1: f32;
var<private> a2: f32;
var<private> a3: f32;
var<private> a4: f32;
var<private> a5: f32;
var<private> a6: f32;
var<private> a7: f32;

// Weights m (8 values) times inputs a, b (4 values each).
fn dot8(m: mat2x4<f32>, a: vec4<f32>, b: vec4<f32>) -> f32 {
    return dot(m[0], a) + dot(m[1], b);
}

// Adds 8 weights of the row (columns 8 g .. 8 g + 8) times each token's inputs.
fn accumulate(m: mat2x4<f32>, g: u32) {
    let s = params.x_stride / 4u; // vec4s per token row
    let j = 2u * g;
    a0 += dot8(m, x[j], x[j + 1u]);
    a1 += dot8(m, x[s + j], x[s + j + 1u]);
    a2 += dot8(m, x[2u * s + j], x[2u * s + j + 1u]);
    a3 += dot8(m, x[3u * s + j], x[3u * s + j + 1u]);
    a4 += dot8(m, x[4u * s + j], x[4u * s + j + 1u]);
    a5 += dot8(m, x[5u * s + j], x[5u * s + j + 1u]);
    a6 += dot8(m, x[6u * s + j], x[6u * s + j + 1u]);
    a7 += dot8(m, x[7u * s + j], x[7u * s + j + 1u]);
}

// All columns of one row, stored as `dtype`, for the tile's tokens: the
// type is chosen once, outside the loop over 8-value groups.
fn row_tile(tex: texture_2d<u32>, dtype: u32, row: u32, row_bytes: u32, cols: u32) {
    let whole = cols / 8u; // groups of 8 inside the row
    // Rows on a texel boundary (the common case) fetch whole texels. Decided
    // from the row size, the same for every thread: adapters then know the
    // loops below and their input addresses are uniform (scalar loads
    // instead of per-lane gathers).
    let aligned = row_bytes % 16u == 0u;
    switch dtype {
        case DTYPE_F32: {
            if aligned {
                for (var g = 0u; g < whole; g++) {
                    let t = row / 16u + 2u * g;
                    let m = mat2x4(bitcast<vec4<f32>>(texel(tex, t)), bitcast<vec4<f32>>(texel(tex, t + 1u)));
                    accumulate(m, g);
                }
            } else {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f32x8(tex, row, 8u * g), g);
                }
            }
        }
        case DTYPE_F16: {
            if aligned {
                for (var g = 0u; g < whole; g++) {
                    let v = texel(tex, row / 16u + g);
                    let m = mat2x4(
                        vec4(unpack2x16float(v.x), unpack2x16float(v.y)),
                        vec4(unpack2x16float(v.z), unpack2x16float(v.w)),
                    );
                    accumulate(m, g);
                }
            } else {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f16x8(tex, row, 8u * g), g);
                }
            }
        }
        case DTYPE_BF16: {
            for (var g = 0u; g < whole; g++) {
                accumulate(bf16x8(tex, row, 8u * g), g);
            }
        }
        case DTYPE_Q8_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q8_0x8(tex, row, 8u * g), g);
            }
        }
        case DTYPE_Q4_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q4_0x8(tex, row, 8u * g), g);
            }
        }
        default: {
            for (var g = 0u; g < whole; g++) {
                accumulate(anyx8(tex, dtype, row, 8u * g, cols), g);
            }
        }
    }
    // A row's last, partial group (float types of odd width).
    if 8u * whole < cols {
        accumulate(anyx8(tex, dtype, row, 8u * whole, cols), whole);
    }
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.x + wg.y * num_wg.x) * 64u + lid;
    if r >= params.rows {
        return;
    }
    row_tile(w, params.dtype, r * params.row_bytes, params.row_bytes, params.cols);
    // The up projection's sums (SwiGLU), swapped with a0..a7 around its pass.
    var u = array<f32, 8>();
    if params.mode == MODE_SWIGLU {
        u = swap(u);
        row_tile(w_up, params.up_dtype, r * params.up_row_bytes, params.up_row_bytes, params.cols);
        u = swap(u);
    }
    let t0 = params.first_token;
    store(t0, 0u, r, a0, u[0]);
    store(t0, 1u, r, a1, u[1]);
    store(t0, 2u, r, a2, u[2]);
    store(t0, 3u, r, a3, u[3]);
    store(t0, 4u, r, a4, u[4]);
    store(t0, 5u, r, a5, u[5]);
    store(t0, 6u, r, a6, u[6]);
    store(t0, 7u, r, a7, u[7]);
}

// Exchanges `other` with the accumulators a0..a7.
fn swap(other: array<f32, 8>) -> array<f32, 8> {
    let mine = array(a0, a1, a2, a3, a4, a5, a6, a7);
    a0 = other[0];
    a1 = other[1];
    a2 = other[2];
    a3 = other[3];
    a4 = other[4];
    a5 = other[5];
    a6 = other[6];
    a7 = other[7];
    return mine;
}

// The epilogue for token t0 + i (the tile's i-th), row r: s = W[r] . x,
// b = W_up[r] . x.
fn store(t0: u32, i: u32, r: u32, s: f32, b: f32) {
    let t = t0 + i;
    if i >= params.tile || t >= step.n {
        return;
    }
    let o = t * params.out_stride + params.out_offset + r;
    switch params.mode {
        case MODE_ADD: {
            out[o] += s;
        }
        case MODE_SWIGLU: {
            out[o] = s * (1.0 / (1.0 + exp(-s))) * b;
        }
        default: {
            out[o] = s;
        }
    }
}
