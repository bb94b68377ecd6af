//! Projection: `out = W x`, W (rows, cols) in any [`DType`], split into
//! row-chunks when larger than one storage binding. See `shaders/matvec.wgsl`.

use wgpu::util::DeviceExt;

use super::{grid, Dispatch, Shader};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// `shaders/matvec.wgsl` after `shaders/dequant.wgsl`.
pub const SHADER: Shader = Shader {
    name: "matvec",
    source: concat!(
        include_str!("../../shaders/dequant.wgsl"),
        include_str!("../../shaders/matvec.wgsl")
    ),
};

/// Matches WGSL `Params` in matvec.wgsl (and embed.wgsl, whose last field is `row_start`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows in this chunk.
    pub rows: u32,
    /// Values per row.
    pub cols: u32,
    /// [`DType::gpu_id`].
    pub dtype: u32,
    /// Bytes per row.
    pub row_bytes: u32,
    /// Index of this chunk's first row in the whole matrix.
    pub row_start: u32,
    /// 1: add to `out` instead of overwriting it (matvec only).
    pub accumulate: u32,
}

/// Texels (16 bytes) per texture row of a weight texture; matches
/// `TEXELS_PER_ROW` in shaders/dequant.wgsl.
pub const TEXELS_PER_ROW: u64 = 4096;

/// Largest projection input: `x` is a 64 KiB uniform buffer of f32.
pub const MAX_COLS: usize = 16384;

/// Bytes a matvec input buffer must have (`x` binds as `array<vec4<f32>, 4096>`).
pub const INPUT_BYTES: u64 = MAX_COLS as u64 * 4;

/// A weight matrix on the GPU, raw bytes as in the file, in row-chunks that
/// each fit one rgba32uint texture used as linear memory (see
/// shaders/dequant.wgsl).
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// Storage type.
    pub dtype: DType,
    /// Rows of the whole matrix.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// (first row, texture view of its rows).
    pub chunks: Vec<(usize, wgpu::TextureView)>,
    bytes: u64,
}

impl GpuTensor {
    /// Bytes one texture can hold on `device`.
    pub fn chunk_limit(device: &wgpu::Device) -> u64 {
        let height = device.limits().max_texture_dimension_2d as u64;
        TEXELS_PER_ROW.min(height) * height * 16
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
        let limit = limit.min(Self::chunk_limit(device));
        let row_bytes = t.row_bytes() as u64;
        let rows_per_chunk = (limit / row_bytes.max(1)).min(t.rows as u64) as usize;
        if rows_per_chunk == 0 || row_bytes > u32::MAX as u64 {
            return Err(Error::ModelTooLarge {
                what: format!("one row of {what}"),
                needed: row_bytes,
                limit,
            });
        }
        let max_width = TEXELS_PER_ROW.min(device.limits().max_texture_dimension_2d as u64);
        let mut chunks = Vec::new();
        let mut bytes = 0;
        let mut start = 0;
        while start < t.rows {
            let end = (start + rows_per_chunk).min(t.rows);
            let data = t.slice_rows(start..end);
            let texels = (data.bytes().len() as u64).div_ceil(16).max(1);
            let width = texels.min(max_width);
            let height = texels.div_ceil(width);
            let mut padded = data.bytes().to_vec();
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
            bytes += padded.len() as u64;
            chunks.push((start, texture.create_view(&Default::default())));
            start = end;
        }
        Ok(Self {
            dtype: t.dtype,
            rows: t.rows,
            cols: t.cols,
            chunks,
            bytes,
        })
    }

    /// Bytes on the GPU (with padding).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `Params` for each chunk, with the chunk's texture.
    pub(crate) fn chunk_params(&self) -> impl Iterator<Item = (Params, &wgpu::TextureView)> {
        self.chunks.iter().enumerate().map(|(i, (start, view))| {
            let end = self.chunks.get(i + 1).map_or(self.rows, |(s, _)| *s);
            let params = Params {
                rows: (end - start) as u32,
                cols: self.cols as u32,
                dtype: self.dtype.gpu_id(),
                row_bytes: self.dtype.row_bytes(self.cols).expect("whole blocks") as u32,
                row_start: *start as u32,
                accumulate: 0,
            };
            (params, view)
        })
    }
}

/// Binds `pipeline` once per chunk of `w`: the chunk's params and texture,
/// then `rest`; `groups` gives the grid for a chunk of that many rows.
pub(crate) fn bind_chunks(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    w: &GpuTensor,
    rest: &[&wgpu::Buffer],
    accumulate: bool,
    groups: impl Fn(u32) -> [u32; 3],
) -> Dispatch {
    let mut dispatch = Dispatch::empty(pipeline);
    for (mut params, view) in w.chunk_params() {
        params.accumulate = accumulate as u32;
        let resources = std::iter::once(wgpu::BindingResource::TextureView(view))
            .chain(rest.iter().map(|b| b.as_entire_binding()))
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

/// Binds `out (rows,) = w (rows, cols) @ x (cols,)`, one launch per chunk of
/// `w`; `x` must be a UNIFORM buffer of [`INPUT_BYTES`].
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &GpuTensor,
    x: &wgpu::Buffer,
) -> Dispatch {
    bind(device, pipeline, out, w, x, false)
}

/// Binds `out (rows,) += w (rows, cols) @ x (cols,)`: a projection with the
/// residual add in its epilogue (one dispatch and one pass over `out` fewer).
pub fn dispatch_add(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &GpuTensor,
    x: &wgpu::Buffer,
) -> Dispatch {
    bind(device, pipeline, out, w, x, true)
}

/// One thread per row of each chunk of `w`, overwriting or adding to `out`.
fn bind(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &GpuTensor,
    x: &wgpu::Buffer,
    accumulate: bool,
) -> Dispatch {
    bind_chunks(device, pipeline, w, &[x, out], accumulate, |rows| {
        grid(rows.div_ceil(64))
    })
}

/// Host reference of [`dispatch_add`]: `out += w x`.
pub fn cpu_add(out: &mut [f32], w: &Tensor, x: &[f32]) {
    let mut y = vec![0.0; out.len()];
    w.matvec(x, &mut y);
    out.iter_mut().zip(y).for_each(|(o, y)| *o += y);
}

/// Host reference: dequantize each row of `w`, then dot it with `x`.
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32]) {
    w.matvec(x, out);
}
