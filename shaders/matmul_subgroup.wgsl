// Matrix-matrix product, the build for adapters with subgroups of at least
// 8 invocations (wgpu's SUBGROUP feature): each thread of a subgroup reads
// one of 8 input values and broadcasts it to the others, one read where
// every thread made 8. Every thread reads the same inputs (the tile's
// tokens, in the same order), so lane i's value is input i whatever the
// subgroup's size and whichever threads form it. On lavapipe, whose
// reads are per-thread gathers, SmolLM2's projections of 8 tokens run
// about 1.6x faster. The product is matmul_tile.wgsl, prepended to this
// file.

// This thread's index in its subgroup.
var<private> lane: u32;

// Inputs 8 k .. 8 k + 8 of the tile (vec4s k, k + 1 of x): lane i reads
// value i % 8, lanes 0..7 broadcast theirs.
fn input8(k: u32) -> mat2x4<f32> {
    let v = x[k + (lane % 8u) / 4u][lane % 4u];
    return mat2x4(
        vec4(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u)),
        vec4(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u)),
    );
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    lane = subgroup_lane;
    tile(wg.x + wg.y * num_wg.x, lid);
}
