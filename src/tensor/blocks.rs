//! GGML's block formats on the host: dequantization of every type kvgpu
//! reads (the CPU reference, tests, and `quantize`'s input) and GGML's
//! reference quantizers for the types it writes. Layouts and rounding follow
//! `ggml-common.h` and `ggml-quants.c`; `tests/fixtures/ggml_blocks.py`
//! checks both against llama.cpp's gguf-py bit for bit.
//!
//! Per 32-value block (offsets in bytes):
//!   Q8_0   d f16 @0, 32 x i8 @2                              d q
//!   Q4_0   d @0, 16 B nibbles @2 (low: values 0..16)         d (q - 8)
//!   Q4_1   d @0, m @2, nibbles @4                            d q + m
//!   Q5_0   d @0, qh u32 @2 (bit i: value i's 5th bit), nibbles @6   d (q - 16)
//!   Q5_1   d @0, m @2, qh @4, nibbles @8                     d q + m
//!   IQ4_NL d @0, nibbles @2                                  d IQ4NL[q]
//! Per 256-value super-block:
//!   Q2_K   16 scale bytes (low nibble scale, high min) @0, 64 B of 2-bit q @16, d @80, dmin @82
//!   Q3_K   hmask 32 B @0, 64 B of 2-bit q @32, 12 B of 6-bit scales @96, d @108
//!   Q4_K   d @0, dmin @2, 12 B of 6-bit scales and mins @4, 128 B nibbles @16
//!   Q5_K   as Q4_K, plus qh 32 B @16 (5th bits), nibbles @48
//!   Q6_K   ql 128 B @0, qh 64 B @128, 16 x i8 scales @192, d @208
//!   IQ4_XS d @0, high scale bits u16 @2, low scale nibbles 4 B @4, nibbles @8

use half::{bf16, f16};

use super::DType;

/// IQ4_NL's 16 non-linear levels (`kvalues_iq4nl`), also IQ4_XS's.
pub const IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Value j (0..32) of a 32-value block's 16 nibble bytes: the low nibbles
/// hold values 0..16, the high ones 16..32.
fn nibble(qs: &[u8], j: usize) -> u8 {
    (qs[j % 16] >> (4 * (j / 16))) & 0xf
}

