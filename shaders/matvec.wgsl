// Matrix-vector product (projection): out[out_offset + r] = W[r] . x, for a
// weight matrix (or one row-chunk of it) stored as any dtype of dequant.wgsl,
// whose source is prepended to this file.
//
// Bindings (group 0):
//   0 params: Params (uniform)                  { rows, cols, dtype, row_bytes, out_offset }
//   1 w:      texture_2d<u32>                   (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 x:      array<vec4<f32>, 4096> (uniform)  (cols,) zero-padded to 16384 values
//   3 out:    array<f32> (storage)              (out_offset + rows,)
//
// One thread per row, 64 rows per workgroup, f32 accumulation, no barriers.
// x is a uniform buffer: every thread reads the same x[c], which software
// adapters broadcast instead of loading per thread. F32 and F16 rows that
// start on a texel read whole texels (4 or 8 values); other layouts decode
// value by value. Grids of more than 65535 workgroups spill into y.

struct Params {
    rows: u32,
    cols: u32,
    dtype: u32,
    row_bytes: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
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
    let aligned = row % 16u == 0u;
    var acc = vec4<f32>(0.0);
    if params.dtype == DTYPE_F32 && aligned && params.cols % 4u == 0u {
        let t0 = row / 16u;
        for (var k = 0u; k < params.cols / 4u; k++) {
            acc += bitcast<vec4<f32>>(texel(t0 + k)) * x[k];
        }
    } else if params.dtype == DTYPE_F16 && aligned && params.cols % 8u == 0u {
        let t0 = row / 16u;
        for (var k = 0u; k < params.cols / 8u; k++) {
            let v = texel(t0 + k);
            acc += vec4(unpack2x16float(v.x), unpack2x16float(v.y)) * x[2u * k];
            acc += vec4(unpack2x16float(v.z), unpack2x16float(v.w)) * x[2u * k + 1u];
        }
    } else {
        for (var c = 0u; c < params.cols; c++) {
            acc.x += weight(params.dtype, row, c) * x[c / 4u][c % 4u];
        }
    }
    out[params.out_offset + r] = acc.x + acc.y + acc.z + acc.w;
}
