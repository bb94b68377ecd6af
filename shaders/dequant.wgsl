// Weight decoding, prepended to matvec_row.wgsl, matmul_tile.wgsl and embed.wgsl (not
// a kernel on its own). Weights are the model file's raw little-endian bytes: F32, F16,
// BF16, or GGML blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K; layouts in src/tensor/blocks.rs), Q8_0, Q4_0,
// IQ4_NL and Q4_1 blocks regrouped on upload (`grouped_blocks` in
// src/ops/projection.rs: per group of 8 blocks, or 4 of Q4_1, one texel of
// their f16 headers, then each block's quants as whole texels), read at any byte
// alignment, 8 values at a time from whole 16-byte texels, decoded to f32
// with the same operations in the same order as the host (bit-exact). The bytes live in an rgba32uint texture used as linear
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
// RMSNorm of its input (pipelines built with NORM); then the shape of the
// q, k and v rows and the cache storage (matvec built with ROPE).
struct Params {
    rows: u32,
    cols: u32,
    row_bytes: u32,
    out_offset: u32,
    mode: u32,
    up_row_bytes: u32,
    out_stride: u32,
    x_stride: u32,
    first_token: u32,
    tile: u32,
    eps: f32,
    q_dim: u32,
    kv_dim: u32,
    head_size: u32,
    kv_dtype: u32,
    scale: f32,
}

// Projection modes (matvec_row.wgsl, matmul_tile.wgsl).
const MODE_SET: u32 = 0u;
const MODE_ADD: u32 = 1u;
const MODE_SWIGLU: u32 = 2u;
const MODE_GEGLU: u32 = 3u;

