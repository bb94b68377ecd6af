// Matrix-vector product, the build for adapters with subgroups of at least
// 8 invocations (wgpu's SUBGROUP feature, as matmul_subgroup.wgsl): each
// thread of a subgroup reads one of 4 input values and broadcasts it to
// the others, one read where every thread made 4. Every thread reads the
// same inputs, so lane i's value is input i whatever the subgroup's size
// and whichever threads form it. The product is matvec_row.wgsl, prepended
// to this file.

// This thread's index in its subgroup.
var<private> lane: u32;

// Lanes 0..3's values v, to every lane.
fn broadcast4(v: f32) -> vec4<f32> {
    return vec4(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

// x[k]: lane i reads value i % 4.
fn input(k: u32) -> vec4<f32> {
    return broadcast4(x[k][lane % 4u]);
}

// residual[0..4 n4] . residual[0..4 n4]: the i-th of a subgroup's m threads sums every
// m-th vec4 from its i-th, then the subgroup adds the threads' sums (i and m
// count the threads running, whatever the subgroup's size: every thread of
// a subgroup gets the same sum, and subgroups of one size the same bits).
fn sum_squares(n4: u32) -> f32 {
    let i = subgroupExclusiveAdd(1u);
    let m = subgroupAdd(1u);
    var ss = vec4<f32>(0.0);
    for (var k = i; k < n4; k += m) {
        let v = residual[k];
        ss += v * v;
    }
    return subgroupAdd(ss.x + ss.y + ss.z + ss.w);
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    lane = subgroup_lane;
    row(wg.x + wg.y * num_wg.x, lid);
}
