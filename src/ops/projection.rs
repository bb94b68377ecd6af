//! What the projection kernels (matvec, matmul) and embed share: weights on
//! the GPU ([`GpuTensor`]: raw bytes as in the file, in row-chunks of
//! rgba32uint textures that `shaders/dequant.wgsl` decodes), that file's
//! `Params`, the projection modes, and how activations bind as 64 KiB
//! uniform inputs.

use wgpu::util::DeviceExt;

use super::Dispatch;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Matches WGSL `Params` in dequant.wgsl, read by matvec_row.wgsl, matmul_tile.wgsl
/// and embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows in this chunk.
    pub rows: u32,
    /// Values per row.
    pub cols: u32,
    /// Bytes per row.
    pub row_bytes: u32,
    /// Index of this chunk's first row in the whole (stacked) matrix: where
    /// its outputs go in each token's output row.
    pub out_offset: u32,
    /// 0 set, 1 add, 2 SwiGLU, 3 GeGLU (see [`Mode`]).
    pub mode: u32,
    /// Bytes per row of the up projection (SwiGLU).
    pub up_row_bytes: u32,
    /// Values per token row in `out`.
    pub out_stride: u32,
    /// Values per token row in `x` (matmul).
    pub x_stride: u32,
    /// First token of the launch's tile (matmul).
    pub first_token: u32,
    /// Tokens in the launch's tile (matmul).
    pub tile: u32,
    /// Added to the mean square in the RMSNorm of the input (matvec built with NORM).
    pub eps: f32,
    /// Length of q, the first rows of a QKV projection (matvec built with ROPE).
    pub q_dim: u32,
    /// Length of k and of v, the rows after q (ROPE).
    pub kv_dim: u32,
    /// Size of one head (ROPE).
    pub head_size: u32,
    /// [`KvDtype::gpu_id`](crate::kv_cache::KvDtype::gpu_id) of the cache (ROPE: f32 or f16).
    pub kv_dtype: u32,
    /// What embed multiplies each row by (1, or Gemma's sqrt(dim)).
    pub scale: f32,
}

/// What a projection does with `W x`.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// `out = W x`.
    Set,
    /// `out += W x`: the residual add in the epilogue (one pass over `out` fewer).
    Add,
    /// `out = silu(W x) * (up x)`: gate, up and SiLU in one pass. `up` has
    /// the same shape and row-chunks as `W` (see [`GpuTensor::upload_pair`]).
    SwiGlu {
        /// The up projection.
        up: &'a GpuTensor,
    },
    /// `out = gelu(W x) * (up x)` (GGML's tanh form), as SwiGlu.
    GeGlu {
        /// The up projection.
        up: &'a GpuTensor,
    },
}

impl<'a> Mode<'a> {
    /// The gated mode of `activation` with the up projection `up`.
    pub fn gated(activation: crate::arch::Activation, up: &'a GpuTensor) -> Self {
        match activation {
            crate::arch::Activation::Silu => Mode::SwiGlu { up },
            crate::arch::Activation::GeluTanh => Mode::GeGlu { up },
        }
    }
}

/// The RMSNorm that reads a residual stream next, applied ahead: a kernel
/// that writes row values `x[o]` of the stream also writes `xg[o] = x[o] *
/// g[o]`, the input of the NORM projection that follows (which scales its
/// sums by `1 / rms(x)`, see [`matvec::Bindings::norm`](super::matvec::Bindings::norm)).
#[derive(Clone, Copy, Debug)]
pub struct NextNorm<'a> {
    /// (cols,) the norm's weights: a UNIFORM and STORAGE buffer of at least
    /// [`INPUT_BYTES`] (see [`norm_weights`]).
    pub g: &'a wgpu::Buffer,
    /// Laid out as the stream, STORAGE (and UNIFORM, for the projection).
    pub xg: &'a wgpu::Buffer,
}

/// Texels (16 bytes) per texture row of a weight texture; matches
/// `TEXELS_PER_ROW` in shaders/dequant.wgsl.
pub const TEXELS_PER_ROW: u64 = 4096;

