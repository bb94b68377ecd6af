//! Weight tensors as stored in model files: a data type (f32, f16, bf16, or a
//! GGML block quantization) and the raw little-endian bytes, shared with the
//! file they came from (no copy). Quantized weights stay quantized on the GPU;
//! this module holds the host-side dequantization that tests and the CPU
//! reference use, and the Q8_0 / Q4_0 quantizers.
//!
//! Block layouts follow GGML (`ggml-common.h`): Q8_0 = f16 scale + 32 i8;
//! Q4_0 = f16 scale + 16 bytes of 4-bit values (offset 8); Q4_K = 256 values
//! in 8 sub-blocks with 6-bit scales and mins; Q6_K = 256 values, 6 bits each,
//! with 16 i8 sub-block scales.

use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};

/// How a tensor's values are stored (GGML's names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-value blocks: f16 scale, 32 x i8.
    Q8_0,
    /// 32-value blocks: f16 scale, 32 x 4-bit (value - 8).
    Q4_0,
    /// 256-value super-blocks: f16 scale and min, 8 sub-blocks with 6-bit scales/mins, 4-bit values.
    Q4_K,
    /// 256-value super-blocks: 6-bit values, 16 i8 sub-block scales, f16 scale.
    Q6_K,
}

impl DType {
    /// Every supported type.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q6_K,
    ];

    /// The type's entry in [`GGML_TYPES`].
    fn ggml(self) -> &'static GgmlType {
        GGML_TYPES
            .iter()
            .find(|t| t.dtype == Some(self))
            .expect("every DType is in GGML_TYPES")
    }

    /// Values per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        self.ggml().block_len
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().block_bytes
    }

    /// The type's id in GGUF files (`ggml_type` in ggml.h).
    pub fn ggml_id(self) -> u32 {
        self.ggml().id
    }

    /// The id the GPU kernels switch on (matches `DTYPE_*` in shaders/dequant.wgsl).
    pub fn gpu_id(self) -> u32 {
        self as u32
    }

    /// Bytes of one row of `cols` values, or `None` if `cols` is not a whole
    /// number of blocks (or overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// GGML's name for the type, e.g. "Q4_K".
    pub fn name(self) -> &'static str {
        self.ggml().name
    }
}

/// One storage type GGML defines: its id in GGUF files, its name and its
/// block geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    /// `ggml_type` id (ggml.h).
    pub id: u32,
    /// GGML's name.
    pub name: &'static str,
    /// Values per block (1 for plain numbers).
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// The kvgpu type, where kvgpu computes with it.
    pub dtype: Option<DType>,
}

impl GgmlType {
    /// The type with GGUF id `id`, if GGML defines one.
    pub fn from_id(id: u32) -> Option<&'static GgmlType> {
        GGML_TYPES.iter().find(|t| t.id == id)
    }
}

/// The block table: every type GGML defines (`ggml-common.h`), so that the
/// sizes of tensors kvgpu cannot compute with are still checked.
pub const GGML_TYPES: [GgmlType; 20] = {
    const fn t(
        id: u32,
        name: &'static str,
        block_len: usize,
        block_bytes: usize,
        dtype: Option<DType>,
    ) -> GgmlType {
        GgmlType {
            id,
            name,
            block_len,
            block_bytes,
            dtype,
        }
    }
    [
        t(0, "F32", 1, 4, Some(DType::F32)),
        t(1, "F16", 1, 2, Some(DType::F16)),
        t(2, "Q4_0", 32, 18, Some(DType::Q4_0)),
        t(3, "Q4_1", 32, 20, None),
        t(6, "Q5_0", 32, 22, None),
        t(7, "Q5_1", 32, 24, None),
        t(8, "Q8_0", 32, 34, Some(DType::Q8_0)),
        t(9, "Q8_1", 32, 36, None),
        t(10, "Q2_K", 256, 84, None),
        t(11, "Q3_K", 256, 110, None),
        t(12, "Q4_K", 256, 144, Some(DType::Q4_K)),
        t(13, "Q5_K", 256, 176, None),
        t(14, "Q6_K", 256, 210, Some(DType::Q6_K)),
        t(15, "Q8_K", 256, 292, None),
        t(24, "I8", 1, 1, None),
        t(25, "I16", 1, 2, None),
        t(26, "I32", 1, 4, None),
        t(27, "I64", 1, 8, None),
        t(28, "F64", 1, 8, None),
        t(30, "BF16", 1, 2, Some(DType::BF16)),
    ]
};

/// A row-major matrix (rows, cols) or vector (1, cols) of weights.
#[derive(Clone)]
pub struct Tensor {
    /// Storage type.
    pub dtype: DType,
    /// Number of rows (output size of a projection).
    pub rows: usize,
    /// Number of columns (input size of a projection); a whole number of blocks.
    pub cols: usize,
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {}x{})",
            self.dtype.name(),
            self.rows,
            self.cols
        )
    }
}

