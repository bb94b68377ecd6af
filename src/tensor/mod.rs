//! Weight tensors as stored in model files: a data type (f32, f16, bf16, or a
//! GGML block quantization) and the raw little-endian bytes, shared with the
//! file they came from (no copy). Quantized weights stay quantized on the GPU;
//! `blocks.rs` holds the host-side dequantization that tests and the CPU
//! reference use, and GGML's quantizers.

use std::ops::Range;
use std::sync::Arc;

mod blocks;

pub use blocks::{dequantize, quantize, IQ4NL, QUANTIZERS};

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
    /// 32-value blocks: f16 scale and min, 32 x 4-bit (d q + m).
    Q4_1,
    /// 32-value blocks: f16 scale, 32 x 5-bit (value - 16).
    Q5_0,
    /// 32-value blocks: f16 scale and min, 32 x 5-bit (d q + m).
    Q5_1,
    /// 32-value blocks: f16 scale, 32 x 4-bit indices into 16 non-linear levels.
    IQ4_NL,
    /// 256-value super-blocks: IQ4_NL's levels with 6-bit sub-block scales.
    IQ4_XS,
    /// 256-value super-blocks: 2-bit values, 4-bit sub-block scales and mins.
    Q2_K,
    /// 256-value super-blocks: 3-bit values, 6-bit sub-block scales.
    Q3_K,
    /// 256-value super-blocks: as Q4_K with a fifth bit per value.
    Q5_K,
}

impl DType {
    /// Every supported type.
    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q6_K,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::IQ4_NL,
        DType::IQ4_XS,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q5_K,
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

    /// The type GGML calls `name` (any case), e.g. "q4_k".
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
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
pub const GGML_TYPES: [GgmlType; 31] = {
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
        t(3, "Q4_1", 32, 20, Some(DType::Q4_1)),
        t(6, "Q5_0", 32, 22, Some(DType::Q5_0)),
        t(7, "Q5_1", 32, 24, Some(DType::Q5_1)),
        t(8, "Q8_0", 32, 34, Some(DType::Q8_0)),
        t(9, "Q8_1", 32, 36, None),
        t(10, "Q2_K", 256, 84, Some(DType::Q2_K)),
        t(11, "Q3_K", 256, 110, Some(DType::Q3_K)),
        t(12, "Q4_K", 256, 144, Some(DType::Q4_K)),
        t(13, "Q5_K", 256, 176, Some(DType::Q5_K)),
        t(14, "Q6_K", 256, 210, Some(DType::Q6_K)),
        t(15, "Q8_K", 256, 292, None),
        t(16, "IQ2_XXS", 256, 66, None),
        t(17, "IQ2_XS", 256, 74, None),
        t(18, "IQ3_XXS", 256, 98, None),
        t(19, "IQ1_S", 256, 50, None),
        t(20, "IQ4_NL", 32, 18, Some(DType::IQ4_NL)),
        t(21, "IQ3_S", 256, 110, None),
        t(22, "IQ2_S", 256, 82, None),
        t(23, "IQ4_XS", 256, 136, Some(DType::IQ4_XS)),
        t(24, "I8", 1, 1, None),
        t(25, "I16", 1, 2, None),
        t(26, "I32", 1, 4, None),
        t(27, "I64", 1, 8, None),
        t(28, "F64", 1, 8, None),
        t(29, "IQ1_M", 256, 56, None),
        t(30, "BF16", 1, 2, Some(DType::BF16)),
        t(34, "TQ1_0", 256, 54, None),
        t(35, "TQ2_0", 256, 66, None),
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

    /// The rows in `order`: row r of the result is row `order[r]` (a copy).
    /// Panics if an index is past the last row.
    pub fn reorder_rows(&self, order: &[usize]) -> Tensor {
        let (rb, all) = (self.row_bytes(), self.bytes());
        let bytes: Vec<u8> = order
            .iter()
            .flat_map(|&r| &all[r * rb..(r + 1) * rb])
            .copied()
            .collect();
        let n = bytes.len();
        Self::from_shared(self.dtype, order.len(), self.cols, Arc::new(bytes), 0..n)
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

    /// A seeded random (rows, cols) tensor of `dtype` whose values have
    /// root-mean-square `rms`: random values through [`quantize`] for the
    /// types it writes, random blocks (with every f16 scale set alike) for
    /// the others. For tests and benchmarks; `None` if `cols` is not a whole
    /// number of blocks.
    pub fn random(dtype: DType, rows: usize, cols: usize, rms: f32, seed: u64) -> Option<Tensor> {
        let rng = &mut crate::rng::XorShift::new(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
        let n = rows * cols;
        if QUANTIZERS.contains(&dtype) {
            // Uniform in [-a, a) has rms a / sqrt(3).
            let a = rms * 3f32.sqrt();
            let values: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * a).collect();
            let bytes = quantize(dtype, &values, cols)?;
            let len = bytes.len();
            return Some(Tensor::from_shared(
                dtype,
                rows,
                cols,
                Arc::new(bytes),
                0..len,
            ));
        }
        let row_bytes = dtype.row_bytes(cols)?;
        let mut bytes: Vec<u8> = (0..rows * row_bytes)
            .map(|_| rng.next_u32() as u8)
            .collect();
        let set_scales = |bytes: &mut [u8], d: f32| {
            for block in bytes.chunks_mut(dtype.block_bytes()) {
                for &at in blocks::scale_offsets(dtype) {
                    block[at..at + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                }
            }
        };
        // Values are linear in the scales: measure at 1, then scale to `rms`.
        set_scales(&mut bytes, 1.0);
        let mut values = vec![0.0; n];
        dequantize(dtype, &bytes, &mut values);
        let at_one = (values.iter().map(|v| v * v).sum::<f32>() / n.max(1) as f32).sqrt();
        set_scales(&mut bytes, if at_one > 0.0 { rms / at_one } else { 0.0 });
        let len = bytes.len();
        Some(Tensor::from_shared(
            dtype,
            rows,
            cols,
            Arc::new(bytes),
            0..len,
        ))
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

    /// `tests/fixtures/ggml_quantize.dat` (made by `ggml_blocks.py`): random
    /// rows (zeros, constants, ties, outliers among them) and their blocks
    /// from llama.cpp's gguf-py (`gguf.quants.quantize`). Bit-exact.
    #[test]
    fn quantizers_match_llama_cpp_gguf_py() {
        let data = include_bytes!("../../tests/fixtures/ggml_quantize.dat");
        let mut at = 0;
        let mut seen = Vec::new();
        while at < data.len() {
            let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
            let (id, n) = (word(at), word(at + 4) as usize);
            let dtype = GgmlType::from_id(id).and_then(|t| t.dtype).unwrap();
            at += 8;
            let values: Vec<f32> = data[at..at + n * 32 * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            at += values.len() * 4;
            let blocks = &data[at..at + n * dtype.block_bytes()];
            at += blocks.len();
            let ours = quantize(dtype, &values, 32).unwrap();
            for (b, (o, r)) in ours
                .chunks(dtype.block_bytes())
                .zip(blocks.chunks(dtype.block_bytes()))
                .enumerate()
            {
                assert_eq!(o, r, "{dtype:?} block {b} of {:?}", &values[32 * b..][..32]);
            }
            seen.push(dtype);
        }
        let block_types: Vec<DType> = QUANTIZERS
            .into_iter()
            .filter(|t| t.block_len() > 1)
            .collect();
        assert_eq!(seen, block_types);
    }
}
