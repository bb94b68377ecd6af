// Matrix-matrix product (projection of a prompt's tokens in one pass), the
// part both builds share (matmul.wgsl reads the inputs in every thread,
// matmul_subgroup.wgsl shares each read across a subgroup; either defines
// `input8` and `main`): for each token t of a tile of up to 8 tokens of the
// pass and each row r of a weight matrix (or one row-chunk of it) stored as
// any dtype of dequant.wgsl, whose source is prepended to this file, by
// `mode` (as matvec_row.wgsl):
//   MODE_SET     out[t, out_offset + r]  = W[r] . x[t]
//   MODE_ADD     out[t, out_offset + r] += W[r] . x[t]
//   MODE_SWIGLU  out[t, out_offset + r]  = silu(W[r] . x[t]) * (W_up[r] . x[t])
//   MODE_GEGLU   out[t, out_offset + r]  = gelu(W[r] . x[t]) * (W_up[r] . x[t])
//
// Bindings (group 0):
//   0 params: Params (uniform, dequant.wgsl)    { rows, cols, row_bytes, out_offset, mode, up_row_bytes, out_stride, x_stride, first_token, tile }
//   1 w:      texture_2d<u32>                   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 step:   Step (uniform)                    { pos, n }
//   3 x:      array<vec4<f32>, 4096> (uniform)  (tile, x_stride): the tile's input rows, 64 KiB from token first_token
//   4 out:    array<f32> (storage)              (n, out_stride)
//   5 w_up:   texture_2d<u32>                   (rows, up_row_bytes); MODE_SWIGLU and MODE_GEGLU only (else w again)
//
// Four rows per thread (r, r + 64, r + 128, r + 192), 256 rows per
// workgroup (or two rows, 128, built with FOUR_ROWS = false), one launch
// per tile of tokens; each thread decodes 8 weights of each row at a time
// (Q4_1 a block of 32) and uses them for every token of the tile, so
// weights are read once per tile instead of once per token, and each input
// value read serves all four rows (110M-shape prefill 1.28x over two rows
// on lavapipe). The inputs are a uniform buffer at the same address in
// every thread. Software adapters read it as a gather in each thread (most
// of the kernel's time on lavapipe), hence the subgroup build. The kernel
// has no barriers (software adapters switch coroutines at each). Grids of
// more than 65535 workgroups spill into y.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<uniform> x: array<vec4<f32>, 4096>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var w_up: texture_2d<u32>;

// Four rows per thread, or two (rows r, r + 64: for matrices whose rows
// would leave most threads' third and fourth rows past the end). A
// pipeline constant: the unused sums and their weight fetches compile away.
override FOUR_ROWS: bool = true;

// The up projection's storage type (SwiGLU), as DTYPE (dequant.wgsl).
override UP_DTYPE: u32 = DTYPE_F32;

// Per token of the tile, the sums of rows r (a0..a7), r + 64 (b0..b7),
// r + 128 (c0..c7) and r + 192 (d0..d7): named rather than indexed, as a private array indexed in a loop
// becomes per-lane memory traffic on SIMD adapters.
var<private> a0: f32;
var<private> a1: f32;
var<private> a2: f32;
var<private> a3: f32;
var<private> a4: f32;
var<private> a5: f32;
var<private> a6: f32;
var<private> a7: f32;
var<private> b0: f32;
var<private> b1: f32;
var<private> b2: f32;
var<private> b3: f32;
var<private> b4: f32;
var<private> b5: f32;
var<private> b6: f32;
var<private> b7: f32;
var<private> c0: f32;
var<private> c1: f32;
var<private> c2: f32;
var<private> c3: f32;
var<private> c4: f32;
var<private> c5: f32;
var<private> c6: f32;
var<private> c7: f32;
var<private> d0: f32;
var<private> d1: f32;
var<private> d2: f32;
var<private> d3: f32;
var<private> d4: f32;
var<private> d5: f32;
var<private> d6: f32;
var<private> d7: f32;

// Weights m (8 values) times inputs i (8 values).
fn dot8(m: mat2x4<f32>, i: mat2x4<f32>) -> f32 {
    return dot(m[0], i[0]) + dot(m[1], i[1]);
}

