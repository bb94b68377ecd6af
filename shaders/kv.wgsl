// KV cache rows, prepended to the kernels that read or write the cache
// (rope_append, attention, kv_shift; not a kernel on its own). A row holds
// kv_dim values as (KvDtype in src/kv_cache.rs):
//   KV_F32   one f32 per word
//   KV_F16   an f16 pair per word
//   KV_Q8_0  the row's block scales as f16 pairs (kv_scale_words words),
//            then per 32-value block 32 i8 (8 words): value = d q
//   KV_Q4_0  the scales likewise, then per block 16 bytes (4 words) whose
//            low nibbles are values 0..16 and high nibbles 16..32: d (q - 8)
// Quantizing follows GGML's reference rounding (as src/tensor/blocks.rs).

const KV_F32: u32 = 0u;
const KV_F16: u32 = 1u;
const KV_Q8_0: u32 = 2u;
const KV_Q4_0: u32 = 3u;

// The cache's storage type: each kernel that touches the cache is built per
// type (a pipeline constant), so it carries that type's code alone (a
// quantized cache's 64-value arrays slow the others down even unused).
override KV_DTYPE: u32 = KV_F32;

// Words of a quantized row's scales.
fn kv_scale_words(kv_dim: u32) -> u32 {
    return (kv_dim / 32u + 1u) / 2u;
}

// Words of one row.
fn kv_row_words(dtype: u32, kv_dim: u32) -> u32 {
    switch dtype {
        case KV_F32: {
            return kv_dim;
        }
        case KV_F16: {
            return (kv_dim + 1u) / 2u;
        }
        case KV_Q8_0: {
            return kv_scale_words(kv_dim) + kv_dim / 4u;
        }
        default: {
            return kv_scale_words(kv_dim) + kv_dim / 8u;
        }
    }
}

// The word of its row that holds value c.
fn kv_word(dtype: u32, kv_dim: u32, c: u32) -> u32 {
    switch dtype {
        case KV_F32: {
            return c;
        }
        case KV_F16: {
            return c / 2u;
        }
        case KV_Q8_0: {
            return kv_scale_words(kv_dim) + c / 4u;
        }
        default: {
            return kv_scale_words(kv_dim) + (c / 32u) * 4u + (c % 16u) / 4u;
        }
    }
}

// Value c from its word `w` and (quantized types) its block's scale word `s`
// (word c / 64 of the row).
fn kv_value(dtype: u32, w: u32, s: u32, c: u32) -> f32 {
    switch dtype {
        case KV_F32: {
            return bitcast<f32>(w);
        }
        case KV_F16: {
            return unpack2x16float(w)[c % 2u];
        }
        case KV_Q8_0: {
            let q = bitcast<i32>(w << (24u - 8u * (c % 4u))) >> 24u;
            return unpack2x16float(s)[(c / 32u) % 2u] * f32(q);
        }
        default: {
            let j = c % 32u;
            let q = (w >> (8u * (j % 4u) + 4u * (j / 16u))) & 15u;
            return unpack2x16float(s)[(c / 32u) % 2u] * (f32(q) - 8.0);
        }
    }
}

// GGML's roundf: halves away from zero.
fn round_away(x: f32) -> f32 {
    return sign(x) * floor(abs(x) + 0.5);
}

// Two blocks of a quantized row (values 64 g .. 64 g + 64; the second block
// only when `two`) encoded: word 0 their scales, then their data words
// (8 per Q8_0 block, 4 per Q4_0 block), GGML's reference rounding.
fn kv_quantize(dtype: u32, v: array<f32, 64>, two: bool) -> array<u32, 17> {
    var out = array<u32, 17>();
    var d = vec2(0.0);
    for (var b = 0u; b < select(1u, 2u, two); b++) {
        // Largest magnitude, and the value that has it (the first, on ties).
        var amax = 0.0;
        var max = 0.0;
        for (var j = 0u; j < 32u; j++) {
            let x = v[32u * b + j];
            if amax < abs(x) {
                amax = abs(x);
                max = x;
            }
        }
        if dtype == KV_Q8_0 {
            let scale = amax / 127.0;
            let id = select(0.0, 1.0 / scale, scale != 0.0);
            d[b] = scale;
            for (var j = 0u; j < 32u; j++) {
                let q = u32(i32(round_away(v[32u * b + j] * id))) & 0xffu;
                out[1u + 8u * b + j / 4u] |= q << (8u * (j % 4u));
            }
        } else {
            let scale = max / -8.0;
            let id = select(0.0, 1.0 / scale, scale != 0.0);
            d[b] = scale;
            for (var j = 0u; j < 16u; j++) {
                let lo = min(15u, u32(v[32u * b + j] * id + 8.5));
                let hi = min(15u, u32(v[32u * b + j + 16u] * id + 8.5));
                out[1u + 4u * b + j / 4u] |= (lo | (hi << 4u)) << (8u * (j % 4u));
            }
        }
    }
    out[0] = pack2x16float(d);
    return out;
}

// How many of kv_quantize's words hold something: the scales, and 8 (Q8_0)
// or 4 (Q4_0) data words per block.
fn kv_quantized_words(dtype: u32, two: bool) -> u32 {
    return 1u + select(4u, 8u, dtype == KV_Q8_0) * select(1u, 2u, two);
}

// Where kv_quantize's words go in a row: its word i (0: scales, then
// data) of block pair g.
fn kv_quantized_word(dtype: u32, kv_dim: u32, g: u32, i: u32) -> u32 {
    if i == 0u {
        return g;
    }
    let per = select(4u, 8u, dtype == KV_Q8_0); // words per block
    return kv_scale_words(kv_dim) + 2u * g * per + i - 1u;
}
