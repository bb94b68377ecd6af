//! Token embedding: each token's row of the table, decoded to f32. See
//! `shaders/embed.wgsl`.

use super::projection::{bind_chunks, GpuTensor, NextNorm};
use super::{grid_64, Dispatch, Needs, Pipelines, Shader, Variant};
use crate::tensor::{DType, Tensor};

/// `shaders/embed.wgsl` after `shaders/dequant.wgsl`.
pub const SHADER: Shader = Shader {
    name: "embed",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/embed.wgsl")
    ),
    needs: Needs {
        storage_buffers: 4,
        uniform_bytes: 64,
        textures: 1,
        workgroup_bytes: 0,
        invocations: 64,
        subgroups: false,
    },
};

/// What an embedding reads and writes, for the n tokens of a pass.
pub struct Bindings<'a> {
    /// (n, stride) output rows, `table.cols` values used per row.
    pub out: &'a wgpu::Buffer,
    /// Values from one token's row of `out` to the next.
    pub stride: usize,
    /// (vocab_size, cols) embedding table.
    pub table: &'a GpuTensor,
    /// (n,) u32 token ids.
    pub tokens: &'a wgpu::Buffer,
    /// `Some`: `xg (n, stride)` gets each row times `g` too (the NEXT_NORM build).
    pub next_norm: Option<NextNorm<'a>>,
    /// Each row is multiplied by it (1, or Gemma's sqrt(dim)).
    pub scale: f32,
}

/// The build for a table of `dtype` that also writes x * g when `next_norm`.
pub fn variant(dtype: DType, next_norm: bool) -> Variant {
    Variant {
        shader: SHADER,
        constants: vec![
            ("DTYPE", dtype.gpu_id() as f64),
            ("NEXT_NORM", f64::from(u8::from(next_norm))),
        ],
    }
}

/// The embedding kernel, one pipeline per storage type (compiled on first use).
#[derive(Debug)]
pub struct Embed {
    pipelines: Pipelines,
}

impl Embed {
    /// Prepares the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipelines: Pipelines::new(c, SHADER),
        }
    }

    /// Binds `out (n, stride)[.., ..cols] = table[tokens (n,)] * scale`, one launch
    /// per chunk of `table` (only the chunk holding a token writes its row).
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let groups = grid_64((b.table.cols as u32).div_ceil(8));
        let next_norm = b.next_norm.is_some();
        // Without a next norm, tokens and out fill its slots.
        let (g, xg) = b.next_norm.map_or((b.tokens, b.out), |n| (n.g, n.xg));
        bind_chunks(
            device,
            |dtype| self.pipelines.get(variant(dtype, next_norm).constants),
            b.table,
            &[
                b.tokens.as_entire_binding(),
                b.out.as_entire_binding(),
                g.as_entire_binding(),
                xg.as_entire_binding(),
            ],
            b.stride,
            b.scale,
            |_| groups,
        )
        .batched(1)
    }
}

