// Matrix-vector product (projection) for one token, the part both builds
// share (matvec.wgsl reads the inputs in every thread, matvec_subgroup.wgsl
// shares each read across a subgroup; either defines `x4`, `xg4`,
// `sum_squares` and `main`): for each row r of a weight matrix (or one row-chunk of it)
// stored as any dtype of dequant.wgsl, whose source is prepended to this
// file, by `mode`:
//   MODE_SET     out[out_offset + r]  = W[r] . x
//   MODE_ADD     out[out_offset + r] += W[r] . x      (residual add in the epilogue)
//   MODE_SWIGLU  out[out_offset + r]  = silu(W[r] . x) * (W_up[r] . x)  (gate, up and SiLU in one pass)
// Built with the override NORM = true, x is first replaced by rmsnorm(x) * g
// (the RMSNorm before the projection, its sum of squares computed by every
// thread from the uniform x, or by a subgroup together: one dispatch fewer
// per norm; a constant, so the plain pipeline pays nothing for it).
//
// Bindings (group 0):
//   0 params: Params (uniform, dequant.wgsl)    { rows, cols, row_bytes, out_offset, mode, up_row_bytes,
//                                                 out_stride, x_stride, first_token, tile (matmul only), eps (NORM only) }
//   1 w:      texture_2d<u32>                   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 x:      array<vec4<f32>, 4096> (uniform)  (cols,) zero-padded to 16384 values
//   3 out:    array<f32> (storage)              (out_offset + rows,)
//   4 w_up:   texture_2d<u32>                   (rows, up_row_bytes) raw bytes; MODE_SWIGLU only (else w again)
//   5 g:      array<vec4<f32>, 4096> (uniform)  (cols,) RMSNorm weights, zero-padded; NORM only (else x again)
//
// One thread per row, 64 rows per workgroup, f32 accumulation, no barriers.
// x is a uniform buffer: every thread reads the same x[c] (software
// adapters still gather it thread by thread where its address changes in a
// loop, hence the subgroup build). F32, F16, Q8_0 and Q4_0
// read 16 bytes at a time at any alignment (4 or 8 values, half a block or a
// block; Q4_1, Q5_0, Q5_1 and IQ4_NL likewise, a block at a time), Q4_K a
// texel at a time, the other types 8 values at a time (dequant.wgsl's x8
// functions), and so do float rows' tails. Grids of
// more than 65535 workgroups spill into y.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var w_up: texture_2d<u32>;
@group(0) @binding(5) var<uniform> g: array<vec4<f32>, 4096>;

// Whether the input is RMS-normalised first (one pipeline each way).
override NORM: bool = false;

// The up projection's storage type (SwiGLU), as DTYPE (dequant.wgsl).
override UP_DTYPE: u32 = DTYPE_F32;