impl Tensor {
    /// A tensor over `range` of shared `bytes`. Panics if the range does not
    /// hold exactly `rows` rows of `cols` values: loaders check this first.
    pub fn from_shared(
        dtype: DType,
        rows: usize,
        cols: usize,
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    ) -> Self {
        let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
        assert_eq!(range.len(), rows * row_bytes, "tensor byte length");
        assert!(
            range.end <= (*bytes).as_ref().len(),
            "tensor range in bounds"
        );
        Self {
            dtype,
            rows,
            cols,
            bytes,
            range,
        }
    }

    /// An owned f32 tensor.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let n = bytes.len();
        Self::from_shared(DType::F32, rows, cols, Arc::new(bytes), 0..n)
    }

    /// The raw bytes, `rows * row_bytes` long.
    pub fn bytes(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.range.clone()]
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype
            .row_bytes(self.cols)
            .expect("checked at creation")
    }

    /// Rows `rows` as a tensor sharing the same bytes.
    pub fn slice_rows(&self, rows: Range<usize>) -> Tensor {
        let rb = self.row_bytes();
        let start = self.range.start + rows.start * rb;
        Tensor {
            dtype: self.dtype,
            rows: rows.len(),
            cols: self.cols,
            bytes: self.bytes.clone(),
            range: start..start + rows.len() * rb,
        }
    }

    /// `parts` (same columns and storage type) as one tensor of all their
    /// rows, in order (a copy); `None` if the types or widths differ.
    pub fn stack_rows(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|t| t.dtype != first.dtype || t.cols != first.cols)
        {
            return None;
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|t| t.bytes()).copied().collect();
        let rows = parts.iter().map(|t| t.rows).sum();
        let n = bytes.len();
        Some(Self::from_shared(
            first.dtype,
            rows,
            first.cols,
            Arc::new(bytes),
            0..n,
        ))
    }

    /// Row `r` as f32 values written into `out` (cols,).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize(self.dtype, &self.bytes()[r * rb..(r + 1) * rb], out);
    }

    /// The whole tensor as f32 (rows * cols,).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// Host reference projection: `out[r] = dequantize(row r) . x`, f32 accumulation.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        let mut row = vec![0f32; self.cols];
        for (r, o) in out.iter_mut().enumerate().take(self.rows) {
            self.dequantize_row(r, &mut row);
            *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
        }
    }

    /// Converts the values to `dtype` (quantizing, with [`quantize`]).
    pub fn convert(&self, dtype: DType) -> Option<Tensor> {
        let bytes = quantize(dtype, &self.to_f32(), self.cols)?;
        let n = bytes.len();
        Some(Tensor::from_shared(
            dtype,
            self.rows,
            self.cols,
            Arc::new(bytes),
            0..n,
        ))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes whole blocks of `dtype` in `bytes` into `out`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (j, y) in y.iter_mut().enumerate() {
                    *y = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        DType::Q4_0 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    y[j] = ((q & 0xf) as i32 - 8) as f32 * d;
                    y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        DType::Q4_K => {
            for (y, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(144)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0xf) as f32 - min1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
                    }
                }
            }
        }
        DType::Q6_K => {
            for (y, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let sc = &sc[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Scale and min of Q4_K sub-block `j` (GGML's `get_scale_min_k4`).
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

/// Encodes rows of `cols` f32 values as `dtype` (GGML's reference rounding).
/// F32, F16, BF16, Q8_0 and Q4_0 are supported; `None` for K-quants or when
/// `cols` is not a whole number of blocks.
pub fn quantize(dtype: DType, values: &[f32], cols: usize) -> Option<Vec<u8>> {
    if cols == 0 || !cols.is_multiple_of(dtype.block_len()) || !values.len().is_multiple_of(cols) {
        return None;
    }
    let mut out = Vec::with_capacity(values.len() / dtype.block_len() * dtype.block_bytes());
    match dtype {
        DType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => out.extend(values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
        DType::Q8_0 => {
            for x in values.chunks_exact(32) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        DType::Q4_0 => {
            for x in values.chunks_exact(32) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
                    let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        DType::Q4_K | DType::Q6_K => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_abs_diff, random};

    #[test]
    fn dequantize_matches_known_values() {
        // One Q8_0 block: scale 0.5, values -128..120 in steps of 8.
        let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
        let mut out = vec![0.0; 32];
        dequantize(DType::Q8_0, &block, &mut out);
        let expect: Vec<f32> = (0..32).map(|i: i32| (i * 8 - 128) as f32 * 0.5).collect();
        assert_eq!(out, expect);
        // One Q4_0 block: scale 2, low nibbles 0..15, high nibbles 15..0.
        let mut block = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        dequantize(DType::Q4_0, &block, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 2.0);
        }
        // Quantizers round-trip within half a step.
        let x = random(64, 5);
        for (dtype, step) in [
            (DType::Q8_0, 1.0 / 127.0),
            (DType::Q4_0, 1.0 / 8.0),
            (DType::F16, 1e-3),
        ] {
            let q = quantize(dtype, &x, 64).unwrap();
            let mut back = vec![0.0; 64];
            dequantize(dtype, &q, &mut back);
            assert!(
                max_abs_diff(&back, &x) <= step,
                "{dtype:?}: {}",
                max_abs_diff(&back, &x)
            );
        }
    }
}