/// Largest projection input: `x` is a 64 KiB uniform buffer of f32.
pub const MAX_COLS: usize = 16384;

/// Bytes a matvec input buffer must have (`x` binds as `array<vec4<f32>, 4096>`).
pub const INPUT_BYTES: u64 = MAX_COLS as u64 * 4;

/// Row stride, in values, of activations that feed projections: `n`
/// rounded up to 64 values (256 bytes, the uniform binding offset
/// alignment), so that matmul can bind any token's row as a uniform buffer.
pub fn input_stride(n: usize) -> usize {
    n.next_multiple_of(64)
}

/// Binds the rows of tokens `first..` of `x`, whose rows are `stride`
/// values apart, as a projection's 64 KiB uniform input. `x` must hold
/// [`INPUT_BYTES`] from there on.
pub fn input_binding(x: &wgpu::Buffer, first: usize, stride: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: x,
        offset: (first * stride * 4) as u64,
        size: std::num::NonZeroU64::new(INPUT_BYTES),
    })
}

/// How blocks of 32 values with a header lie on the GPU, for the types
/// whose blocks do not fill whole 16-byte texels in the file (Q8_0's 34
/// bytes, Q4_0's and IQ4_NL's 18, Q4_1's 20): `(blocks, header bytes,
/// quant bytes)` per group of `blocks` blocks, laid out as one texel of the
/// group's headers (f16 d; Q4_1 f16 d and m) and then its blocks' quants,
/// whole texels each; a row's last group may have fewer blocks. A kernel
/// then reads each block's quants as aligned texels, where the file's
/// layout takes two fetches and shifts per 16 bytes. Other types are
/// uploaded as the file has them.
pub fn grouped_blocks(dtype: DType) -> Option<(usize, usize, usize)> {
    match dtype {
        DType::Q8_0 => Some((8, 2, 32)),
        DType::Q4_0 | DType::IQ4_NL => Some((8, 2, 16)),
        DType::Q4_1 => Some((4, 4, 16)),
        _ => None,
    }
}

/// Bytes of a row of `cols` values of `dtype` on the GPU: the file's, or
/// with [`grouped_blocks`] a texel of headers per group (the same bytes
/// when the row's blocks fill whole groups). `None` if `cols` is not whole
/// blocks.
pub fn gpu_row_bytes(dtype: DType, cols: usize) -> Option<usize> {
    let file = dtype.row_bytes(cols)?;
    let Some((per_group, _, quants)) = grouped_blocks(dtype) else {
        return Some(file);
    };
    let blocks = cols / 32;
    let partial = blocks % per_group;
    Some(
        (blocks / per_group) * (16 + per_group * quants)
            + usize::from(partial > 0) * (16 + partial * quants),
    )
}

/// `t`'s rows in the GPU's layout ([`gpu_row_bytes`] each).
fn gpu_bytes(t: &Tensor) -> Vec<u8> {
    let Some((per_group, header, quants)) = grouped_blocks(t.dtype) else {
        return t.bytes().to_vec();
    };
    let block = header + quants;
    let mut out = Vec::with_capacity(t.rows * gpu_row_bytes(t.dtype, t.cols).unwrap_or(0));
    for row in t.bytes().chunks(t.row_bytes()) {
        for group in row.chunks(per_group * block) {
            let start = out.len();
            for b in group.chunks(block) {
                out.extend_from_slice(&b[..header]);
            }
            out.resize(start + 16, 0);
            for b in group.chunks(block) {
                out.extend_from_slice(&b[header..]);
            }
        }
    }
    out
}

/// Rows `start..start + rows` of a weight matrix in one texture.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// First row in the whole matrix.
    pub start: usize,
    /// Rows held.
    pub rows: usize,
    /// Storage type of these rows.
    pub dtype: DType,
    /// The rows' raw bytes as texels of an rgba32uint texture (dequant.wgsl).
    pub view: wgpu::TextureView,
}

/// A weight matrix on the GPU, the file's bytes (blocks of some types
/// regrouped: [`grouped_blocks`]), in row-chunks that
/// each fit one rgba32uint texture used as linear memory (see
/// shaders/dequant.wgsl). A stacked matrix (Q, K and V as one projection)
/// may mix storage types, one per chunk.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// Rows of the whole matrix.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Row-chunks in order.
    pub chunks: Vec<Chunk>,
}

