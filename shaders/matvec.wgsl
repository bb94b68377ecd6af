// Matrix-vector product, the build for every adapter: each thread reads
// the inputs itself. The product is matvec_row.wgsl, prepended to this
// file.

// x[k].
fn input(k: u32) -> vec4<f32> {
    return x[k];
}

// residual[0..4 n4] . residual[0..4 n4], summed in every thread.
fn sum_squares(n4: u32) -> f32 {
    var ss = vec4<f32>(0.0);
    for (var k = 0u; k < n4; k++) {
        let v = residual[k];
        ss += v * v;
    }
    return ss.x + ss.y + ss.z + ss.w;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    row(wg.x + wg.y * num_wg.x, lid);
}
