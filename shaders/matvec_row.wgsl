// Matrix-vector product (projection) for one token, the part both builds
// share (matvec.wgsl reads the inputs in every thread, matvec_subgroup.wgsl
// shares each read across a subgroup; either defines `input`,
// `sum_squares` and `main`): for each row r of a weight matrix (or one row-chunk of it)
// stored as any dtype of dequant.wgsl, whose source is prepended to this
// file, by `mode`:
//   MODE_SET     out[out_offset + r]  = W[r] . x
//   MODE_ADD     out[out_offset + r] += W[r] . x      (residual add in the epilogue)
//   MODE_SWIGLU  out[out_offset + r]  = silu(W[r] . x) * (W_up[r] . x)  (gate, up and SiLU in one pass)
//   MODE_GEGLU   out[out_offset + r]  = gelu(W[r] . x) * (W_up[r] . x)  (likewise, GELU's tanh form)
//                (a pipeline constant too, SWIGLU: gate and up of one type, Q4_1, Q8_0 or
//                aligned F16, are read in one loop, each input once for both: pair_dot)
// Built with the override NORM = true, the product is W . rmsnorm(x) * g,
// the RMSNorm before the projection in the projection (one dispatch fewer
// per norm): the input is xg = x * g, written by whichever kernel wrote the
// residual stream x (embed, or a NEXT_NORM epilogue), and the sum is scaled
// by 1 / rms(x), x's sum of squares computed by every thread from the
// uniform `residual`, or by a subgroup together. A constant, so the plain
// pipeline pays nothing for it.
//
// Built with the override NEXT_NORM = true (MODE_ADD: a residual add), the
// epilogue also writes xg[o] = out[o] * next_g[o], the input of the NORM
// projection that reads this residual stream next.
//
// Built with the override ROPE = true, the projection is a decode step's
// QKV (rows: q_dim of q, kv_dim of k, kv_dim of v) into a flat f32 or f16
// cache, and its epilogue does rope_append.wgsl's work for the token (one
// launch fewer): rows 2i and 2i + 1 meet in workgroup memory, q's pair is
// rotated into `out`, k's rotated and v's stored into row step.pos of the
// caches.
//
// Bindings (group 0):
//   0 params:  Params (uniform, dequant.wgsl)    { rows, cols, row_bytes, out_offset, mode, up_row_bytes,
//                                                  out_stride, x_stride, first_token, tile (matmul only), eps (NORM only),
//                                                  q_dim, kv_dim, head_size, kv_dtype (ROPE only) }
//   1 w:       texture_2d<u32>                   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 x:       array<vec4<f32>, 4096> (uniform)  (cols,) zero-padded to 16384 values; NORM: x * g
//   3 out:     array<f32> (storage)              (out_offset + rows,); ROPE: (q_dim,) rotated q
//   4 w_up:    texture_2d<u32>                   (rows, up_row_bytes) raw bytes; MODE_SWIGLU and MODE_GEGLU only (else w again)
//   5 residual: array<vec4<f32>, 4096> (uniform) (cols,) the residual stream x, zero-padded; NORM only (else x again)
//   6 step:    RopeStep (uniform)                { pos, n, page }: the pass's Step (prelude.wgsl); ROPE only (else x)
//   7 table:   array<f32> (storage)              (capacity, head_size / 2, 2) = (cos, sin); ROPE only (else out)
//   8 k_cache: array<u32> (storage)              (capacity, kv_dim) f32, or (capacity, kv_dim / 2) f16 pairs; ROPE only (else out)
//   9 v_cache: array<u32> (storage)              as k_cache
//  10 next_g:  array<vec4<f32>, 4096> (uniform)  (out_offset + rows,) the next RMSNorm's weights, zero-padded; NEXT_NORM only (else x)
//  11 xg:      array<f32> (storage)              (out_offset + rows,) out * next_g; NEXT_NORM only (else out)
//
// One thread per row, 64 rows per workgroup, f32 accumulation, no barriers.
// x is a uniform buffer: every thread reads the same x[c] (software
// adapters still gather it thread by thread where its address changes in a
// loop, hence the subgroup build). F32 and F16 read 16 bytes at a time at
// any alignment (4 or 8 values), Q8_0, Q4_0, Q4_1 and IQ4_NL a texel of a
// group's scales and then each block's texels (regrouped on upload). The
// hot loops take four texels (F32, F16) or a whole group of blocks an
// iteration: on lavapipe an iteration's own cost is about a texel's work
// (Q4_1 projections 15-20 % faster than a block an iteration). Q5_0
// and Q5_1 a block at a time, Q4_K a
// texel at a time, the other types 8 values at a time (dequant.wgsl's x8
// functions), and so do float rows' tails. Grids of
// more than 65535 workgroups spill into y.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var w_up: texture_2d<u32>;
@group(0) @binding(5) var<uniform> residual: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> step: RopeStep;
// Only read; read_write so that other builds can bind `out` here.
@group(0) @binding(7) var<storage, read_write> table: array<f32>;
@group(0) @binding(8) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(9) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(10) var<uniform> next_g: array<vec4<f32>, 4096>;
@group(0) @binding(11) var<storage, read_write> xg: array<f32>;

