// Matrix-vector product (projection): out = W x.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols }
//   1 w:      array<f32> (storage)   (rows, cols) row-major
//   2 x:      array<f32> (storage)   (cols,)
//   3 out:    array<f32> (storage)   (rows,)
//
// One thread per row, 64 rows per workgroup, no barriers. Grids of more than
// 65535 workgroups spill into y (row = (wg.x + wg.y * num_wg.x) * 64 + lid).

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.x + wg.y * num_wg.x) * 64u + lid;
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    var acc = 0.0;
    for (var c = 0u; c < params.cols; c++) {
        acc += w[base + c] * x[c];
    }
    out[row] = acc;
}
