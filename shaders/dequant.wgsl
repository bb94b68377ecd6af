// Weight decoding, prepended to matvec.wgsl, matmul.wgsl and embed.wgsl (not
// a kernel on its own). Weights are the model file's raw little-endian bytes: F32, F16,
// BF16, or GGML blocks (Q8_0, Q4_0, Q4_K, Q6_K), read at any byte alignment,
// decoded to f32. The bytes live in an rgba32uint texture used as linear
// memory, 16 bytes a texel and TEXELS_PER_ROW texels a texture row: software
// adapters (lavapipe) fetch texels several times faster than they load
// storage buffers, and GPUs read either at full speed. Every function takes
// the texture it reads, so a kernel can read two weight matrices.
//
// Bindings (group 0):
//   1 w: texture_2d<u32>   (ceil(bytes / 16 / TEXELS_PER_ROW), TEXELS_PER_ROW) texels of raw bytes, zero-padded

// Launch parameters of every kernel that reads a weight matrix (matvec,
// matmul, embed), matching `Params` in src/ops/matvec.rs: the matrix (or
// row-chunk) shape and storage, where its outputs go, and what to do with
// them (`mode`); then matmul's tile of tokens; then the epsilon of matvec's
// RMSNorm of its input (pipelines built with NORM).
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
    eps: f32,
}

// Projection modes (matvec.wgsl, matmul.wgsl).
const MODE_SET: u32 = 0u;
const MODE_ADD: u32 = 1u;
const MODE_SWIGLU: u32 = 2u;

// The projection epilogue (matvec, matmul; every kernel including this file
// binds `out`): out[o] = s, += s (a residual add) or silu(s) * u (SwiGLU,
// u the up projection) by `mode`. Callers own out[o]: in place is safe.
fn project(o: u32, s: f32, u: f32) {
    switch params.mode {
        case MODE_ADD: {
            out[o] += s;
        }
        case MODE_SWIGLU: {
            out[o] = s * (1.0 / (1.0 + exp(-s))) * u;
        }
        default: {
            out[o] = s;
        }
    }
}

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_BF16: u32 = 2u;
const DTYPE_Q8_0: u32 = 3u;
const DTYPE_Q4_0: u32 = 4u;
const DTYPE_Q4_K: u32 = 5u;
const DTYPE_Q6_K: u32 = 6u;

// Matches `TEXELS_PER_ROW` in src/ops/matvec.rs.
const TEXELS_PER_ROW: u32 = 4096u;

@group(0) @binding(1) var w: texture_2d<u32>;

// Texel t: bytes 16 t .. 16 t + 16.
fn texel(tex: texture_2d<u32>, t: u32) -> vec4<u32> {
    return textureLoad(tex, vec2<u32>(t % TEXELS_PER_ROW, t / TEXELS_PER_ROW), 0);
}

// 32-bit word i: bytes 4 i .. 4 i + 4.
fn word(tex: texture_2d<u32>, i: u32) -> u32 {
    return texel(tex, i >> 2u)[i & 3u];
}

// 16 bytes from byte i (any alignment) as 4 words: at most 2 texel fetches.
// Selects and shifts only: an array indexed at run time would become
// per-lane memory traffic on SIMD adapters.
fn words_at(tex: texture_2d<u32>, i: u32) -> vec4<u32> {
    let a = texel(tex, i / 16u);
    let s = i % 16u;
    if s == 0u {
        return a;
    }
    let b = texel(tex, i / 16u + 1u);
    // The 4 words from word `first` of a then b (lo), and the 4 after each (hi).
    let first = s / 4u;
    let l1 = vec4(a.yzw, b.x);
    let l2 = vec4(a.zw, b.xy);
    let l3 = vec4(a.w, b.xyz);
    let lo = select(select(select(a, l1, first == 1u), l2, first == 2u), l3, first == 3u);
    let hi = select(select(select(l1, l2, first == 1u), l3, first == 2u), b, first == 3u);
    let shift = vec4((s % 4u) * 8u);
    // Word-aligned starts take lo alone (a shift by 32 would wrap to 0).
    return select((lo >> shift) | (hi << (vec4(32u) - shift)), lo, shift == vec4(0u));
}

// The 4 signed bytes of a word, as f32, lowest byte first.
fn i8x4(q: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4(q << 24u, q << 16u, q << 8u, q));
    return vec4<f32>(v >> vec4(24u));
}

fn byte_at(tex: texture_2d<u32>, i: u32) -> u32 {
    return (word(tex, i >> 2u) >> ((i & 3u) * 8u)) & 0xffu;
}

fn i8_at(tex: texture_2d<u32>, i: u32) -> f32 {
    return f32(bitcast<i32>(byte_at(tex, i) << 24u) >> 24u);
}

fn f16_at(tex: texture_2d<u32>, i: u32) -> f32 {
    if (i & 1u) == 0u {
        return unpack2x16float(word(tex, i >> 2u) >> ((i & 2u) * 8u)).x;
    }
    return unpack2x16float(byte_at(tex, i) | (byte_at(tex, i + 1u) << 8u)).x;
}

// Q4_K sub-block j's (scale, min), 6 bits each (GGML's get_scale_min_k4).
fn q4k_scale_min(tex: texture_2d<u32>, scales: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2(f32(byte_at(tex, scales + j) & 63u), f32(byte_at(tex, scales + j + 4u) & 63u));
    }
    let hi_d = byte_at(tex, scales + j - 4u) >> 6u;
    let hi_m = byte_at(tex, scales + j) >> 6u;
    let lo = byte_at(tex, scales + j + 4u);
    return vec2(f32((lo & 0xfu) | (hi_d << 4u)), f32((lo >> 4u) | (hi_m << 4u)));
}