// Whether the epilogue rotates and appends (the QKV of a decode step).
override ROPE: bool = false;

// prelude.wgsl's Step.
struct RopeStep {
    pos: u32,
    n: u32,
    page: u32,
}

// Each thread's result, for its pair's other thread (ROPE).
var<workgroup> results: array<f32, 64>;

// Whether the input is x * g and the sum scaled by 1 / rms(residual) (one
// pipeline each way).
override NORM: bool = false;

// Whether the projection is a SwiGLU pair (params.mode, as a constant).
override SWIGLU: bool = false;

// Whether a residual add's epilogue also writes xg = out * next_g.
override NEXT_NORM: bool = false;

// The up projection's storage type (SwiGLU), as DTYPE (dequant.wgsl).
override UP_DTYPE: u32 = DTYPE_F32;

// W[row] . x for the row whose bytes start at `row` of `tex`. Rows on a
// texel boundary (the common case) fetch whole texels: decided from the row
// size, the same for every thread, so adapters know the loops and x's
// addresses are uniform (scalar loads instead of per-lane gathers).
fn row_dot(tex: texture_2d<u32>, dtype: u32, row: u32, row_bytes: u32, cols: u32) -> f32 {
    let aligned = row_bytes % 16u == 0u;
    var acc = vec4<f32>(0.0);
    var done = 0u; // values handled 16 bytes at a time
    switch dtype {
        case DTYPE_F32: {
            if aligned {
                // Four texels an iteration (a loop iteration costs software
                // adapters about as much as the work of a texel), then the rest.
                let n = cols / 8u * 2u;
                let t = row / 16u;
                for (var k = 0u; k < n / 4u * 4u; k += 4u) {
                    acc += bitcast<vec4<f32>>(texel(tex, t + k)) * input(k);
                    acc += bitcast<vec4<f32>>(texel(tex, t + k + 1u)) * input(k + 1u);
                    acc += bitcast<vec4<f32>>(texel(tex, t + k + 2u)) * input(k + 2u);
                    acc += bitcast<vec4<f32>>(texel(tex, t + k + 3u)) * input(k + 3u);
                }
                for (var k = n / 4u * 4u; k < n; k++) {
                    acc += bitcast<vec4<f32>>(texel(tex, t + k)) * input(k);
                }
            } else {
                for (var k = 0u; k < cols / 8u * 2u; k++) {
                    acc += bitcast<vec4<f32>>(words_at(tex, row + 16u * k)) * input(k);
                }
            }
            done = cols / 8u * 8u;
        }
        case DTYPE_F16: {
            if aligned {
                // Four texels an iteration, as F32's.
                let n = cols / 8u;
                let t = row / 16u;
                for (var k = 0u; k < n / 4u * 4u; k += 4u) {
                    acc = f16_add(acc, texel(tex, t + k), k);
                    acc = f16_add(acc, texel(tex, t + k + 1u), k + 1u);
                    acc = f16_add(acc, texel(tex, t + k + 2u), k + 2u);
                    acc = f16_add(acc, texel(tex, t + k + 3u), k + 3u);
                }
                for (var k = n / 4u * 4u; k < n; k++) {
                    acc = f16_add(acc, texel(tex, t + k), k);
                }
            } else {
                for (var k = 0u; k < cols / 8u; k++) {
                    let v = words_at(tex, row + 16u * k);
                    acc += vec4(unpack2x16float(v.x), unpack2x16float(v.y)) * input(2u * k);
                    acc += vec4(unpack2x16float(v.z), unpack2x16float(v.w)) * input(2u * k + 1u);
                }
            }
            done = cols / 8u * 8u;
        }
        case DTYPE_Q8_0: {
            // Groups of 8 blocks (dequant.wgsl): a texel of their f16
            // scales, then 32 x i8 a block (2 texels). A whole group an
            // iteration (a loop iteration costs software adapters about
            // as much as a block's work), then the last group's blocks.
            let blocks = cols / 32u;
            for (var g = 0u; g < blocks / 8u; g++) {
                let t0 = row / 16u + 17u * g;
                let head = texel(tex, t0);
                acc += q8_0_term(tex, head, t0, 0u, 8u * g);
                acc += q8_0_term(tex, head, t0, 1u, 8u * g + 1u);
                acc += q8_0_term(tex, head, t0, 2u, 8u * g + 2u);
                acc += q8_0_term(tex, head, t0, 3u, 8u * g + 3u);
                acc += q8_0_term(tex, head, t0, 4u, 8u * g + 4u);
                acc += q8_0_term(tex, head, t0, 5u, 8u * g + 5u);
                acc += q8_0_term(tex, head, t0, 6u, 8u * g + 6u);
                acc += q8_0_term(tex, head, t0, 7u, 8u * g + 7u);
            }
            if blocks % 8u != 0u {
                let g = blocks / 8u;
                let t0 = row / 16u + 17u * g;
                let head = texel(tex, t0);
                for (var j = 0u; j < blocks % 8u; j++) {
                    acc += q8_0_term(tex, head, t0, j, 8u * g + j);
                }
            }
            done = cols;
        }
        case DTYPE_Q4_0, DTYPE_IQ4_NL: {
            // Groups of 8 blocks: a texel of their f16 scales, then 16 bytes
            // of nibbles a block (low: values 0..16, high: 16..32): Q4_0's
            // values q - 8, IQ4_NL's its 16 levels.
            // A whole group an iteration, as Q8_0's.
            let blocks = cols / 32u;
            for (var g = 0u; g < blocks / 8u; g++) {
                let t0 = row / 16u + 9u * g;
                let head = texel(tex, t0);
                acc += q4_0_term(tex, dtype, head, t0, 0u, 8u * g);
                acc += q4_0_term(tex, dtype, head, t0, 1u, 8u * g + 1u);
                acc += q4_0_term(tex, dtype, head, t0, 2u, 8u * g + 2u);
                acc += q4_0_term(tex, dtype, head, t0, 3u, 8u * g + 3u);
                acc += q4_0_term(tex, dtype, head, t0, 4u, 8u * g + 4u);
                acc += q4_0_term(tex, dtype, head, t0, 5u, 8u * g + 5u);
                acc += q4_0_term(tex, dtype, head, t0, 6u, 8u * g + 6u);
                acc += q4_0_term(tex, dtype, head, t0, 7u, 8u * g + 7u);
            }
            if blocks % 8u != 0u {
                let g = blocks / 8u;
                let t0 = row / 16u + 9u * g;
                let head = texel(tex, t0);
                for (var j = 0u; j < blocks % 8u; j++) {
                    acc += q4_0_term(tex, dtype, head, t0, j, 8u * g + j);
                }
            }
            done = cols;
        }
        case DTYPE_Q4_K: {
            // Blocks of 144 bytes (whole texels): f16 d and dmin, 12 bytes of
            // 6-bit sub-block scales and mins, then 128 bytes of nibbles: per 64
            // values, 32 bytes whose low nibbles are the first 32 values and
            // high nibbles the next 32. value = d * scale * q - dmin * min.
            if aligned {
                for (var b = 0u; b < cols / 256u; b++) {
                    let t0 = (row + 144u * b) / 16u;
                    let head = texel(tex, t0);
                    let dm = unpack2x16float(head.x);
                    for (var j = 0u; j < 4u; j++) {
                        let lo_sm = q4k_scale_min_of(head, 2u * j);
                        let hi_sm = q4k_scale_min_of(head, 2u * j + 1u);
                        var lo = vec4<f32>(0.0);
                        var hi = vec4<f32>(0.0);
                        var x_lo = vec4<f32>(0.0);
                        var x_hi = vec4<f32>(0.0);
                        for (var h = 0u; h < 2u; h++) {
                            let q = texel(tex, t0 + 1u + 2u * j + h);
                            let xi = 64u * b + 16u * j + 4u * h;
                            for (var k = 0u; k < 4u; k++) {
                                let xl = input(xi + k);
                                let xh = input(xi + 8u + k);
                                lo += nibbles(q[k]) * xl;
                                hi += nibbles(q[k] >> 4u) * xh;
                                x_lo += xl;
                                x_hi += xh;
                            }
                        }
                        acc += dm.x * (lo_sm.x * lo + hi_sm.x * hi) - dm.y * (lo_sm.y * x_lo + hi_sm.y * x_hi);
                    }
                }
                done = cols;
            }
        }
        case DTYPE_BF16: {
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(bf16x8(tex, row, 8u * g), g);
            }
            done = cols / 8u * 8u;
        }
        case DTYPE_Q4_1: {
            // Groups of 4 blocks: a texel of their f16 (d, m) pairs, then 16
            // bytes of nibbles a block as Q4_0's. A whole group an
            // iteration, as Q8_0's.
            let blocks = cols / 32u;
            let t = row / 16u;
            for (var g = 0u; g < blocks / 4u; g++) {
                let head = texel(tex, t + 5u * g);
                acc += q4_1_term(tex, head, t + 5u * g, 0u, 4u * g);
                acc += q4_1_term(tex, head, t + 5u * g, 1u, 4u * g + 1u);
                acc += q4_1_term(tex, head, t + 5u * g, 2u, 4u * g + 2u);
                acc += q4_1_term(tex, head, t + 5u * g, 3u, 4u * g + 3u);
            }
            if blocks % 4u != 0u {
                let g = blocks / 4u;
                let head = texel(tex, t + 5u * g);
                for (var j = 0u; j < blocks % 4u; j++) {
                    acc += q4_1_term(tex, head, t + 5u * g, j, 4u * g + j);
                }
            }
            done = cols;
        }
        case DTYPE_Q5_0: {
            // Blocks of 22 bytes: f16 d, u32 of fifth bits (bit v: value v),
            // 16 bytes of nibbles as Q4_0's. value = d (q - 16).
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 22u * b;
                let head = words_at(tex, at);
                let qh = (head.x >> 16u) | (head.y << 16u);
                let q = words_at(tex, at + 6u);
                var block = vec4<f32>(0.0);
                for (var k = 0u; k < 4u; k++) {
                    let lo = nibbles(q[k]) + fifths(qh, 4u * k) - 16.0;
                    let hi = nibbles(q[k] >> 4u) + fifths(qh, 16u + 4u * k) - 16.0;
                    block += lo * input(8u * b + k) + hi * input(8u * b + 4u + k);
                }
                acc += unpack2x16float(head.x).x * block;
            }
            done = cols;
        }
        case DTYPE_Q5_1: {
            // Blocks of 24 bytes: f16 d and m, u32 of fifth bits, nibbles. value = d q + m.
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 24u * b;
                let head = words_at(tex, at);
                let dm = unpack2x16float(head.x);
                let q = words_at(tex, at + 8u);
                var block = vec4<f32>(0.0);
                var xs = vec4<f32>(0.0);
                for (var k = 0u; k < 4u; k++) {
                    let xl = input(8u * b + k);
                    let xh = input(8u * b + 4u + k);
                    block += (nibbles(q[k]) + fifths(head.y, 4u * k)) * xl;
                    block += (nibbles(q[k] >> 4u) + fifths(head.y, 16u + 4u * k)) * xh;
                    xs += xl + xh;
                }
                acc += dm.x * block + dm.y * xs;
            }
            done = cols;
        }
        case DTYPE_IQ4_XS: {
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(iq4_xsx8(tex, row, 8u * g), g);
            }
            done = cols;
        }
        case DTYPE_Q2_K: {
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(q2_kx8(tex, row, 8u * g), g);
            }
            done = cols;
        }
        case DTYPE_Q3_K: {
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(q3_kx8(tex, row, 8u * g), g);
            }
            done = cols;
        }
        case DTYPE_Q5_K: {
            // Blocks of 176 bytes (whole texels): Q4_K's first texel, 32
            // bytes of fifth bits (byte l's bit 2 j: value 64 j + l's, bit
            // 2 j + 1: value 64 j + 32 + l's), then Q4_K's 128 bytes of
            // nibbles. value = d * scale * (q + 16 fifth) - dmin * min.
            if aligned {
                for (var b = 0u; b < cols / 256u; b++) {
                    let t0 = (row + 176u * b) / 16u;
                    let head = texel(tex, t0);
                    let dm = unpack2x16float(head.x);
                    let fifths = array(texel(tex, t0 + 1u), texel(tex, t0 + 2u));
                    for (var j = 0u; j < 4u; j++) {
                        let lo_sm = q4k_scale_min_of(head, 2u * j);
                        let hi_sm = q4k_scale_min_of(head, 2u * j + 1u);
                        var lo = vec4<f32>(0.0);
                        var hi = vec4<f32>(0.0);
                        var x_lo = vec4<f32>(0.0);
                        var x_hi = vec4<f32>(0.0);
                        for (var h = 0u; h < 2u; h++) {
                            let q = texel(tex, t0 + 3u + 2u * j + h);
                            let xi = 64u * b + 16u * j + 4u * h;
                            for (var k = 0u; k < 4u; k++) {
                                let xl = input(xi + k);
                                let xh = input(xi + 8u + k);
                                let f = u8x4(fifths[h][k]) >> vec4(2u * j);
                                lo += (nibbles(q[k]) + vec4<f32>((f & vec4(1u)) << vec4(4u))) * xl;
                                hi += (nibbles(q[k] >> 4u) + vec4<f32>(((f >> vec4(1u)) & vec4(1u)) << vec4(4u))) * xh;
                                x_lo += xl;
                                x_hi += xh;
                            }
                        }
                        acc += dm.x * (lo_sm.x * lo + hi_sm.x * hi) - dm.y * (lo_sm.y * x_lo + hi_sm.y * x_hi);
                    }
                }
                done = cols;
            }
        }
        case DTYPE_Q6_K: {
            // Blocks of 210 bytes (any 2-byte alignment): 128 bytes of
            // low nibbles (ql), 64 of high bit pairs (qh), 16 i8 scales,
            // f16 d. Each half of 128 values: ql bytes l and l + 32 (low,
            // then high nibbles) and qh byte l's 4 bit pairs give values
            // l, l + 32, l + 64, l + 96; 16 of each per scale. value =
            // d * scale * (q - 32). 16 bytes of ql, ql + 32 and qh a step:
            // 64 values read whole, against 8 bytes at a time in q6_kx8.
            for (var b = 0u; b < cols / 256u; b++) {
                let at = row + 210u * b;
                let scales = words_at(tex, at + 192u);
                let d = f16_at(tex, at + 208u);
                for (var half = 0u; half < 2u; half++) {
                    for (var j = 0u; j < 2u; j++) {
                        let lo = words_at(tex, at + 64u * half + 16u * j);
                        let hi = words_at(tex, at + 64u * half + 32u + 16u * j);
                        let qh = words_at(tex, at + 128u + 32u * half + 16u * j);
                        var s0 = vec4<f32>(0.0);
                        var s1 = vec4<f32>(0.0);
                        var s2 = vec4<f32>(0.0);
                        var s3 = vec4<f32>(0.0);
                        for (var w = 0u; w < 4u; w++) {
                            let k = 64u * b + 32u * half + 4u * j + w;
                            let l = u8x4(lo[w]);
                            let h = u8x4(hi[w]);
                            let p = u8x4(qh[w]);
                            s0 += (vec4<f32>((l & vec4(15u)) | ((p & vec4(3u)) << vec4(4u))) - 32.0) * input(k);
                            s1 += (vec4<f32>((h & vec4(15u)) | (((p >> vec4(2u)) & vec4(3u)) << vec4(4u))) - 32.0) * input(k + 8u);
                            s2 += (vec4<f32>((l >> vec4(4u)) | (((p >> vec4(4u)) & vec4(3u)) << vec4(4u))) - 32.0) * input(k + 16u);
                            s3 += (vec4<f32>((h >> vec4(4u)) | ((p >> vec4(6u)) << vec4(4u))) - 32.0) * input(k + 24u);
                        }
                        let sc = 8u * half + j;
                        acc += d * (i8_of(scales, sc) * s0 + i8_of(scales, sc + 2u) * s1 + i8_of(scales, sc + 4u) * s2 + i8_of(scales, sc + 6u) * s3);
                    }
                }
            }
            done = cols;
        }
        default: {}
    }
    // Float rows' last, partial group.
    for (var c = done; c < cols; c += 8u) {
        acc += dot8(x8_to(tex, dtype, row, c, cols), c / 8u);
    }
    return acc.x + acc.y + acc.z + acc.w;
}