// Adds columns 8 g .. 8 g + 8 of the four rows (m: row r, n: r + 64,
// o: r + 128, k: r + 192) times each token's inputs.
fn accumulate(m: mat2x4<f32>, n: mat2x4<f32>, o: mat2x4<f32>, k: mat2x4<f32>, g: u32) {
    let s = params.x_stride / 4u; // vec4s per token row
    let j = 2u * g;
    var i = input8(j);
    a0 += dot8(m, i);
    b0 += dot8(n, i);
    if FOUR_ROWS {
        c0 += dot8(o, i);
        d0 += dot8(k, i);
    }
    i = input8(s + j);
    a1 += dot8(m, i);
    b1 += dot8(n, i);
    if FOUR_ROWS {
        c1 += dot8(o, i);
        d1 += dot8(k, i);
    }
    i = input8(2u * s + j);
    a2 += dot8(m, i);
    b2 += dot8(n, i);
    if FOUR_ROWS {
        c2 += dot8(o, i);
        d2 += dot8(k, i);
    }
    i = input8(3u * s + j);
    a3 += dot8(m, i);
    b3 += dot8(n, i);
    if FOUR_ROWS {
        c3 += dot8(o, i);
        d3 += dot8(k, i);
    }
    i = input8(4u * s + j);
    a4 += dot8(m, i);
    b4 += dot8(n, i);
    if FOUR_ROWS {
        c4 += dot8(o, i);
        d4 += dot8(k, i);
    }
    i = input8(5u * s + j);
    a5 += dot8(m, i);
    b5 += dot8(n, i);
    if FOUR_ROWS {
        c5 += dot8(o, i);
        d5 += dot8(k, i);
    }
    i = input8(6u * s + j);
    a6 += dot8(m, i);
    b6 += dot8(n, i);
    if FOUR_ROWS {
        c6 += dot8(o, i);
        d6 += dot8(k, i);
    }
    i = input8(7u * s + j);
    a7 += dot8(m, i);
    b7 += dot8(n, i);
    if FOUR_ROWS {
        c7 += dot8(o, i);
        d7 += dot8(k, i);
    }
}

// Values 8 g .. 8 g + 8 of an F32 / F16 row starting on a texel boundary.
fn f32_texels(tex: texture_2d<u32>, row: u32, g: u32) -> mat2x4<f32> {
    let t = row / 16u + 2u * g;
    return mat2x4(bitcast<vec4<f32>>(texel(tex, t)), bitcast<vec4<f32>>(texel(tex, t + 1u)));
}

fn f16_texel(tex: texture_2d<u32>, row: u32, g: u32) -> mat2x4<f32> {
    let v = texel(tex, row / 16u + g);
    return mat2x4(
        vec4(unpack2x16float(v.x), unpack2x16float(v.y)),
        vec4(unpack2x16float(v.z), unpack2x16float(v.w)),
    );
}

