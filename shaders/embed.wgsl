// Token embedding: out = row `step.token` of the embedding table, decoded to
// f32. For a table split into row-chunks, each chunk's dispatch writes only if
// the token falls in its rows. dequant.wgsl is prepended to this file.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols, dtype, row_bytes, row_start }
//   1 w:      texture_2d<u32>        (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 step:   Step (uniform)         { pos, token }
//   3 out:    array<f32> (storage)   (cols,)
//
// One thread per column.

struct Params {
    rows: u32,
    cols: u32,
    dtype: u32,
    row_bytes: u32,
    row_start: u32,
}

struct Step {
    pos: u32,
    token: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= params.cols || step.token < params.row_start || step.token - params.row_start >= params.rows {
        return;
    }
    out[c] = weight(params.dtype, (step.token - params.row_start) * params.row_bytes, c);
}