// (W[row] . x, W_up[row] . x) for gate and up rows of one type (Q4_1,
// Q8_0, or F16 rows on a texel boundary) at the same bytes `row` of w and
// w_up, each input read once for both: row_dot's operations in its order,
// so each sum is row_dot's bit for bit.
fn pair_dot(row: u32) -> vec2<f32> {
    let cols = params.cols;
    // Gate's sum, then up's.
    var both = mat2x4(vec4<f32>(0.0), vec4<f32>(0.0));
    switch DTYPE {
        case DTYPE_F16: {
            let n = cols / 8u;
            let t = row / 16u;
            for (var k = 0u; k < n / 4u * 4u; k += 4u) {
                both = f16_pair_add(both, t + k, k);
                both = f16_pair_add(both, t + k + 1u, k + 1u);
                both = f16_pair_add(both, t + k + 2u, k + 2u);
                both = f16_pair_add(both, t + k + 3u, k + 3u);
            }
            for (var k = n / 4u * 4u; k < n; k++) {
                both = f16_pair_add(both, t + k, k);
            }
            for (var c = cols / 8u * 8u; c < cols; c += 8u) {
                both[0] += dot8(x8_to(w, DTYPE, row, c, cols), c / 8u);
                both[1] += dot8(x8_to(w_up, DTYPE, row, c, cols), c / 8u);
            }
        }
        case DTYPE_Q8_0: {
            let blocks = cols / 32u;
            for (var g = 0u; g < blocks / 8u; g++) {
                let t0 = row / 16u + 17u * g;
                let head = texel(w, t0);
                let head_up = texel(w_up, t0);
                both += q8_0_pair_term(head, head_up, t0, 0u, 8u * g);
                both += q8_0_pair_term(head, head_up, t0, 1u, 8u * g + 1u);
                both += q8_0_pair_term(head, head_up, t0, 2u, 8u * g + 2u);
                both += q8_0_pair_term(head, head_up, t0, 3u, 8u * g + 3u);
                both += q8_0_pair_term(head, head_up, t0, 4u, 8u * g + 4u);
                both += q8_0_pair_term(head, head_up, t0, 5u, 8u * g + 5u);
                both += q8_0_pair_term(head, head_up, t0, 6u, 8u * g + 6u);
                both += q8_0_pair_term(head, head_up, t0, 7u, 8u * g + 7u);
            }
            if blocks % 8u != 0u {
                let g = blocks / 8u;
                let t0 = row / 16u + 17u * g;
                let head = texel(w, t0);
                let head_up = texel(w_up, t0);
                for (var j = 0u; j < blocks % 8u; j++) {
                    both += q8_0_pair_term(head, head_up, t0, j, 8u * g + j);
                }
            }
        }
        default: {
            // Q4_1: groups of 4 blocks, as row_dot.
            let blocks = cols / 32u;
            let t = row / 16u;
            for (var g = 0u; g < blocks / 4u; g++) {
                let t0 = t + 5u * g;
                let head = texel(w, t0);
                let head_up = texel(w_up, t0);
                both += q4_1_pair_term(head, head_up, t0, 0u, 4u * g);
                both += q4_1_pair_term(head, head_up, t0, 1u, 4u * g + 1u);
                both += q4_1_pair_term(head, head_up, t0, 2u, 4u * g + 2u);
                both += q4_1_pair_term(head, head_up, t0, 3u, 4u * g + 3u);
            }
            if blocks % 4u != 0u {
                let t0 = t + 5u * (blocks / 4u);
                let head = texel(w, t0);
                let head_up = texel(w_up, t0);
                for (var j = 0u; j < blocks % 4u; j++) {
                    both += q4_1_pair_term(head, head_up, t0, j, 4u * (blocks / 4u) + j);
                }
            }
        }
    }
    let acc = both[0];
    let acc_up = both[1];
    return vec2(acc.x + acc.y + acc.z + acc.w, acc_up.x + acc_up.y + acc_up.z + acc_up.w);
}