// Value c of the row whose bytes start at `row`, stored as `dtype`.
fn weight(tex: texture_2d<u32>, dtype: u32, row: u32, c: u32) -> f32 {
    switch dtype {
        case DTYPE_F32: {
            return bitcast<f32>(word(tex, (row >> 2u) + c));
        }
        case DTYPE_F16: {
            return f16_at(tex, row + 2u * c);
        }
        case DTYPE_BF16: {
            let i = row + 2u * c;
            return bitcast<f32>((byte_at(tex, i) | (byte_at(tex, i + 1u) << 8u)) << 16u);
        }
        case DTYPE_Q8_0: {
            let block = row + (c / 32u) * 34u;
            return f16_at(tex, block) * i8_at(tex, block + 2u + c % 32u);
        }
        case DTYPE_Q4_0: {
            let block = row + (c / 32u) * 18u;
            let j = c % 32u;
            let q = (byte_at(tex, block + 2u + j % 16u) >> ((j / 16u) * 4u)) & 0xfu;
            return f16_at(tex, block) * (f32(q) - 8.0);
        }
        case DTYPE_Q4_K: {
            let block = row + (c / 256u) * 144u;
            let j = c % 256u;
            let chunk = j / 64u; // 64 values: 32 low nibbles, then 32 high nibbles
            let high = (j % 64u) / 32u;
            let sm = q4k_scale_min(tex, block + 4u, 2u * chunk + high);
            let q = (byte_at(tex, block + 16u + chunk * 32u + j % 32u) >> (high * 4u)) & 0xfu;
            return f16_at(tex, block) * sm.x * f32(q) - f16_at(tex, block + 2u) * sm.y;
        }
        case DTYPE_Q6_K: {
            let block = row + (c / 256u) * 210u;
            let j = c % 256u;
            let half = j / 128u; // each half: ql 64 bytes, qh 32 bytes, 8 scales
            let k = j % 128u;
            let quarter = k / 32u; // which of q1..q4
            let l = k % 32u;
            let ql = byte_at(tex, block + half * 64u + l + (quarter % 2u) * 32u);
            let lo = (ql >> ((quarter / 2u) * 4u)) & 0xfu;
            let hi = (byte_at(tex, block + 128u + half * 32u + l) >> (quarter * 2u)) & 3u;
            let scale = i8_at(tex, block + 192u + half * 8u + l / 16u + quarter * 2u);
            return f16_at(tex, block + 208u) * scale * (f32(lo | (hi << 4u)) - 32.0);
        }
        default: {
            return 0.0;
        }
    }
}

// Values c .. c + 8 of a row (columns 0 and 1 hold 4 each), for kernels that
// reuse each weight for several tokens, one function per storage type so a
// kernel can pick it outside its loops (SIMD adapters run every branch of a
// switch inside a loop, masked). c + 8 <= cols; Q8_0 and Q4_0 need c % 8 == 0.
fn f32x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let a = words_at(tex, row + 4u * c);
    let b = words_at(tex, row + 4u * c + 16u);
    return mat2x4(bitcast<vec4<f32>>(a), bitcast<vec4<f32>>(b));
}

fn f16x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let v = words_at(tex, row + 2u * c);
    return mat2x4(
        vec4(unpack2x16float(v.x), unpack2x16float(v.y)),
        vec4(unpack2x16float(v.z), unpack2x16float(v.w)),
    );
}

fn bf16x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let v = words_at(tex, row + 2u * c);
    let lo = bitcast<vec4<f32>>(v << vec4(16u));
    let hi = bitcast<vec4<f32>>(v & vec4(0xffff0000u));
    return mat2x4(vec4(lo.x, hi.x, lo.y, hi.y), vec4(lo.z, hi.z, lo.w, hi.w));
}

fn q8_0x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    // 8 of the block's 32 bytes.
    let block = row + (c / 32u) * 34u;
    let q = words_at(tex, block + 2u + c % 32u);
    let d = f16_at(tex, block);
    return mat2x4(d * i8x4(q.x), d * i8x4(q.y));
}

fn q4_0x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    // Values 0..16 of a block are the low nibbles of its 16 bytes, 16..32 the high ones.
    let block = row + (c / 32u) * 18u;
    let j = c % 32u;
    let q = words_at(tex, block + 2u + j % 16u);
    let s = vec4((j / 16u) * 4u);
    let d = f16_at(tex, block);
    let a = vec4<f32>((vec4(q.x, q.x >> 8u, q.x >> 16u, q.x >> 24u) >> s) & vec4(15u)) - 8.0;
    let b = vec4<f32>((vec4(q.y, q.y >> 8u, q.y >> 16u, q.y >> 24u) >> s) & vec4(15u)) - 8.0;
    return mat2x4(d * a, d * b);
}

// Any type, value by value; 0 past `cols`.
fn anyx8(tex: texture_2d<u32>, dtype: u32, row: u32, c: u32, cols: u32) -> mat2x4<f32> {
    var v = array<f32, 8>();
    for (var i = 0u; i < 8u; i++) {
        if c + i < cols {
            v[i] = weight(tex, dtype, row, c + i);
        }
    }
    return mat2x4(vec4(v[0], v[1], v[2], v[3]), vec4(v[4], v[5], v[6], v[7]));
}