// The projection epilogue (matvec, matmul; every kernel including this file
// binds `out`): out[o] = s, += s (a residual add), silu(s) * u (SwiGLU, u
// the up projection) or gelu(s) * u (GeGLU, GGML's tanh form) by `mode`.
// Callers own out[o]: in place is safe.
fn project(o: u32, s: f32, u: f32) {
    switch params.mode {
        case MODE_ADD: {
            out[o] += s;
        }
        case MODE_SWIGLU: {
            out[o] = s * (1.0 / (1.0 + exp(-s))) * u;
        }
        case MODE_GEGLU: {
            // tanh's argument clamped where tanh is 1 in f32 (its
            // exponentials would overflow past it on some adapters).
            let a = clamp(0.7978846 * s * (1.0 + 0.044715 * s * s), -15.0, 15.0);
            out[o] = 0.5 * s * (1.0 + tanh(a)) * u;
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
const DTYPE_Q4_1: u32 = 7u;
const DTYPE_Q5_0: u32 = 8u;
const DTYPE_Q5_1: u32 = 9u;
const DTYPE_IQ4_NL: u32 = 10u;
const DTYPE_IQ4_XS: u32 = 11u;
const DTYPE_Q2_K: u32 = 12u;
const DTYPE_Q3_K: u32 = 13u;
const DTYPE_Q5_K: u32 = 14u;

// The weights' storage type (DTYPE_*): a pipeline constant, so each
// pipeline holds only its type's decoder (the others compile away; one
// pipeline per type a model uses, built on first use).
override DTYPE: u32 = DTYPE_F32;

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

// The 4 bytes of a word, lowest first.
fn u8x4(w: u32) -> vec4<u32> {
    return (vec4(w) >> vec4(0u, 8u, 16u, 24u)) & vec4(0xffu);
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

// Q4_K / Q5_K sub-block j's (scale, min), 6 bits each (GGML's get_scale_min_k4).
fn q4k_scale_min(tex: texture_2d<u32>, scales: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2(f32(byte_at(tex, scales + j) & 63u), f32(byte_at(tex, scales + j + 4u) & 63u));
    }
    let hi_d = byte_at(tex, scales + j - 4u) >> 6u;
    let hi_m = byte_at(tex, scales + j) >> 6u;
    let lo = byte_at(tex, scales + j + 4u);
    return vec2(f32((lo & 0xfu) | (hi_d << 4u)), f32((lo >> 4u) | (hi_m << 4u)));
}

// Q3_K's scale s (0..16), 6 bits less 32, from its 12 bytes at `sc`: low 4
// bits a nibble of bytes 0..8, high 2 bits a pair of bytes 8..12.
fn q3k_scale(tex: texture_2d<u32>, sc: u32, s: u32) -> f32 {
    let group = s / 4u;
    let k = s % 4u;
    let low = (byte_at(tex, sc + 4u * (group % 2u) + k) >> (4u * (group / 2u))) & 0xfu;
    let high = (byte_at(tex, sc + 8u + k) >> (2u * group)) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

// IQ4_NL's 16 levels (-127, -104, .. 113) as i8, 4 to a word.
const IQ4NL = array(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);

// The levels of 4 indices (0..16): selects, not an indexed array (per-lane memory on SIMD adapters).
fn iq4nl(n: vec4<u32>) -> vec4<f32> {
    let which = n >> vec4(2u);
    let w = select(select(select(vec4(IQ4NL[0]), vec4(IQ4NL[1]), which == vec4(1u)), vec4(IQ4NL[2]), which == vec4(2u)), vec4(IQ4NL[3]), which == vec4(3u));
    let b = (w >> ((n & vec4(3u)) * 8u)) << vec4(24u);
    return vec4<f32>(bitcast<vec4<i32>>(b) >> vec4(24u));
}

// Eight small integers (values c .. c + 8 of a block).
struct U8x8 {
    a: vec4<u32>,
    b: vec4<u32>,
}

// Values j .. j + 8 (j % 8 == 0) of a 32-value block's 16 nibble bytes at
// `qs`: the low nibbles hold values 0..16, the high ones 16..32.
fn nibbles8(tex: texture_2d<u32>, qs: u32, j: u32) -> U8x8 {
    let q = words_at(tex, qs + j % 16u);
    let s = vec4((j / 16u) * 4u);
    return U8x8((u8x4(q.x) >> s) & vec4(15u), (u8x4(q.y) >> s) & vec4(15u));
}

// Bits j .. j + 8 of h, each 0 or 1, moved to bit 4 (a 5-bit value's top bit).
fn fifth8(h: u32, j: u32) -> U8x8 {
    let v = vec4(h >> j);
    return U8x8(((v >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) << vec4(4u), ((v >> vec4(4u, 5u, 6u, 7u)) & vec4(1u)) << vec4(4u));
}

// Bits `shift`.. of 8 bytes (q.x, q.y), masked.
fn bits8(q: vec4<u32>, shift: u32, mask: u32) -> U8x8 {
    return U8x8((u8x4(q.x) >> vec4(shift)) & vec4(mask), (u8x4(q.y) >> vec4(shift)) & vec4(mask));
}

fn floats(q: U8x8) -> mat2x4<f32> {
    return mat2x4(vec4<f32>(q.a), vec4<f32>(q.b));
}

// Values c .. c + 8 of a row whose bytes start at `row`, one function per
// storage type, so that a kernel can pick it outside its loops (SIMD
// adapters run every branch of a switch inside a loop, masked). Block
// types need c % 8 == 0; float types read 32 bytes (or 16) at any alignment.
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

// The first texel of block b's group (grouped blocks: `blocks` a group,
// `quant_texels` texels of quants each) in a row starting at byte `row`
// (rows of grouped blocks start on a texel).
fn group_texel(row: u32, b: u32, blocks: u32, quant_texels: u32) -> u32 {
    return row / 16u + (b / blocks) * (1u + blocks * quant_texels);
}

// f16 header j of a group's header texel (8 of them).
fn half_of(head: vec4<u32>, j: u32) -> f32 {
    return unpack2x16float(head[j / 2u] >> ((j % 2u) * 16u)).x;
}

// Values v .. v + 8 (v % 8 == 0) of a 32-value block of nibbles `q` (value
// v < 16 in byte v's low nibble, v + 16 in its high one).
fn nibbles_of(q: vec4<u32>, v: u32) -> U8x8 {
    let w = select(q.xy, q.zw, v % 16u >= 8u);
    let s = vec4((v / 16u) * 4u);
    return U8x8((u8x4(w.x) >> s) & vec4(15u), (u8x4(w.y) >> s) & vec4(15u));
}

fn q8_0x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    // 8 of the block's 32 bytes (2 texels).
    let b = c / 32u;
    let t0 = group_texel(row, b, 8u, 2u);
    let d = half_of(texel(tex, t0), b % 8u);
    let q = texel(tex, t0 + 1u + 2u * (b % 8u) + (c % 32u) / 16u);
    let w = select(q.xy, q.zw, c % 16u >= 8u);
    return mat2x4(d * i8x4(w.x), d * i8x4(w.y));
}

fn q4_0x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let b = c / 32u;
    let t0 = group_texel(row, b, 8u, 1u);
    let d = half_of(texel(tex, t0), b % 8u);
    let q = floats(nibbles_of(texel(tex, t0 + 1u + b % 8u), c % 32u));
    return mat2x4(d * (q[0] - 8.0), d * (q[1] - 8.0));
}

fn q4_1x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let b = c / 32u;
    let t0 = group_texel(row, b, 4u, 1u);
    let dm = unpack2x16float(texel(tex, t0)[b % 4u]);
    let q = floats(nibbles_of(texel(tex, t0 + 1u + b % 4u), c % 32u));
    return mat2x4(dm.x * q[0] + dm.y, dm.x * q[1] + dm.y);
}

fn q5_0x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 32u) * 22u;
    let j = c % 32u;
    let head = words_at(tex, block); // d, then qh from byte 2
    let lo = nibbles8(tex, block + 6u, j);
    let hi = fifth8((head.x >> 16u) | (head.y << 16u), j);
    let d = unpack2x16float(head.x).x;
    return mat2x4(d * (vec4<f32>(lo.a | hi.a) - 16.0), d * (vec4<f32>(lo.b | hi.b) - 16.0));
}