// acc plus F16 texel v (values 8 k .. 8 k + 8 of a row) times the input's.
fn f16_add(acc: vec4<f32>, v: vec4<u32>, k: u32) -> vec4<f32> {
    return acc + vec4(unpack2x16float(v.x), unpack2x16float(v.y)) * input(2u * k)
        + vec4(unpack2x16float(v.z), unpack2x16float(v.w)) * input(2u * k + 1u);
}

// f16_add of w's and w_up's texel t at once, each input read once.
fn f16_pair_add(both: mat2x4<f32>, t: u32, k: u32) -> mat2x4<f32> {
    let v = texel(w, t);
    let u = texel(w_up, t);
    let x0 = input(2u * k);
    let x1 = input(2u * k + 1u);
    return mat2x4(
        both[0] + vec4(unpack2x16float(v.x), unpack2x16float(v.y)) * x0 + vec4(unpack2x16float(v.z), unpack2x16float(v.w)) * x1,
        both[1] + vec4(unpack2x16float(u.x), unpack2x16float(u.y)) * x0 + vec4(unpack2x16float(u.z), unpack2x16float(u.w)) * x1,
    );
}

// Block j (the b-th of the row) of the Q8_0 group whose scales texel is
// `head`, at texel t0, times the input.
fn q8_0_term(tex: texture_2d<u32>, head: vec4<u32>, t0: u32, j: u32, b: u32) -> vec4<f32> {
    var block = vec4<f32>(0.0);
    for (var h = 0u; h < 2u; h++) {
        let q = texel(tex, t0 + 1u + 2u * j + h);
        let x0 = 8u * b + 4u * h;
        block += i8x4(q.x) * input(x0) + i8x4(q.y) * input(x0 + 1u);
        block += i8x4(q.z) * input(x0 + 2u) + i8x4(q.w) * input(x0 + 3u);
    }
    return half_of(head, j) * block;
}

