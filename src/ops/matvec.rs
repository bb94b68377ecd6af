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
}

/// A weight matrix on the GPU, raw bytes as in the file, in row-chunks that
/// each fit one storage binding.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// Storage type.
    pub dtype: DType,
    /// Rows of the whole matrix.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// (first row, buffer of its rows).
    pub chunks: Vec<(usize, wgpu::Buffer)>,
}

impl GpuTensor {
    /// Uploads `t`, splitting it into chunks of at most `limit` bytes.
    /// `what` names the tensor in errors. Call inside an error scope.
    pub fn upload(device: &wgpu::Device, t: &Tensor, limit: u64, what: &str) -> Result<Self> {
        let row_bytes = t.row_bytes() as u64;
        // Each chunk's byte length is padded to 4 on upload.
        let rows_per_chunk =
            (limit.saturating_sub(3) / row_bytes.max(1)).min(t.rows as u64) as usize;
        if rows_per_chunk == 0 || row_bytes > u32::MAX as u64 {
            return Err(Error::ModelTooLarge {
                what: format!("one row of {what}"),
                needed: row_bytes,
                limit,
            });
        }
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < t.rows {
            let end = (start + rows_per_chunk).min(t.rows);
            let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: t.slice_rows(start..end).bytes(),
                usage: wgpu::BufferUsages::STORAGE,
            });
            chunks.push((start, buffer));
            start = end;
        }
        Ok(Self {
            dtype: t.dtype,
            rows: t.rows,
            cols: t.cols,
            chunks,
        })
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, b)| b.size()).sum()
    }

    /// `Params` for each chunk, with the chunk's buffer.
    pub(crate) fn chunk_params(&self) -> impl Iterator<Item = (Params, &wgpu::Buffer)> {
        self.chunks.iter().enumerate().map(|(i, (start, buf))| {
            let end = self.chunks.get(i + 1).map_or(self.rows, |(s, _)| *s);
            let params = Params {
                rows: (end - start) as u32,
                cols: self.cols as u32,
                dtype: self.dtype.gpu_id(),
                row_bytes: self.dtype.row_bytes(self.cols).expect("whole blocks") as u32,
                row_start: *start as u32,
            };
            (params, buf)
        })
    }
}

/// Binds `pipeline` once per chunk of `w`: the chunk's params and buffer,
/// then `rest`; `groups` gives the grid for a chunk of that many rows.
pub(crate) fn bind_chunks(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    w: &GpuTensor,
    rest: &[&wgpu::Buffer],
    groups: impl Fn(u32) -> [u32; 3],
) -> Dispatch {
    let mut dispatch: Option<Dispatch> = None;
    for (params, buf) in w.chunk_params() {
        let buffers: Vec<&wgpu::Buffer> =
            std::iter::once(buf).chain(rest.iter().copied()).collect();
        let bytes = bytemuck::bytes_of(&params);
        let grid = groups(params.rows);
        match &mut dispatch {
            None => dispatch = Some(Dispatch::new(device, pipeline, bytes, &buffers, grid)),
            Some(d) => d.push(device, bytes, &buffers, grid),
        }
    }
    dispatch.expect("a tensor has at least one chunk")
}

/// Binds `out (rows,) = w (rows, cols) @ x (cols,)`, one launch per chunk of `w`.
pub fn dispatch(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    out: &wgpu::Buffer,
    w: &GpuTensor,
    x: &wgpu::Buffer,
) -> Dispatch {
    bind_chunks(device, pipeline, w, &[x, out], |rows| {
        grid(rows.div_ceil(64))
    })
}

/// Host reference: dequantize each row of `w`, then dot it with `x`.
pub fn cpu(out: &mut [f32], w: &Tensor, x: &[f32]) {
    w.matvec(x, out);
}
