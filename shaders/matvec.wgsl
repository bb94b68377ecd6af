// Matrix-vector product (projection): out = W x.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols }
//   1 w:      array<f32> (storage)   (rows, cols) row-major
//   2 x:      array<f32> (storage)   (cols,)
//   3 out:    array<f32> (storage)   (rows,)
//
// One workgroup per row: its 64 threads stride over the columns, then sum
// their partial dot products in workgroup memory. Rows beyond 65535 use the
// y dimension of the grid (row = wg.x + wg.y * num_wg.x).

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.x + wg.y * num_wg.x;
    if row >= params.rows {
        return; // whole workgroup leaves together: `row` is uniform
    }
    let base = row * params.cols;
    var acc = 0.0;
    for (var c = lid; c < params.cols; c += WG) {
        acc += w[base + c] * x[c];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[row] = partial[0];
    }
}