// q8_0_term of w's and w_up's block at once, each input read once.
fn q8_0_pair_term(head: vec4<u32>, head_up: vec4<u32>, t0: u32, j: u32, b: u32) -> mat2x4<f32> {
    var block = vec4<f32>(0.0);
    var block_up = vec4<f32>(0.0);
    for (var h = 0u; h < 2u; h++) {
        let q = texel(w, t0 + 1u + 2u * j + h);
        let qu = texel(w_up, t0 + 1u + 2u * j + h);
        let x0 = 8u * b + 4u * h;
        let xa = input(x0);
        let xb = input(x0 + 1u);
        let xc = input(x0 + 2u);
        let xd = input(x0 + 3u);
        block += i8x4(q.x) * xa + i8x4(q.y) * xb;
        block += i8x4(q.z) * xc + i8x4(q.w) * xd;
        block_up += i8x4(qu.x) * xa + i8x4(qu.y) * xb;
        block_up += i8x4(qu.z) * xc + i8x4(qu.w) * xd;
    }
    return mat2x4(half_of(head, j) * block, half_of(head_up, j) * block_up);
}

// Block j (the b-th of the row) of the Q4_0 or IQ4_NL group whose scales
// texel is `head`, at texel t0, times the input.
fn q4_0_term(tex: texture_2d<u32>, dtype: u32, head: vec4<u32>, t0: u32, j: u32, b: u32) -> vec4<f32> {
    let q = texel(tex, t0 + 1u + j);
    var block = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let lo = levels(dtype, q[k]);
        let hi = levels(dtype, q[k] >> 4u);
        block += lo * input(8u * b + k) + hi * input(8u * b + 4u + k);
    }
    return half_of(head, j) * block;
}