/// Dequantizes whole blocks of `dtype` in `bytes` into `out`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let blocks = out
        .chunks_exact_mut(dtype.block_len())
        .zip(bytes.chunks_exact(dtype.block_bytes()));
    match dtype {
        DType::F32 => {
            for (o, c) in blocks {
                o[0] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in blocks {
                o[0] = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in blocks {
                o[0] = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (y, b) in blocks {
                let d = f16_at(b, 0);
                for (j, y) in y.iter_mut().enumerate() {
                    *y = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        DType::Q4_0 => {
            for (y, b) in blocks {
                let d = f16_at(b, 0);
                for (j, y) in y.iter_mut().enumerate() {
                    *y = (nibble(&b[2..], j) as i32 - 8) as f32 * d;
                }
            }
        }
        DType::Q4_1 => {
            for (y, b) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, y) in y.iter_mut().enumerate() {
                    *y = nibble(&b[4..], j) as f32 * d + m;
                }
            }
        }
        DType::Q5_0 => {
            for (y, b) in blocks {
                let (d, qh) = (f16_at(b, 0), u32_at(b, 2));
                for (j, y) in y.iter_mut().enumerate() {
                    let q = nibble(&b[6..], j) as u32 | (((qh >> j) & 1) << 4);
                    *y = (q as i32 - 16) as f32 * d;
                }
            }
        }
        DType::Q5_1 => {
            for (y, b) in blocks {
                let (d, m, qh) = (f16_at(b, 0), f16_at(b, 2), u32_at(b, 4));
                for (j, y) in y.iter_mut().enumerate() {
                    let q = nibble(&b[8..], j) as u32 | (((qh >> j) & 1) << 4);
                    *y = q as f32 * d + m;
                }
            }
        }
        DType::IQ4_NL => {
            for (y, b) in blocks {
                let d = f16_at(b, 0);
                for (j, y) in y.iter_mut().enumerate() {
                    *y = d * IQ4NL[nibble(&b[2..], j) as usize] as f32;
                }
            }
        }
        DType::IQ4_XS => {
            for (y, b) in blocks {
                let (d, scales_h) = (f16_at(b, 0), u16::from_le_bytes([b[2], b[3]]));
                for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                    let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
                    let high = ((scales_h >> (2 * ib)) & 3) as u8;
                    let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
                    let qs = &b[8 + 16 * ib..];
                    for (j, y) in y.iter_mut().enumerate() {
                        *y = dl * IQ4NL[nibble(qs, j) as usize] as f32;
                    }
                }
            }
        }
        DType::Q2_K => {
            for (y, b) in blocks {
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for (v, y) in y.iter_mut().enumerate() {
                    let (q, s) = k_2bit(&b[16..], v);
                    let sc = b[s];
                    *y = d * (sc & 0xf) as f32 * q as f32 - dmin * (sc >> 4) as f32;
                }
            }
        }
        DType::Q3_K => {
            for (y, b) in blocks {
                let d = f16_at(b, 108);
                for (v, y) in y.iter_mut().enumerate() {
                    let (q, s) = k_2bit(&b[32..], v);
                    // hmask bit (4 n + j) of byte (v % 32): set means no offset.
                    let (n, j) = (v / 128, (v % 128) / 32);
                    let high = (b[v % 32] >> (4 * n + j)) & 1;
                    let q = q as i32 - if high == 1 { 0 } else { 4 };
                    *y = d * (q3k_scale(&b[96..108], s) as i32 - 32) as f32 * q as f32;
                }
            }
        }
        DType::Q4_K | DType::Q5_K => {
            let five = dtype == DType::Q5_K;
            for (y, b) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[if five { 48 } else { 16 }..];
                for (v, y) in y.iter_mut().enumerate() {
                    // Per 64 values, 32 bytes: low nibbles first, then high.
                    let (chunk, high, l) = (v / 64, (v % 64) / 32, v % 32);
                    let mut q = (qs[32 * chunk + l] >> (4 * high)) & 0xf;
                    if five {
                        q |= ((b[16 + l] >> (2 * chunk + high)) & 1) << 4;
                    }
                    let (sc, m) = scale_min_k4(2 * chunk + high, &b[4..16]);
                    *y = d * sc as f32 * q as f32 - dmin * m as f32;
                }
            }
        }
        DType::Q6_K => {
            for (y, b) in blocks {
                let d = f16_at(b, 208);
                for (v, y) in y.iter_mut().enumerate() {
                    // Each half: 64 ql bytes, 32 qh bytes, 8 scales; quarter
                    // q picks the nibble (q / 2), ql half (q % 2), qh bit pair (q).
                    let (half, quarter, l) = (v / 128, (v % 128) / 32, v % 32);
                    let ql = b[64 * half + 32 * (quarter % 2) + l] >> (4 * (quarter / 2)) & 0xf;
                    let qh = (b[128 + 32 * half + l] >> (2 * quarter)) & 3;
                    let scale = b[192 + 8 * half + l / 16 + 2 * quarter] as i8;
                    *y = d * scale as f32 * ((ql | (qh << 4)) as i32 - 32) as f32;
                }
            }
        }
    }
}

/// Q2_K / Q3_K value v's 2 bits, from the 64 bytes `qs`, and its scale's
/// index (0..16): per 128 values n, 32 bytes hold 4 bit pairs j, each for
/// two runs of 16 values (bytes 0..16, then 16..32).
fn k_2bit(qs: &[u8], v: usize) -> (u8, usize) {
    let (n, j, half, l) = (v / 128, (v % 128) / 32, (v % 32) / 16, v % 16);
    (
        (qs[32 * n + 16 * half + l] >> (2 * j)) & 3,
        8 * n + 2 * j + half,
    )
}

/// Q3_K's 6-bit scale s (0..16) from its 12 bytes: the low 4 bits are a
/// nibble of bytes 0..8, the high 2 bits a pair of bytes 8..12.
fn q3k_scale(sc: &[u8], s: usize) -> u8 {
    let (group, k) = (s / 4, s % 4);
    let low = (sc[4 * (group % 2) + k] >> (4 * (group / 2))) & 0xf;
    low | (((sc[8 + k] >> (2 * group)) & 3) << 4)
}

/// Scale and min of Q4_K / Q5_K sub-block `j` (GGML's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Byte offsets of a block's f16 scales (and mins), for the block types.
pub fn scale_offsets(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => &[],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
    }
}