fn q5_1x8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 32u) * 24u;
    let j = c % 32u;
    let head = words_at(tex, block); // d, m, qh
    let lo = nibbles8(tex, block + 8u, j);
    let hi = fifth8(head.y, j);
    let dm = unpack2x16float(head.x);
    return mat2x4(dm.x * vec4<f32>(lo.a | hi.a) + dm.y, dm.x * vec4<f32>(lo.b | hi.b) + dm.y);
}

fn iq4_nlx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let b = c / 32u;
    let t0 = group_texel(row, b, 8u, 1u);
    let d = half_of(texel(tex, t0), b % 8u);
    let q = nibbles_of(texel(tex, t0 + 1u + b % 8u), c % 32u);
    return mat2x4(d * iq4nl(q.a), d * iq4nl(q.b));
}

fn iq4_xsx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 256u) * 136u;
    let v = c % 256u;
    let ib = v / 32u; // 32-value sub-block
    let head = words_at(tex, block); // d, high scale bits (u16), 4 bytes of low scale nibbles
    let low = (head.y >> (8u * (ib / 2u) + 4u * (ib % 2u))) & 0xfu;
    let high = (head.x >> (16u + 2u * ib)) & 3u;
    let dl = unpack2x16float(head.x).x * f32(i32(low | (high << 4u)) - 32);
    let q = nibbles8(tex, block + 8u + 16u * ib, v % 32u);
    return mat2x4(dl * iq4nl(q.a), dl * iq4nl(q.b));
}

// Q2_K and Q3_K: per 128 values n, 32 bytes of 2-bit values hold 4 bit
// pairs j, each for two runs of 16 values (scale 8 n + 2 j + run).
fn q2_kx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 256u) * 84u;
    let v = c % 256u;
    let n = v / 128u;
    let j = (v % 128u) / 32u;
    let run = (v % 32u) / 16u;
    let q = floats(bits8(words_at(tex, block + 16u + 32u * n + v % 32u), 2u * j, 3u));
    let sc = byte_at(tex, block + 8u * n + 2u * j + run);
    let dl = f16_at(tex, block + 80u) * f32(sc & 0xfu);
    let ml = f16_at(tex, block + 82u) * f32(sc >> 4u);
    return mat2x4(dl * q[0] - ml, dl * q[1] - ml);
}

fn q3_kx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 256u) * 110u;
    let v = c % 256u;
    let n = v / 128u;
    let j = (v % 128u) / 32u;
    let run = (v % 32u) / 16u;
    let q = bits8(words_at(tex, block + 32u + 32u * n + v % 32u), 2u * j, 3u);
    // hmask bit 4 n + j of byte v % 32: clear means the value is 4 lower.
    let h = bits8(words_at(tex, block + v % 32u), 4u * n + j, 1u);
    let a = vec4<f32>(q.a) - select(vec4(4.0), vec4(0.0), h.a == vec4(1u));
    let b = vec4<f32>(q.b) - select(vec4(4.0), vec4(0.0), h.b == vec4(1u));
    let dl = f16_at(tex, block + 108u) * q3k_scale(tex, block + 96u, 8u * n + 2u * j + run);
    return mat2x4(dl * a, dl * b);
}