// Block j (the b-th of the row) of the Q4_1 group whose (d, m) texel is
// `head`, at texel t0, times the input: d (q . x) + m (sum of x).
fn q4_1_term(tex: texture_2d<u32>, head: vec4<u32>, t0: u32, j: u32, b: u32) -> vec4<f32> {
    let dm = unpack2x16float(head[j]);
    let q = texel(tex, t0 + 1u + j);
    var block = vec4<f32>(0.0);
    var xs = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let xl = input(8u * b + k);
        let xh = input(8u * b + 4u + k);
        block += nibbles(q[k]) * xl + nibbles(q[k] >> 4u) * xh;
        xs += xl + xh;
    }
    return dm.x * block + dm.y * xs;
}

// q4_1_term of w's and w_up's block at once, each input read once.
fn q4_1_pair_term(head: vec4<u32>, head_up: vec4<u32>, t0: u32, j: u32, b: u32) -> mat2x4<f32> {
    let dm = unpack2x16float(head[j]);
    let dm_up = unpack2x16float(head_up[j]);
    let q = texel(w, t0 + 1u + j);
    let qu = texel(w_up, t0 + 1u + j);
    var block = vec4<f32>(0.0);
    var block_up = vec4<f32>(0.0);
    var xs = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let xl = input(8u * b + k);
        let xh = input(8u * b + 4u + k);
        block += nibbles(q[k]) * xl + nibbles(q[k] >> 4u) * xh;
        block_up += nibbles(qu[k]) * xl + nibbles(qu[k] >> 4u) * xh;
        xs += xl + xh;
    }
    return mat2x4(dm.x * block + dm.y * xs, dm_up.x * block_up + dm_up.y * xs);
}

