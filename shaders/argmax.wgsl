// Argmax of the logits: the index of the largest value, the lowest index on
// ties (as llama2.c). Lets greedy decoding read back 4 bytes, not the logits.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { n }
//   1 x:      array<f32> (storage)   (n,)
//   2 out:    array<u32> (storage)   (1,)
//
// A single workgroup of 256 threads: strided scan, then a tree reduction on
// (value, index) pairs. Logits holding a NaN or an infinity give
// 0xffffffff (no token: the host reports them).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;
// Set by any thread that meets a NaN or an infinity (zero at the start).
var<workgroup> nonfinite: atomic<u32>;

// Whether v is a NaN or an infinity: its exponent bits all set (a
// comparison could be folded away by a compiler that assumes no NaNs).
fn is_nonfinite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var v = -3.402823e38;
    var idx = 0xffffffffu;
    for (var i = lid; i < params.n; i += WG) {
        if is_nonfinite(x[i]) {
            atomicStore(&nonfinite, 1u);
        }
        if idx == 0xffffffffu || x[i] > v {
            v = x[i];
            idx = i;
        }
    }
    best_val[lid] = v;
    best_idx[lid] = idx;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let ov = best_val[lid + stride];
            let oi = best_idx[lid + stride];
            let mine = best_idx[lid];
            if oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_val[lid] || (ov == best_val[lid] && oi < mine)) {
                best_val[lid] = ov;
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[0] = select(best_idx[0], 0xffffffffu, atomicLoad(&nonfinite) != 0u);
    }
}
