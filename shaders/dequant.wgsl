// Weight decoding, prepended to matvec.wgsl and embed.wgsl (not a kernel on
// its own). Weights are the model file's raw little-endian bytes: F32, F16,
// BF16, or GGML blocks (Q8_0, Q4_0, Q4_K, Q6_K), read at any byte alignment,
// decoded to f32. The bytes live in an rgba32uint texture used as linear
// memory, 16 bytes a texel and TEXELS_PER_ROW texels a texture row: software
// adapters (lavapipe) fetch texels several times faster than they load
// storage buffers, and GPUs read either at full speed.
//
// Bindings (group 0):
//   1 w: texture_2d<u32>   (ceil(bytes / 16 / TEXELS_PER_ROW), TEXELS_PER_ROW) texels of raw bytes, zero-padded

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
fn texel(t: u32) -> vec4<u32> {
    return textureLoad(w, vec2<u32>(t % TEXELS_PER_ROW, t / TEXELS_PER_ROW), 0);
}

// 32-bit word i: bytes 4 i .. 4 i + 4.
fn word(i: u32) -> u32 {
    return texel(i >> 2u)[i & 3u];
}

// 16 bytes from byte i (any alignment) as 4 words: at most 2 texel fetches.
fn words_at(i: u32) -> vec4<u32> {
    let a = texel(i / 16u);
    let s = i % 16u;
    if s == 0u {
        return a;
    }
    let b = texel(i / 16u + 1u);
    let all = array<u32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
    let first = s / 4u;
    let shift = (s % 4u) * 8u;
    var out = vec4<u32>(0u);
    for (var k = 0u; k < 4u; k++) {
        let lo = all[first + k];
        let hi = select(0u, all[min(first + k + 1u, 7u)], first + k + 1u < 8u);
        // A shift of 32 would wrap to 0 in WGSL: aligned words take lo alone.
        out[k] = select((lo >> shift) | (hi << (32u - shift)), lo, shift == 0u);
    }
    return out;
}

// The 4 signed bytes of a word, as f32, lowest byte first.
fn i8x4(q: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4(q << 24u, q << 16u, q << 8u, q));
    return vec4<f32>(v >> vec4(24u));
}

fn byte_at(i: u32) -> u32 {
    return (word(i >> 2u) >> ((i & 3u) * 8u)) & 0xffu;
}

fn i8_at(i: u32) -> f32 {
    return f32(bitcast<i32>(byte_at(i) << 24u) >> 24u);
}

fn f16_at(i: u32) -> f32 {
    if (i & 1u) == 0u {
        return unpack2x16float(word(i >> 2u) >> ((i & 2u) * 8u)).x;
    }
    return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

// Q4_K sub-block j's (scale, min), 6 bits each (GGML's get_scale_min_k4).
fn q4k_scale_min(scales: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2(f32(byte_at(scales + j) & 63u), f32(byte_at(scales + j + 4u) & 63u));
    }
    let hi_d = byte_at(scales + j - 4u) >> 6u;
    let hi_m = byte_at(scales + j) >> 6u;
    let lo = byte_at(scales + j + 4u);
    return vec2(f32((lo & 0xfu) | (hi_d << 4u)), f32((lo >> 4u) | (hi_m << 4u)));
}

// Value c of the row whose bytes start at `row`, stored as `dtype`.
fn weight(dtype: u32, row: u32, c: u32) -> f32 {
    switch dtype {
        case DTYPE_F32: {
            return bitcast<f32>(word((row >> 2u) + c));
        }
        case DTYPE_F16: {
            return f16_at(row + 2u * c);
        }
        case DTYPE_BF16: {
            let i = row + 2u * c;
            return bitcast<f32>((byte_at(i) | (byte_at(i + 1u) << 8u)) << 16u);
        }
        case DTYPE_Q8_0: {
            let block = row + (c / 32u) * 34u;
            return f16_at(block) * i8_at(block + 2u + c % 32u);
        }
        case DTYPE_Q4_0: {
            let block = row + (c / 32u) * 18u;
            let j = c % 32u;
            let q = (byte_at(block + 2u + j % 16u) >> ((j / 16u) * 4u)) & 0xfu;
            return f16_at(block) * (f32(q) - 8.0);
        }
        case DTYPE_Q4_K: {
            let block = row + (c / 256u) * 144u;
            let j = c % 256u;
            let chunk = j / 64u; // 64 values: 32 low nibbles, then 32 high nibbles
            let high = (j % 64u) / 32u;
            let sm = q4k_scale_min(block + 4u, 2u * chunk + high);
            let q = (byte_at(block + 16u + chunk * 32u + j % 32u) >> (high * 4u)) & 0xfu;
            return f16_at(block) * sm.x * f32(q) - f16_at(block + 2u) * sm.y;
        }
        case DTYPE_Q6_K: {
            let block = row + (c / 256u) * 210u;
            let j = c % 256u;
            let half = j / 128u; // each half: ql 64 bytes, qh 32 bytes, 8 scales
            let k = j % 128u;
            let quarter = k / 32u; // which of q1..q4
            let l = k % 32u;
            let ql = byte_at(block + half * 64u + l + (quarter % 2u) * 32u);
            let lo = (ql >> ((quarter / 2u) * 4u)) & 0xfu;
            let hi = (byte_at(block + 128u + half * 32u + l) >> (quarter * 2u)) & 3u;
            let scale = i8_at(block + 192u + half * 8u + l / 16u + quarter * 2u);
            return f16_at(block + 208u) * scale * (f32(lo | (hi << 4u)) - 32.0);
        }
        default: {
            return 0.0;
        }
    }
}