// Signed byte i of 16 bytes.
fn i8_of(q: vec4<u32>, i: u32) -> f32 {
    return f32(bitcast<i32>(((q[i / 4u] >> ((i % 4u) * 8u)) & 0xffu) << 24u) >> 24);
}

// Values 8 g .. 8 g + 8 of a row times the input's.
fn dot8(m: mat2x4<f32>, g: u32) -> vec4<f32> {
    return m[0] * input(2u * g) + m[1] * input(2u * g + 1u);
}

// Bits i .. i + 4 of h, each as 16 or 0 (the fifth bit of a 5-bit value).
fn fifths(h: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(((vec4(h >> i) >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) << vec4(4u));
}

// The values of the low nibbles of a word's 4 bytes: Q4_0's q - 8, or
// IQ4_NL's levels.
fn levels(dtype: u32, w: u32) -> vec4<f32> {
    let n = vec4(w, w >> 8u, w >> 16u, w >> 24u) & vec4(15u);
    if dtype == DTYPE_IQ4_NL {
        return iq4nl(n);
    }
    return vec4<f32>(n) - 8.0;
}

// The low nibbles of a word's 4 bytes, as f32.
fn nibbles(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4(w, w >> 8u, w >> 16u, w >> 24u) & vec4(15u));
}

// Q4_K sub-block s's (scale, min) from a block's first texel (words 1..3
// hold the 12 scale bytes), as q4k_scale_min in dequant.wgsl.
fn q4k_scale_min_of(head: vec4<u32>, s: u32) -> vec2<f32> {
    let lo = s < 4u;
    let a = q4k_byte(head, select(s + 4u, s, lo));       // scale (low) or its low bits
    let m = q4k_byte(head, s + 4u);
    let up = q4k_byte(head, select(s - 4u, s, lo));     // high bits of the scale
    let mu = q4k_byte(head, s);                         // high bits of the min
    let scale = select((a & 0xfu) | ((up >> 6u) << 4u), a & 63u, lo);
    let min = select((m >> 4u) | ((mu >> 6u) << 4u), m & 63u, lo);
    return vec2(f32(scale), f32(min));
}

