// Matrix-vector product (projection): out[out_offset + r] = W[r] . x, for a
// weight matrix (or one row-chunk of it) stored as any dtype of dequant.wgsl,
// whose source is prepended to this file.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols, dtype, row_bytes, out_offset }
//   1 w:      array<u32> (storage)   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 x:      array<f32> (storage)   (cols,)
//   3 out:    array<f32> (storage)   (out_offset + rows,)
//
// One thread per row, 64 rows per workgroup, f32 accumulation, no barriers.
// Grids of more than 65535 workgroups spill into y.

struct Params {
    rows: u32,
    cols: u32,
    dtype: u32,
    row_bytes: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.x + wg.y * num_wg.x) * 64u + lid;
    if r >= params.rows {
        return;
    }
    let row = r * params.row_bytes;
    var acc = 0.0;
    if params.dtype == DTYPE_F32 {
        let base = row / 4u;
        for (var c = 0u; c < params.cols; c++) {
            acc += bitcast<f32>(w[base + c]) * x[c];
        }
    } else {
        for (var c = 0u; c < params.cols; c++) {
            acc += weight(params.dtype, row, c) * x[c];
        }
    }
    out[params.out_offset + r] = acc;
}
