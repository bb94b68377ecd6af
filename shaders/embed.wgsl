// Token embedding: out[t] = row tokens[t] of the embedding table, decoded to
// f32 and times `scale` (1, or sqrt(dim) for Gemma), for each token of the pass. For a table split into row-chunks, each
// chunk's dispatch writes only the tokens that fall in its rows. Built with
// the override NEXT_NORM = true, it also writes xg[t] = out[t] * g, the
// input of the NORM projection (matvec_row.wgsl) that reads out next.
// dequant.wgsl is prepended to this file.
//
// Bindings (group 0):
//   0 params: Params (uniform)       { rows, cols, row_bytes, out_offset (the chunk's first row), .., out_stride, .., scale } (dequant.wgsl)
//   1 w:      texture_2d<u32>        (rows, row_bytes) raw bytes (dequant.wgsl)
//   2 tokens: array<u32> (storage)   (n,)
//   3 out:    array<f32> (storage)   (n, out_stride), cols values used per row
//   4 g:      array<f32> (storage)   (cols,) the next RMSNorm's weights; NEXT_NORM only (else tokens)
//   5 xg:     array<f32> (storage)   (n, out_stride) out * g; NEXT_NORM only (else out)
//
// One thread per 8 columns (whole texels, as dequant.wgsl decodes them);
// grid z = token.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> xg: array<f32>;

// Whether xg = out * g is written too.
override NEXT_NORM: bool = false;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = 8u * gid.x;
    let t = gid.z;
    let token = tokens[t];
    if c >= params.cols || token < params.out_offset || token - params.out_offset >= params.rows {
        return;
    }
    let v = x8(w, DTYPE, (token - params.out_offset) * params.row_bytes, c);
    for (var i = 0u; i < min(8u, params.cols - c); i++) {
        let o = t * params.out_stride + c + i;
        let x = v[i / 4u][i % 4u] * params.scale;
        out[o] = x;
        if NEXT_NORM {
            xg[o] = x * g[c + i];
        }
    }
}