/// The types [`quantize`] writes.
pub const QUANTIZERS: [DType; 8] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
];

/// Encodes rows of `cols` f32 values as `dtype` (GGML's reference
/// rounding, bit-exact with `quantize_row_*_ref`). `None` for a type not in
/// [`QUANTIZERS`] or when `cols` is not a whole number of blocks.
pub fn quantize(dtype: DType, values: &[f32], cols: usize) -> Option<Vec<u8>> {
    if cols == 0
        || !cols.is_multiple_of(dtype.block_len())
        || !values.len().is_multiple_of(cols)
        || !QUANTIZERS.contains(&dtype)
    {
        return None;
    }
    let mut out = Vec::with_capacity(values.len() / dtype.block_len() * dtype.block_bytes());
    match dtype {
        DType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => out.extend(values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
        _ => {
            for x in values.chunks_exact(32) {
                quantize_block(dtype, x, &mut out);
            }
        }
    }
    Some(out)
}

/// One 32-value block of Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1, appended to `out`.
fn quantize_block(dtype: DType, x: &[f32], out: &mut Vec<u8>) {
    let inverse = |d: f32| if d != 0.0 { 1.0 / d } else { 0.0 };
    // The value of largest magnitude (the first, on ties), and min / max.
    let (mut amax, mut max_abs) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max_abs = v;
        }
    }
    let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
    let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
    // Levels q (0..32) of the 32 values, packed as nibbles plus 5th bits.
    let pack = |q: [u8; 32], out: &mut Vec<u8>, five: bool| {
        if five {
            let qh = (0..32).fold(0u32, |h, j| h | (((q[j] as u32 >> 4) & 1) << j));
            out.extend(qh.to_le_bytes());
        }
        out.extend((0..16).map(|j| (q[j] & 0xf) | ((q[j + 16] & 0xf) << 4)));
    };
    match dtype {
        DType::Q8_0 => {
            let d = amax / 127.0;
            let id = inverse(d);
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
        }
        DType::Q4_0 | DType::Q5_0 => {
            // Levels -8..8 (or -16..16) stored with an offset; GGML adds the
            // offset plus one half in one step, and so must we (bit-exact).
            let (levels, offset, top) = if dtype == DType::Q4_0 {
                (-8.0, 8.5, 15)
            } else {
                (-16.0, 16.5, 31)
            };
            let d = max_abs / levels;
            let id = inverse(d);
            out.extend(f16::from_f32(d).to_le_bytes());
            let q = std::array::from_fn(|j| ((x[j] * id + offset) as i8).min(top) as u8);
            pack(q, out, dtype == DType::Q5_0);
        }
        DType::Q4_1 | DType::Q5_1 => {
            let top = if dtype == DType::Q4_1 { 15 } else { 31 };
            let d = (max - min) / top as f32;
            let id = inverse(d);
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            let q = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i8).min(top) as u8);
            pack(q, out, dtype == DType::Q5_1);
        }
        _ => unreachable!("quantize checks the type"),
    }
}