fn q4k_byte(head: vec4<u32>, i: u32) -> u32 {
    return (head[1u + i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
}

// Row `lid` of workgroup `group` (its index in the grid). Every thread runs
// the loops, those past the last row on row 0 (the subgroup build's threads
// share their input reads), and only rows of the matrix are stored.
fn row(group: u32, lid: u32) {
    let r = group * 64u + lid;
    let computed = select(0u, r, r < params.rows);
    // RMSNorm: every thread gets the same sum of squares of the uniform residual x.
    var scale = 1.0;
    if NORM {
        scale = 1.0 / sqrt(sum_squares((params.cols + 3u) / 4u) / f32(params.cols) + params.eps);
    }
    var a = 0.0;
    var b = 0.0;
    let aligned = params.row_bytes % 16u == 0u;
    if SWIGLU && UP_DTYPE == DTYPE && (DTYPE == DTYPE_Q4_1 || DTYPE == DTYPE_Q8_0 || (DTYPE == DTYPE_F16 && aligned)) {
        // Gate and up of one type: each input read once for both rows.
        let ab = scale * pair_dot(computed * params.row_bytes);
        a = ab.x;
        b = ab.y;
    } else {
        a = scale * row_dot(w, DTYPE, computed * params.row_bytes, params.row_bytes, params.cols);
        if SWIGLU {
            b = scale * row_dot(w_up, UP_DTYPE, computed * params.up_row_bytes, params.up_row_bytes, params.cols);
        }
    }
    if ROPE {
        // Chunks and workgroups start on even rows: a pair is two neighbours.
        results[lid] = a;
        workgroupBarrier();
        if r < params.rows && lid % 2u == 0u {
            rope_append(params.out_offset + r, vec2(a, results[lid + 1u]));
        }
        return;
    }
    if r < params.rows {
        let o = params.out_offset + r;
        project(o, a, b);
        if NEXT_NORM {
            xg[o] = out[o] * next_g[o / 4u][o % 4u];
        }
    }
}

// Rows o and o + 1 (o even) of a QKV projection, as rope_append.wgsl
// stores them for one token at position step.pos: q rotated into `out`, k
// rotated and v into the caches' row step.pos (f32, or an f16 pair a word).
fn rope_append(o: u32, v: vec2<f32>) {
    let pos = step.pos;
    let kv = params.kv_dim;
    if o < params.q_dim {
        let q = rotate(v, angle(pos, o));
        out[o] = q.x;
        out[o + 1u] = q.y;
        return;
    }
    let is_k = o < params.q_dim + kv;
    let c = select(o - params.q_dim - kv, o - params.q_dim, is_k);
    let value = select(v, rotate(v, angle(pos, c)), is_k);
    // The host never steps past capacity; the check keeps a bad position
    // from landing outside the cache.
    if params.kv_dtype == 0u {
        // f32 (KvDtype F32)
        let at = pos * kv + c;
        if at + 1u >= arrayLength(&k_cache) {
            return;
        }
        if is_k {
            k_cache[at] = bitcast<u32>(value.x);
            k_cache[at + 1u] = bitcast<u32>(value.y);
        } else {
            v_cache[at] = bitcast<u32>(value.x);
            v_cache[at + 1u] = bitcast<u32>(value.y);
        }
    } else {
        // f16 pairs (KvDtype F16)
        let at = pos * (kv / 2u) + c / 2u;
        if at >= arrayLength(&k_cache) {
            return;
        }
        if is_k {
            k_cache[at] = pack2x16float(value);
        } else {
            v_cache[at] = pack2x16float(value);
        }
    }
}

// As rope_append.wgsl: a pair rotated by (cos, sin), and the (cos, sin) of
// pair (c, c + 1) of a head at `pos`.
fn rotate(a: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2(a.x * cs.x - a.y * cs.y, a.x * cs.y + a.y * cs.x);
}

fn angle(pos: u32, c: u32) -> vec2<f32> {
    let at = 2u * (pos * (params.head_size / 2u) + (c % params.head_size) / 2u);
    return vec2(table[at], table[at + 1u]);
}
