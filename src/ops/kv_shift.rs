//! Context shift of a layer's K cache: moved rows re-rotated by RoPE of
//! minus the distance moved (llama.cpp's K-shift). See `shaders/kv_shift.wgsl`.

use super::{Dispatch, Needs, Pipelines, Shader, Variant};
use crate::kv_cache::KvDtype;

/// `shaders/kv_shift.wgsl` after `shaders/kv.wgsl`.
pub const SHADER: Shader = Shader {
    name: "kv_shift",
    source: concat!(
        include_str!("../../shaders/kv.wgsl"),
        include_str!("../../shaders/kv_shift.wgsl")
    ),
    needs: Needs {
        storage_buffers: 3,
        uniform_bytes: 20,
        textures: 0,
        workgroup_bytes: 0,
        invocations: 64,
        subgroups: false,
    },
};

/// Matches WGSL `Params` in kv_shift.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Values in a row.
    pub kv_dim: u32,
    /// Size of one head.
    pub head_size: u32,
    /// Rows moved.
    pub rows: u32,
    /// Positions each row moves down.
    pub delta: u32,
    /// The first row written.
    pub dst: u32,
}

/// What a K-shift reads and writes.
pub struct Bindings<'a> {
    /// (positions, head_size / 2, 2) cos/sin table, at least `delta + 1` positions.
    pub table: &'a wgpu::Buffer,
    /// (rows, row) the moved K rows, as the cache stores them.
    pub src: &'a wgpu::Buffer,
    /// The layer's K cache: rows `dst .. dst + rows` written.
    pub k_cache: &'a wgpu::Buffer,
    /// Values in a row.
    pub kv_dim: usize,
    /// Size of one head.
    pub head_size: usize,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
    /// Rows moved.
    pub rows: usize,
    /// Positions each row moves down.
    pub delta: usize,
    /// The first row written.
    pub dst: usize,
}

/// The build of the kernel for a cache of `dtype`.
pub fn variant(dtype: KvDtype) -> Variant {
    Variant {
        shader: SHADER,
        constants: vec![("KV_DTYPE", f64::from(dtype.gpu_id()))],
    }
}

/// The K-shift kernel, one pipeline per cache storage type (compiled on first use).
#[derive(Debug)]
pub struct KvShift {
    pipelines: Pipelines,
}

impl KvShift {
    /// Prepares the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipelines: Pipelines::new(c, SHADER),
        }
    }

    /// Binds `k_cache[dst + r] = rope(-delta) src[r]` for each moved row r.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let params = Params {
            kv_dim: b.kv_dim as u32,
            head_size: b.head_size as u32,
            rows: b.rows as u32,
            delta: b.delta as u32,
            dst: b.dst as u32,
        };
        // A thread per pair of values, or per two quantized blocks.
        let threads = match b.kv_dtype {
            KvDtype::F32 | KvDtype::F16 => b.kv_dim.div_ceil(2),
            _ => b.kv_dim.div_ceil(64),
        };
        Dispatch::new(
            device,
            &self.pipelines.get(variant(b.kv_dtype).constants),
            bytemuck::bytes_of(&params),
            &[b.table, b.src, b.k_cache],
            [(threads as u32).div_ceil(64), b.rows as u32, 1],
        )
    }
}

/// Host reference: `rows` (rows of kv_dim keys as f32) rotated back by
/// `delta` positions, pair by pair from `table` (as the GPU reads it), and
/// rounded as `dtype` stores them.
pub fn cpu(
    rows: &mut [f32],
    kv_dim: usize,
    head_size: usize,
    table: &[f32],
    delta: usize,
    dtype: KvDtype,
) {
    for row in rows.chunks_mut(kv_dim) {
        for c in (0..kv_dim).step_by(2) {
            let at = 2 * (delta * (head_size / 2) + (c % head_size) / 2);
            let (cos, sin) = (table[at], -table[at + 1]);
            let (a, b) = (row[c], row[c + 1]);
            row[c] = a * cos - b * sin;
            row[c + 1] = a * sin + b * cos;
        }
        dtype.round_row(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use crate::rope::Rope;

    #[test]
    fn kv_shift_matches_cpu_and_undoes_rope() {
        let b = require!(Bench::new());
        let (head_size, n_kv_heads, capacity) = (16, 6, 40);
        let kv_dim = head_size * n_kv_heads;
        let rope = Rope {
            head_size,
            rope_dim: 12,
            theta: 10000.0,
            freq_factors: None,
            pairing: crate::rope::Pairing::Adjacent,
        };
        let table = rope.table(capacity);
        let tb = b.buffer(&table);
        for kv_dtype in KvDtype::ALL {
            for (rows, delta, dst) in [(1, 1, 0), (9, 5, 4), (20, 13, 7)] {
                let moved = random(rows * kv_dim, delta as u64);
                let src = b.cache(&moved, kv_dim, kv_dtype);
                let cache0 = random(capacity * kv_dim, 3);
                let cache = b.cache(&cache0, kv_dim, kv_dtype);
                let d = b.kernels.kv_shift.bind(
                    &b.gpu.device,
                    Bindings {
                        table: &tb,
                        src: &src,
                        k_cache: &cache,
                        kv_dim,
                        head_size,
                        kv_dtype,
                        rows,
                        delta,
                        dst,
                    },
                );
                b.run(&d, 1);
                let got = b.read_cache(&cache, kv_dim, kv_dtype);
                let mut expect = rounded(&moved, kv_dim, kv_dtype);
                cpu(&mut expect, kv_dim, head_size, &table, delta, kv_dtype);
                let before = rounded(&cache0, kv_dim, kv_dtype);
                let what = format!("{kv_dtype:?} rows {rows} delta {delta} dst {dst}");
                for (i, g) in got.iter().enumerate() {
                    let row = i / kv_dim;
                    if (dst..dst + rows).contains(&row) {
                        let e = expect[i - dst * kv_dim];
                        let block = &expect[(i - dst * kv_dim) / 32 * 32..][..32.min(kv_dim)];
                        let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                        assert!(
                            (g - e).abs() <= cache_tolerance(kv_dtype, e, scale),
                            "{what}: value {i}: {g} vs {e}"
                        );
                    } else {
                        assert_eq!(*g, before[i], "{what}: row {row} touched");
                    }
                }
            }
        }
        // On f32: rotating k at position p + d back by d gives k at p.
        let k: Vec<f32> = random(kv_dim, 9);
        let (mut at_p, mut at_pd) = (k.clone(), k.clone());
        let mut q = vec![0.0; kv_dim];
        rope.rotate(&mut q, &mut at_p, 3);
        rope.rotate(&mut q, &mut at_pd, 3 + 11);
        cpu(&mut at_pd, kv_dim, head_size, &table, 11, KvDtype::F32);
        assert!(max_abs_diff(&at_pd, &at_p) < 1e-5);
    }
}
