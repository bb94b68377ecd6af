// Matrix-matrix product, the build for every adapter: each thread reads
// the inputs itself. The product is matmul_tile.wgsl, prepended to this
// file.

// Inputs 8 k .. 8 k + 8 of the tile (vec4s k, k + 1 of x).
fn input8(k: u32) -> mat2x4<f32> {
    return mat2x4(x[k], x[k + 1u]);
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    tile(wg.x + wg.y * num_wg.x, lid);
}