impl GpuTensor {
    /// Bytes one texture can hold on `device`.
    pub fn chunk_limit(device: &wgpu::Device) -> u64 {
        let height = device.limits().max_texture_dimension_2d as u64;
        TEXELS_PER_ROW.min(height) * height * 16
    }

    /// Rows of `t` per chunk of at most `limit` bytes (and at most
    /// [`GpuTensor::chunk_limit`]), even where `t` is split and two fit (a
    /// QKV projection's RoPE pairs stay in one chunk); `what` names the
    /// tensor in errors.
    fn rows_per_chunk(device: &wgpu::Device, t: &Tensor, limit: u64, what: &str) -> Result<usize> {
        let limit = limit.min(Self::chunk_limit(device));
        let row_bytes = gpu_row_bytes(t.dtype, t.cols).expect("whole blocks") as u64;
        let rows = (limit / row_bytes.max(1)).min(t.rows as u64) as usize;
        if rows == 0 || row_bytes > u32::MAX as u64 {
            return Err(Error::ModelTooLarge {
                what: format!("one row of {what}"),
                needed: row_bytes,
                limit,
            });
        }
        Ok(match rows < t.rows && rows > 1 {
            true => rows / 2 * 2,
            false => rows,
        })
    }

    /// Uploads `t`, splitting it into row-chunks of at most `limit` bytes
    /// (and at most [`GpuTensor::chunk_limit`]). `what` names the tensor in
    /// errors. Call inside an error scope.
    pub fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        t: &Tensor,
        limit: u64,
        what: &str,
    ) -> Result<Self> {
        let rows = Self::rows_per_chunk(device, t, limit, what)?;
        Ok(Self::upload_parts(device, queue, &[(t, rows)], what))
    }

    /// Uploads `parts` (same columns) stacked into one matrix of all their
    /// rows, so one launch projects onto all of them (Q, K and V). Parts of
    /// one storage type share textures; mixed types keep a chunk each.
    pub fn upload_stacked(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        parts: &[&Tensor],
        limit: u64,
        what: &str,
    ) -> Result<Self> {
        if let Some(whole) = Tensor::stack_rows(parts) {
            return Self::upload(device, queue, &whole, limit, what);
        }
        let parts = parts
            .iter()
            .map(|&t| Ok((t, Self::rows_per_chunk(device, t, limit, what)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::upload_parts(device, queue, &parts, what))
    }

    /// Uploads `gate` and `up` (same shape) with the same row-chunks, for
    /// [`Mode::SwiGlu`].
    pub fn upload_pair(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        gate: &Tensor,
        up: &Tensor,
        limit: u64,
        what: &str,
    ) -> Result<(Self, Self)> {
        let rows = Self::rows_per_chunk(device, gate, limit, what)?
            .min(Self::rows_per_chunk(device, up, limit, what)?);
        Ok((
            Self::upload_parts(device, queue, &[(gate, rows)], what),
            Self::upload_parts(device, queue, &[(up, rows)], what),
        ))
    }

    /// Uploads each (part, rows per chunk) in chunks, one after another.
    fn upload_parts(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        parts: &[(&Tensor, usize)],
        what: &str,
    ) -> Self {
        let max_width = TEXELS_PER_ROW.min(device.limits().max_texture_dimension_2d as u64);
        let mut chunks = Vec::new();
        let mut offset = 0;
        for &(t, rows_per_chunk) in parts {
            let mut start = 0;
            while start < t.rows {
                let end = (start + rows_per_chunk).min(t.rows);
                let mut padded = gpu_bytes(&t.slice_rows(start..end));
                let texels = (padded.len() as u64).div_ceil(16).max(1);
                let width = texels.min(max_width);
                let height = texels.div_ceil(width);
                padded.resize((width * height * 16) as usize, 0);
                let texture = device.create_texture_with_data(
                    queue,
                    &wgpu::TextureDescriptor {
                        label: Some(what),
                        size: wgpu::Extent3d {
                            width: width as u32,
                            height: height as u32,
                            depth_or_array_layers: 1,
                        },
                        mip_level_count: 1,
                        sample_count: 1,
                        dimension: wgpu::TextureDimension::D2,
                        format: wgpu::TextureFormat::Rgba32Uint,
                        usage: wgpu::TextureUsages::TEXTURE_BINDING,
                        view_formats: &[],
                    },
                    wgpu::util::TextureDataOrder::LayerMajor,
                    &padded,
                );
                chunks.push(Chunk {
                    start: offset + start,
                    rows: end - start,
                    dtype: t.dtype,
                    view: texture.create_view(&Default::default()),
                });
                start = end;
            }
            offset += t.rows;
        }
        Self {
            rows: offset,
            cols: parts.first().map_or(0, |(t, _)| t.cols),
            chunks,
        }
    }

    /// `Params` of each chunk for `mode`, with the chunk and the up
    /// projection's (the same chunk unless SwiGLU).
    pub(crate) fn chunk_params<'a>(
        &'a self,
        mode: Mode<'a>,
        out_stride: usize,
    ) -> impl Iterator<Item = (Params, &'a Chunk, &'a Chunk)> {
        let row_bytes = |c: &Chunk| gpu_row_bytes(c.dtype, self.cols).expect("whole blocks") as u32;
        let up = match mode {
            Mode::SwiGlu { up } | Mode::GeGlu { up } => Some(up),
            _ => None,
        };
        self.chunks.iter().enumerate().map(move |(i, c)| {
            let u = up.map_or(c, |up| &up.chunks[i]);
            debug_assert_eq!((u.start, u.rows), (c.start, c.rows), "paired chunks");
            let params = Params {
                rows: c.rows as u32,
                cols: self.cols as u32,
                row_bytes: row_bytes(c),
                out_offset: c.start as u32,
                mode: match mode {
                    Mode::Set => 0,
                    Mode::Add => 1,
                    Mode::SwiGlu { .. } => 2,
                    Mode::GeGlu { .. } => 3,
                },
                up_row_bytes: row_bytes(u),
                out_stride: out_stride as u32,
                x_stride: 0,
                first_token: 0,
                tile: 1,
                eps: 0.0,
                q_dim: 0,
                kv_dim: 0,
                head_size: 0,
                kv_dtype: 0,
                scale: 1.0,
            };
            (params, c, u)
        })
    }
}