/// Host reference: row `token` of `table`.
pub fn cpu(out: &mut [f32], table: &Tensor, token: u32) {
    table.dequantize_row(token as usize, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::embed;
    use crate::ops::projection::GpuTensor;
    use crate::ops::testing::*;
    use crate::tensor::DType;

    /// Rows `tokens` of `table`, decoded by the embed kernel in one pass
    /// into rows 3 values wider (the padding must stay untouched); with
    /// `next_norm`, the NEXT_NORM build, whose x * g rows must be the
    /// rows times g exactly.
    fn embed_rows(b: &Bench, table: &GpuTensor, tokens: &[u32], next_norm: bool) -> Vec<f32> {
        let stride = table.cols + 3;
        let out = b.buffer(&vec![f32::NAN; tokens.len() * stride]);
        let xg = b.buffer(&vec![f32::NAN; tokens.len() * stride]);
        let g = random(table.cols, 12);
        let gb = crate::ops::projection::norm_weights(&b.gpu.device, "g", &g);
        let tb = b.u32s(tokens);
        let d = b.kernels.embed.bind(
            &b.gpu.device,
            embed::Bindings {
                out: &out,
                stride,
                table,
                tokens: &tb,
                next_norm: next_norm.then_some(NextNorm { g: &gb, xg: &xg }),
                scale: 1.0,
            },
        );
        b.run(&d, tokens.len());
        let rows = b.read(&out);
        assert!(rows
            .chunks(stride)
            .all(|r| r[table.cols..].iter().all(|v| v.is_nan())));
        for (r, xg) in rows.chunks(stride).zip(b.read(&xg).chunks(stride)) {
            for (c, (v, s)) in r.iter().zip(xg).enumerate() {
                match next_norm && c < table.cols {
                    true => assert_eq!(s.to_bits(), (v * g[c]).to_bits(), "x * g, column {c}"),
                    false => assert!(s.is_nan(), "xg column {c} touched"),
                }
            }
        }
        rows.chunks(stride)
            .flat_map(|r| &r[..table.cols])
            .copied()
            .collect()
    }

    #[test]
    fn embed_reads_the_token_row_of_a_split_table() {
        let b = require!(Bench::new());
        for dtype in DType::ALL {
            let cols = dtype.block_len().max(32) * 2;
            let rows = 53;
            let table = random_tensor(dtype, rows, cols, 11);
            let gt = upload(&b, &table, 5 * dtype.row_bytes(cols).unwrap() as u64 + 3);
            assert!(gt.chunks.len() > 5);
            // One pass of several tokens, from different chunks, one repeated.
            let tokens = [0, 4, 5, 31, 52, 4];
            for next_norm in [false, true] {
                let got = embed_rows(&b, &gt, &tokens, next_norm);
                for (i, &token) in tokens.iter().enumerate() {
                    let mut expect = vec![0.0; cols];
                    embed::cpu(&mut expect, &table, token);
                    assert_eq!(
                        got[i * cols..(i + 1) * cols],
                        expect,
                        "{dtype:?} token {token}"
                    );
                }
            }
        }
    }

    /// `tests/fixtures/ggml_blocks.dat` (made by `ggml_blocks.py` beside it):
    /// random blocks of every quantized type and their values as dequantized
    /// by llama.cpp's gguf-py (`gguf.quants.dequantize`), an independent
    /// reference for the block layouts. Records: u32 GGML type id, u32 block
    /// count, the blocks, then f32 values. Host and GPU must be bit-exact.
    #[test]
    fn dequantize_matches_llama_cpp_gguf_py() {
        let data = include_bytes!("../../tests/fixtures/ggml_blocks.dat");
        let mut at = 0;
        let mut seen = Vec::new();
        while at < data.len() {
            let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
            let (id, n) = (word(at), word(at + 4) as usize);
            let dtype = crate::tensor::GgmlType::from_id(id)
                .and_then(|t| t.dtype)
                .unwrap();
            at += 8;
            let blocks = &data[at..at + n * dtype.block_bytes()];
            at += blocks.len();
            let values: Vec<f32> = data[at..at + n * dtype.block_len() * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            at += values.len() * 4;
            let mut ours = vec![0.0; values.len()];
            crate::tensor::dequantize(dtype, blocks, &mut ours);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&values), "{dtype:?}");
            // And the GPU decodes the same blocks to the same values.
            if let Some(b) = Bench::new() {
                let t = Tensor::from_shared(
                    dtype,
                    n,
                    dtype.block_len(),
                    std::sync::Arc::new(blocks.to_vec()),
                    0..blocks.len(),
                );
                let gt = upload(&b, &t, 128 << 20);
                for token in 0..n as u32 {
                    let got = embed_rows(&b, &gt, &[token], false);
                    let row = &values[token as usize * dtype.block_len()..][..dtype.block_len()];
                    assert_eq!(got, row, "{dtype:?} block {token} on the GPU");
                }
            }
            seen.push(dtype);
        }
        let mut quantized: Vec<DType> = DType::ALL
            .into_iter()
            .filter(|t| t.block_len() > 1)
            .collect();
        seen.sort_by_key(|t| t.ggml_id());
        quantized.sort_by_key(|t| t.ggml_id());
        assert_eq!(seen, quantized, "every quantized type is in the fixture");
    }
}