// Q4_K and Q5_K: per 64 values, 32 bytes whose low nibbles are the first
// 32 values and high nibbles the next 32; Q5_K's fifth bits sit in 32 qh
// bytes, bit 2 * chunk + high of byte v % 32.
fn q4_kx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 256u) * 144u;
    let v = c % 256u;
    let chunk = v / 64u;
    let high = (v % 64u) / 32u;
    let q = floats(bits8(words_at(tex, block + 16u + 32u * chunk + v % 32u), 4u * high, 15u));
    let sm = q4k_scale_min(tex, block + 4u, 2u * chunk + high);
    let d = f16_at(tex, block) * sm.x;
    let m = f16_at(tex, block + 2u) * sm.y;
    return mat2x4(d * q[0] - m, d * q[1] - m);
}

fn q5_kx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    let block = row + (c / 256u) * 176u;
    let v = c % 256u;
    let chunk = v / 64u;
    let high = (v % 64u) / 32u;
    let lo = bits8(words_at(tex, block + 48u + 32u * chunk + v % 32u), 4u * high, 15u);
    let hi = bits8(words_at(tex, block + 16u + v % 32u), 2u * chunk + high, 1u);
    let sm = q4k_scale_min(tex, block + 4u, 2u * chunk + high);
    let d = f16_at(tex, block) * sm.x;
    let m = f16_at(tex, block + 2u) * sm.y;
    return mat2x4(d * vec4<f32>(lo.a | (hi.a << vec4(4u))) - m, d * vec4<f32>(lo.b | (hi.b << vec4(4u))) - m);
}

fn q6_kx8(tex: texture_2d<u32>, row: u32, c: u32) -> mat2x4<f32> {
    // Each half: 64 ql bytes, 32 qh bytes, 8 scales; quarter q picks the
    // nibble (q / 2), the ql half (q % 2) and the qh bit pair (q).
    let block = row + (c / 256u) * 210u;
    let v = c % 256u;
    let half = v / 128u;
    let quarter = (v % 128u) / 32u;
    let l = v % 32u;
    let lo = bits8(words_at(tex, block + 64u * half + 32u * (quarter % 2u) + l), 4u * (quarter / 2u), 15u);
    let hi = bits8(words_at(tex, block + 128u + 32u * half + l), 2u * quarter, 3u);
    let d = f16_at(tex, block + 208u) * i8_at(tex, block + 192u + 8u * half + l / 16u + 2u * quarter);
    return mat2x4(d * (vec4<f32>(lo.a | (hi.a << vec4(4u))) - 32.0), d * (vec4<f32>(lo.b | (hi.b << vec4(4u))) - 32.0));
}

// Values c .. c + 8 of any type (c % 8 == 0), for code outside hot loops.
fn x8(tex: texture_2d<u32>, dtype: u32, row: u32, c: u32) -> mat2x4<f32> {
    switch dtype {
        case DTYPE_F32: {
            return f32x8(tex, row, c);
        }
        case DTYPE_F16: {
            return f16x8(tex, row, c);
        }
        case DTYPE_BF16: {
            return bf16x8(tex, row, c);
        }
        case DTYPE_Q8_0: {
            return q8_0x8(tex, row, c);
        }
        case DTYPE_Q4_0: {
            return q4_0x8(tex, row, c);
        }
        case DTYPE_Q4_1: {
            return q4_1x8(tex, row, c);
        }
        case DTYPE_Q5_0: {
            return q5_0x8(tex, row, c);
        }
        case DTYPE_Q5_1: {
            return q5_1x8(tex, row, c);
        }
        case DTYPE_IQ4_NL: {
            return iq4_nlx8(tex, row, c);
        }
        case DTYPE_IQ4_XS: {
            return iq4_xsx8(tex, row, c);
        }
        case DTYPE_Q2_K: {
            return q2_kx8(tex, row, c);
        }
        case DTYPE_Q3_K: {
            return q3_kx8(tex, row, c);
        }
        case DTYPE_Q4_K: {
            return q4_kx8(tex, row, c);
        }
        case DTYPE_Q5_K: {
            return q5_kx8(tex, row, c);
        }
        default: {
            return q6_kx8(tex, row, c);
        }
    }
}

// Values c .. c + 8 of a row of `cols` values, 0 from column `cols` on (a
// float row's last, partial group; what lies past the row is never used).
fn x8_to(tex: texture_2d<u32>, dtype: u32, row: u32, c: u32, cols: u32) -> mat2x4<f32> {
    let m = x8(tex, dtype, row, c);
    let i = vec4(c) + vec4(0u, 1u, 2u, 3u);
    return mat2x4(select(vec4(0.0), m[0], i < vec4(cols)), select(vec4(0.0), m[1], i + vec4(4u) < vec4(cols)));
}