// x[k], times g[k] when the input is normalised (the scale is applied to
// the sum); x4 and xg4 are the build's reads (matvec.wgsl,
// matvec_subgroup.wgsl).
fn input(k: u32) -> vec4<f32> {
    if NORM {
        return xg4(k);
    }
    return x4(k);
}

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
                for (var k = 0u; k < cols / 8u * 2u; k++) {
                    acc += bitcast<vec4<f32>>(texel(tex, row / 16u + k)) * input(k);
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
                for (var k = 0u; k < cols / 8u; k++) {
                    let v = texel(tex, row / 16u + k);
                    acc += vec4(unpack2x16float(v.x), unpack2x16float(v.y)) * input(2u * k);
                    acc += vec4(unpack2x16float(v.z), unpack2x16float(v.w)) * input(2u * k + 1u);
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
            // Blocks of 34 bytes: f16 scale, 32 x i8.
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 34u * b;
                var block = vec4<f32>(0.0);
                for (var h = 0u; h < 2u; h++) {
                    let q = words_at(tex, at + 2u + 16u * h);
                    let x0 = 8u * b + 4u * h;
                    block += i8x4(q.x) * input(x0) + i8x4(q.y) * input(x0 + 1u);
                    block += i8x4(q.z) * input(x0 + 2u) + i8x4(q.w) * input(x0 + 3u);
                }
                acc += f16_at(tex, at) * block;
            }
            done = cols;
        }
        case DTYPE_Q4_0: {
            // Blocks of 18 bytes: f16 scale, 16 bytes of nibbles (low: values 0..16, high: 16..32).
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 18u * b;
                let q = words_at(tex, at + 2u);
                var block = vec4<f32>(0.0);
                for (var k = 0u; k < 4u; k++) {
                    let w = q[k];
                    let lo = vec4<f32>(vec4(w, w >> 8u, w >> 16u, w >> 24u) & vec4(15u)) - 8.0;
                    let hi = vec4<f32>(vec4(w >> 4u, w >> 12u, w >> 20u, w >> 28u) & vec4(15u)) - 8.0;
                    block += lo * input(8u * b + k) + hi * input(8u * b + 4u + k);
                }
                acc += f16_at(tex, at) * block;
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
            // Blocks of 20 bytes: f16 d and m, 16 bytes of nibbles as Q4_0's.
            // d q + m summed: d (q . x) + m (sum of x).
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 20u * b;
                let dm = unpack2x16float(words_at(tex, at).x);
                let q = words_at(tex, at + 4u);
                var block = vec4<f32>(0.0);
                var xs = vec4<f32>(0.0);
                for (var k = 0u; k < 4u; k++) {
                    let xl = input(8u * b + k);
                    let xh = input(8u * b + 4u + k);
                    block += nibbles(q[k]) * xl + nibbles(q[k] >> 4u) * xh;
                    xs += xl + xh;
                }
                acc += dm.x * block + dm.y * xs;
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
        case DTYPE_IQ4_NL: {
            // Blocks of 18 bytes: f16 d, nibbles indexing IQ4_NL's 16 levels.
            for (var b = 0u; b < cols / 32u; b++) {
                let at = row + 18u * b;
                let q = words_at(tex, at + 2u);
                var block = vec4<f32>(0.0);
                for (var k = 0u; k < 4u; k++) {
                    let lo = iq4nl(vec4(q[k], q[k] >> 8u, q[k] >> 16u, q[k] >> 24u) & vec4(15u));
                    let hi = iq4nl(vec4(q[k] >> 4u, q[k] >> 12u, q[k] >> 20u, q[k] >> 28u) & vec4(15u));
                    block += lo * input(8u * b + k) + hi * input(8u * b + 4u + k);
                }
                acc += f16_at(tex, at) * block;
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
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(q5_kx8(tex, row, 8u * g), g);
            }
            done = cols;
        }
        case DTYPE_Q6_K: {
            for (var g = 0u; g < cols / 8u; g++) {
                acc += dot8(q6_kx8(tex, row, 8u * g), g);
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

// Values 8 g .. 8 g + 8 of a row times the input's.
fn dot8(m: mat2x4<f32>, g: u32) -> vec4<f32> {
    return m[0] * input(2u * g) + m[1] * input(2u * g + 1u);
}

// Bits i .. i + 4 of h, each as 16 or 0 (the fifth bit of a 5-bit value).
fn fifths(h: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(((vec4(h >> i) >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) << vec4(4u));
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
    // RMSNorm: every thread gets the same sum of squares of the uniform x.
    var scale = 1.0;
    if NORM {
        scale = 1.0 / sqrt(sum_squares((params.cols + 3u) / 4u) / f32(params.cols) + params.eps);
    }
    let a = scale * row_dot(w, DTYPE, computed * params.row_bytes, params.row_bytes, params.cols);
    var b = 0.0;
    if params.mode == MODE_SWIGLU {
        b = scale * row_dot(w_up, UP_DTYPE, computed * params.up_row_bytes, params.up_row_bytes, params.cols);
    }
    if r < params.rows {
        project(params.out_offset + r, a, b);
    }
}
