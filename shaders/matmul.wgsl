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

// One accumulator per token (4 partial sums each), named rather than
// indexed: a private array indexed in a loop becomes per-lane memory
// traffic on SIMD adapters.
var<private> a0: vec4<f32>;
var<private> a1: vec4<f32>;
var<private> a2: vec4<f32>;
var<private> a3: vec4<f32>;
var<private> a4: vec4<f32>;
var<private> a5: vec4<f32>;
var<private> a6: vec4<f32>;
var<private> a7: vec4<f32>;

// Weights m (8 values) times inputs a, b (4 values each), as 4 partial sums.
fn dot8(m: mat2x4<f32>, a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return m[0] * a + m[1] * b;
}

// Adds 8 weights of the row times columns 8 g .. 8 g + 8 of the tile, for every token.
fn accumulate(m: mat2x4<f32>, g: u32) {
    let j = 2u * g;
    a0 += dot8(m, xs[j], xs[j + 1u]);
    a1 += dot8(m, xs[16u + j], xs[17u + j]);
    a2 += dot8(m, xs[32u + j], xs[33u + j]);
    a3 += dot8(m, xs[48u + j], xs[49u + j]);
    a4 += dot8(m, xs[64u + j], xs[65u + j]);
    a5 += dot8(m, xs[80u + j], xs[81u + j]);
    a6 += dot8(m, xs[96u + j], xs[97u + j]);
    a7 += dot8(m, xs[112u + j], xs[113u + j]);
}

// The tile's columns k0 .. k0 + COLS of one row, stored as `dtype`: the
// type is chosen once, outside the loop over the tile's 8-value groups.
fn tile(tex: texture_2d<u32>, dtype: u32, row: u32, k0: u32, cols: u32) {
    let whole = min(COLS, cols - k0) / 8u; // groups of 8 inside the row
    switch dtype {
        case DTYPE_F32: {
            for (var g = 0u; g < whole; g++) {
                accumulate(f32x8(tex, row, k0 + 8u * g), g);
            }
        }
        case DTYPE_F16: {
            for (var g = 0u; g < whole; g++) {
                accumulate(f16x8(tex, row, k0 + 8u * g), g);
            }
        }
        case DTYPE_BF16: {
            for (var g = 0u; g < whole; g++) {
                accumulate(bf16x8(tex, row, k0 + 8u * g), g);
            }
        }
        case DTYPE_Q8_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q8_0x8(tex, row, k0 + 8u * g), g);
            }
        }
        case DTYPE_Q4_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q4_0x8(tex, row, k0 + 8u * g), g);
            }
        }
        default: {
            for (var g = 0u; g < whole; g++) {
                accumulate(anyx8(tex, dtype, row, k0 + 8u * g, cols), g);
            }
        }
    }
    // A row's last, partial group (float types of odd width).
    let c = k0 + 8u * whole;
    if c < min(k0 + COLS, cols) {
        accumulate(anyx8(tex, dtype, row, c, cols), whole);
    }
}

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
    // The up projection's sums (SwiGLU), swapped with a0..a7 around its tiles.
    var u = array<vec4<f32>, 8>();
    for (var k0 = 0u; k0 < cols; k0 += COLS) {
        // Stage x[t0 .. t0 + 8, k0 .. k0 + 64], zero outside: 2 vec4 per thread.
        for (var i = 0u; i < 2u; i++) {
            let v = i * 64u + lid;
            let t = t0 + v / 16u;
            let c = k0 + 4u * (v % 16u);
            let at = t * cols + c;
            let ok = t < step.n;
            xs[v] = vec4(
                select(0.0, x[at], ok && c < cols),
                select(0.0, x[at + 1u], ok && c + 1u < cols),
                select(0.0, x[at + 2u], ok && c + 2u < cols),
                select(0.0, x[at + 3u], ok && c + 3u < cols),
            );
        }
        workgroupBarrier();
        if live {
            tile(w, params.dtype, row, k0, cols);
            if swiglu {
                u = swap(u);
                tile(w_up, params.up_dtype, up_row, k0, cols);
                u = swap(u);
            }
        }
        workgroupBarrier();
    }
    if !live {
        return;
    }
    store(t0, r, a0, u[0]);
    store(t0 + 1u, r, a1, u[1]);
    store(t0 + 2u, r, a2, u[2]);
    store(t0 + 3u, r, a3, u[3]);
    store(t0 + 4u, r, a4, u[4]);
    store(t0 + 5u, r, a5, u[5]);
    store(t0 + 6u, r, a6, u[6]);
    store(t0 + 7u, r, a7, u[7]);
}

// Exchanges `other` with the accumulators a0..a7.
fn swap(other: array<vec4<f32>, 8>) -> array<vec4<f32>, 8> {
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

// The epilogue for token t, row r: a and up hold 4 partial sums each.
fn store(t: u32, r: u32, a: vec4<f32>, up: vec4<f32>) {
    if t >= step.n {
        return;
    }
    let s = a.x + a.y + a.z + a.w;
    let o = t * params.out_stride + params.out_offset + r;
    switch params.mode {
        case MODE_ADD: {
            out[o] += s;
        }
        case MODE_SWIGLU: {
            let b = up.x + up.y + up.z + up.w;
            out[o] = s * (1.0 / (1.0 + exp(-s))) * b;
        }
        default: {
            out[o] = s;
        }
    }
}