/// Binds the pipeline for each chunk's storage type (`pipeline`) once per
/// chunk of `w`, output rows `out_stride` apart: the chunk's params and
/// texture (binding 1), then `rest` (bindings 2..); `groups` gives the grid
/// for a chunk of that many rows.
pub(crate) fn bind_chunks(
    device: &wgpu::Device,
    pipeline: impl Fn(DType) -> wgpu::ComputePipeline,
    w: &GpuTensor,
    rest: &[wgpu::BindingResource],
    out_stride: usize,
    scale: f32,
    groups: impl Fn(u32) -> [u32; 3],
) -> Dispatch {
    let mut dispatch = Dispatch::none();
    for (mut params, c, _) in w.chunk_params(Mode::Set, out_stride) {
        params.scale = scale;
        dispatch.set_pipeline(&pipeline(c.dtype));
        let resources = std::iter::once(wgpu::BindingResource::TextureView(&c.view))
            .chain(rest.iter().cloned())
            .collect();
        dispatch.push_resources(
            device,
            bytemuck::bytes_of(&params),
            resources,
            groups(params.rows),
        );
    }
    dispatch
}

/// RMSNorm weights (n,) as a buffer a NORM matvec can bind: UNIFORM (and
/// STORAGE, for the rmsnorm kernel), zero-padded to [`INPUT_BYTES`].
pub fn norm_weights(device: &wgpu::Device, label: &str, g: &[f32]) -> wgpu::Buffer {
    let mut padded = g.to_vec();
    padded.resize(g.len().max(MAX_COLS), 0.0);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM;
    crate::gpu::buffer_init(device, label, bytemuck::cast_slice(&padded), usage)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::matmul;
    use crate::ops::matvec::CpuMode;
    use crate::ops::testing::*;

    #[test]
    fn grouped_blocks_put_a_groups_headers_in_one_texel_before_its_quants() {
        // Q4_1, 2 rows of 5 blocks (a group of 4 and one of 1): block b of
        // row r has header bytes [r, b, r, b] and quant bytes 100 + 16 b + i.
        let blocks = 5;
        let mut file = Vec::new();
        for r in 0..2u8 {
            for b in 0..blocks as u8 {
                file.extend_from_slice(&[r, b, r, b]);
                file.extend((0..16).map(|i| 100 + 16 * b + i));
            }
        }
        let t = Tensor::from_shared(DType::Q4_1, 2, 32 * blocks, Arc::new(file), 0..200);
        let row = gpu_row_bytes(DType::Q4_1, 32 * blocks).unwrap();
        assert_eq!(row, 80 + 32);
        let gpu = gpu_bytes(&t);
        assert_eq!(gpu.len(), 2 * row);
        for r in 0..2u8 {
            let at = r as usize * row;
            // First group: 4 headers, then 4 blocks of quants.
            let headers: Vec<u8> = (0..4u8).flat_map(|b| [r, b, r, b]).collect();
            assert_eq!(gpu[at..at + 16], headers[..]);
            for b in 0..4 {
                let q = &gpu[at + 16 + 16 * b..][..16];
                assert!(q
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v as usize == 100 + 16 * b + i));
            }
            // Last group: one header, zero padding, one block of quants.
            assert_eq!(
                gpu[at + 80..at + 96],
                [r, 4, r, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            );
            assert_eq!(gpu[at + 96], 164);
        }
        // Whole groups take the file's bytes; other types keep the file's layout.
        assert_eq!(gpu_row_bytes(DType::Q8_0, 256), DType::Q8_0.row_bytes(256));
        assert_eq!(gpu_row_bytes(DType::Q8_0, 576), Some(2 * 272 + 16 + 2 * 32));
        assert_eq!(gpu_row_bytes(DType::Q5_0, 576), DType::Q5_0.row_bytes(576));
    }

    #[test]
    fn stacked_projection_mixes_storage_types() {
        let b = require!(Bench::new());
        // Q, K, V as one matrix where each part has its own type (as in
        // llama.cpp's Q4_K_M files): each part keeps its chunk(s).
        let parts = [
            random_tensor(DType::Q4_K, 37, 256, 1),
            random_tensor(DType::Q8_0, 11, 256, 2),
            random_tensor(DType::F16, 11, 256, 3),
        ];
        let refs: Vec<&Tensor> = parts.iter().collect();
        let gw = b
            .gpu
            .scoped("upload", || {
                GpuTensor::upload_stacked(&b.gpu.device, &b.gpu.queue, &refs, 128 << 20, "qkv")
            })
            .unwrap()
            .unwrap();
        assert_eq!((gw.rows, gw.chunks.len()), (59, 3));
        // Same types stack into one texture.
        let same = [&parts[1], &parts[1]];
        let one = b
            .gpu
            .scoped("upload", || {
                GpuTensor::upload_stacked(&b.gpu.device, &b.gpu.queue, &same, 128 << 20, "qkv")
            })
            .unwrap()
            .unwrap();
        assert_eq!((one.rows, one.chunks.len()), (22, 1));
        let whole: Vec<f32> = parts.iter().flat_map(|t| t.to_f32()).collect();
        let whole = Tensor::from_f32(59, 256, &whole);
        let p = Projection {
            w: whole,
            up: None,
            what: "stacked q4_k/q8_0/f16".into(),
        };
        for n in [1, 9] {
            let x = random(n * 256, 5);
            let build = *builds(&b).last().expect("a build");
            let got = project(&b, build, &p, &gw, None, &x, &vec![f32::NAN; n * 59], false);
            let mut expect = vec![0.0; n * 59];
            matmul::cpu(&mut expect, &p.w, &x, CpuMode::Set);
            assert_close(&got, &expect, &format!("{} tokens {n}", p.what));
        }
    }
}