// All columns of rows `r1` and `r2` (byte offsets), stored as `dtype`, for
// the tile's tokens. The type is chosen once, outside the loop over 8-value
// groups, and alignment from the row size, the same for every thread: the
// loops and their input addresses are then uniform (scalar loads rather
// than per-lane gathers on SIMD adapters).
fn rows_tile(tex: texture_2d<u32>, dtype: u32, r1: u32, r2: u32, r3: u32, r4: u32, row_bytes: u32, cols: u32) {
    let whole = cols / 8u; // groups of 8 inside the row
    let aligned = row_bytes % 16u == 0u;
    switch dtype {
        case DTYPE_F32: {
            if aligned {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f32_texels(tex, r1, g), f32_texels(tex, r2, g), f32_texels(tex, r3, g), f32_texels(tex, r4, g), g);
                }
            } else {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f32x8(tex, r1, 8u * g), f32x8(tex, r2, 8u * g), f32x8(tex, r3, 8u * g), f32x8(tex, r4, 8u * g), g);
                }
            }
        }
        case DTYPE_F16: {
            if aligned {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f16_texel(tex, r1, g), f16_texel(tex, r2, g), f16_texel(tex, r3, g), f16_texel(tex, r4, g), g);
                }
            } else {
                for (var g = 0u; g < whole; g++) {
                    accumulate(f16x8(tex, r1, 8u * g), f16x8(tex, r2, 8u * g), f16x8(tex, r3, 8u * g), f16x8(tex, r4, 8u * g), g);
                }
            }
        }
        case DTYPE_BF16: {
            for (var g = 0u; g < whole; g++) {
                accumulate(bf16x8(tex, r1, 8u * g), bf16x8(tex, r2, 8u * g), bf16x8(tex, r3, 8u * g), bf16x8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q8_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q8_0x8(tex, r1, 8u * g), q8_0x8(tex, r2, 8u * g), q8_0x8(tex, r3, 8u * g), q8_0x8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q4_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q4_0x8(tex, r1, 8u * g), q4_0x8(tex, r2, 8u * g), q4_0x8(tex, r3, 8u * g), q4_0x8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q4_1: {
            // A block (32 values) of each row at a time: its scales' texel
            // and its nibbles' (dequant.wgsl's groups), then its four
            // groups of 8 decoded from them.
            for (var b = 0u; b < cols / 32u; b++) {
                let k1 = q4_1_block(tex, r1, b);
                let k2 = q4_1_block(tex, r2, b);
                let k3 = q4_1_block(tex, r3, b);
                let k4 = q4_1_block(tex, r4, b);
                let g = 4u * b;
                accumulate(q4_1_group(k1, 0u), q4_1_group(k2, 0u), q4_1_group(k3, 0u), q4_1_group(k4, 0u), g);
                accumulate(q4_1_group(k1, 1u), q4_1_group(k2, 1u), q4_1_group(k3, 1u), q4_1_group(k4, 1u), g + 1u);
                accumulate(q4_1_group(k1, 2u), q4_1_group(k2, 2u), q4_1_group(k3, 2u), q4_1_group(k4, 2u), g + 2u);
                accumulate(q4_1_group(k1, 3u), q4_1_group(k2, 3u), q4_1_group(k3, 3u), q4_1_group(k4, 3u), g + 3u);
            }
        }
        case DTYPE_Q5_0: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q5_0x8(tex, r1, 8u * g), q5_0x8(tex, r2, 8u * g), q5_0x8(tex, r3, 8u * g), q5_0x8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q5_1: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q5_1x8(tex, r1, 8u * g), q5_1x8(tex, r2, 8u * g), q5_1x8(tex, r3, 8u * g), q5_1x8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_IQ4_NL: {
            for (var g = 0u; g < whole; g++) {
                accumulate(iq4_nlx8(tex, r1, 8u * g), iq4_nlx8(tex, r2, 8u * g), iq4_nlx8(tex, r3, 8u * g), iq4_nlx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_IQ4_XS: {
            for (var g = 0u; g < whole; g++) {
                accumulate(iq4_xsx8(tex, r1, 8u * g), iq4_xsx8(tex, r2, 8u * g), iq4_xsx8(tex, r3, 8u * g), iq4_xsx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q2_K: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q2_kx8(tex, r1, 8u * g), q2_kx8(tex, r2, 8u * g), q2_kx8(tex, r3, 8u * g), q2_kx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q3_K: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q3_kx8(tex, r1, 8u * g), q3_kx8(tex, r2, 8u * g), q3_kx8(tex, r3, 8u * g), q3_kx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q4_K: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q4_kx8(tex, r1, 8u * g), q4_kx8(tex, r2, 8u * g), q4_kx8(tex, r3, 8u * g), q4_kx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q5_K: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q5_kx8(tex, r1, 8u * g), q5_kx8(tex, r2, 8u * g), q5_kx8(tex, r3, 8u * g), q5_kx8(tex, r4, 8u * g), g);
            }
        }
        case DTYPE_Q6_K: {
            for (var g = 0u; g < whole; g++) {
                accumulate(q6_kx8(tex, r1, 8u * g), q6_kx8(tex, r2, 8u * g), q6_kx8(tex, r3, 8u * g), q6_kx8(tex, r4, 8u * g), g);
            }
        }
        default: {}
    }
    // The rows' last, partial group (float types of odd width).
    if 8u * whole < cols {
        let c = 8u * whole;
        accumulate(x8_to(tex, dtype, r1, c, cols), x8_to(tex, dtype, r2, c, cols), x8_to(tex, dtype, r3, c, cols), x8_to(tex, dtype, r4, c, cols), whole);
    }
}

// Block b of a Q4_1 row starting at byte `row`: f16 d and m, and 16 bytes
// of nibbles (value v < 16 in byte v's low nibble, v + 16 in its high
// one). Two texel fetches (dequant.wgsl's groups of 4 blocks).
struct Q4_1Block {
    dm: vec2<f32>,
    q: vec4<u32>,
}

fn q4_1_block(tex: texture_2d<u32>, row: u32, b: u32) -> Q4_1Block {
    let t0 = group_texel(row, b, 4u, 1u);
    return Q4_1Block(unpack2x16float(texel(tex, t0)[b % 4u]), texel(tex, t0 + 1u + b % 4u));
}

// Values 8 k .. 8 k + 8 of a Q4_1 block: d q + m.
fn q4_1_group(block: Q4_1Block, k: u32) -> mat2x4<f32> {
    let w = select(block.q.xy, block.q.zw, (k & 1u) == 1u);
    let shift = vec4((k / 2u) * 4u);
    let lo = vec4<f32>((u8x4(w.x) >> shift) & vec4(15u));
    let hi = vec4<f32>((u8x4(w.y) >> shift) & vec4(15u));
    return mat2x4(block.dm.x * lo + block.dm.y, block.dm.x * hi + block.dm.y);
}

// The tile product of workgroup `group` (its index in the grid), thread
// `lid`. Every thread runs the loops, those past the last row on row 0
// (the subgroup build's threads share their input reads), and stores
// only its own rows.
fn tile(group: u32, lid: u32) {
    let r = group * select(128u, 256u, FOUR_ROWS) + lid;
    // Rows r + 64 i past the last row repeat the first, and are not stored.
    let first = select(0u, r, r < params.rows);
    let rows = array(first, row_or(first, 64u), row_or(first, 128u), row_or(first, 192u));
    let b = params.row_bytes;
    rows_tile(w, DTYPE, rows[0] * b, rows[1] * b, rows[2] * b, rows[3] * b, b, params.cols);
    // The up projection's sums (SwiGLU), swapped with the accumulators around its pass.
    var u = array<f32, 32>();
    if params.mode >= MODE_SWIGLU {
        u = swap(u);
        let ub = params.up_row_bytes;
        rows_tile(w_up, UP_DTYPE, rows[0] * ub, rows[1] * ub, rows[2] * ub, rows[3] * ub, ub, params.cols);
        u = swap(u);
    }
    // Each row's 8 tokens; a repeated row (past the last) is not stored.
    if r >= params.rows {
        return;
    }
    var sum = sums();
    for (var k = 0u; k < 4u; k++) {
        if k == 0u || rows[k] != r {
            for (var i = 0u; i < 8u; i++) {
                store(params.first_token, i, rows[k], sum[8u * k + i], u[8u * k + i]);
            }
        }
    }
}

// Row r + d, or r itself past the last row (or past the thread's rows).
fn row_or(r: u32, d: u32) -> u32 {
    return select(r, r + d, r + d < params.rows && (d < 128u || FOUR_ROWS));
}

// The accumulators, row by row.
fn sums() -> array<f32, 32> {
    return array(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, c0, c1, c2, c3, c4, c5, c6, c7, d0, d1, d2, d3, d4, d5, d6, d7);
}

// Exchanges `other` with the accumulators a0..a7, b0..b7, c0..c7, d0..d7.
fn swap(other: array<f32, 32>) -> array<f32, 32> {
    let mine = sums();
    a0 = other[0];
    a1 = other[1];
    a2 = other[2];
    a3 = other[3];
    a4 = other[4];
    a5 = other[5];
    a6 = other[6];
    a7 = other[7];
    b0 = other[8];
    b1 = other[9];
    b2 = other[10];
    b3 = other[11];
    b4 = other[12];
    b5 = other[13];
    b6 = other[14];
    b7 = other[15];
    c0 = other[16];
    c1 = other[17];
    c2 = other[18];
    c3 = other[19];
    c4 = other[20];
    c5 = other[21];
    c6 = other[22];
    c7 = other[23];
    d0 = other[24];
    d1 = other[25];
    d2 = other[26];
    d3 = other[27];
    d4 = other[28];
    d5 = other[29];
    d6 = other[30];
    d7 = other[31];
    return mine;
}

// The epilogue for token t0 + i (the tile's i-th), row r: s = W[r] . x,
// b = W_up[r] . x.
fn store(t0: u32, i: u32, r: u32, s: f32, b: f32) {
    let t = t0 + i;
    if i >= params.tile || t >= step.n {
        return;
    }
    project(t * params.out_stride + params.out_offset + r, s, b);
}
