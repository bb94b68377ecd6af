//! Argmax of the logits on the GPU (greedy decoding reads back 4 bytes). See
//! `shaders/argmax.wgsl`.

use super::{Dispatch, Needs, Shader, Variant};

/// `shaders/argmax.wgsl`.
pub const SHADER: Shader = Shader {
    name: "argmax",
    source: include_str!("../../shaders/argmax.wgsl"),
    needs: Needs {
        storage_buffers: 2,
        uniform_bytes: 4,
        textures: 0,
        workgroup_bytes: 2052,
        invocations: 256,
        subgroups: false,
    },
};

/// Matches WGSL `Params` in argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Vector length.
    pub n: u32,
}

/// What an argmax reads and writes.
pub struct Bindings<'a> {
    /// (1,) u32: the index of the largest value.
    pub out: &'a wgpu::Buffer,
    /// (n,) f32 values.
    pub x: &'a wgpu::Buffer,
    /// Values in `x`.
    pub n: usize,
}

/// The argmax kernel.
#[derive(Clone, Debug)]
pub struct Argmax {
    pipeline: wgpu::ComputePipeline,
}

impl Argmax {
    /// Compiles the kernel.
    pub fn new(c: &super::Compiler) -> Self {
        Self {
            pipeline: super::pipeline(c, Variant::plain(SHADER)),
        }
    }

    /// Binds `out (1,) u32 = argmax(x (n,))`, lowest index on ties.
    pub fn bind(&self, device: &wgpu::Device, b: Bindings) -> Dispatch {
        let params = Params { n: b.n as u32 };
        Dispatch::new(
            device,
            &self.pipeline,
            bytemuck::bytes_of(&params),
            &[b.x, b.out],
            [1, 1, 1],
        )
    }
}

/// Host reference: index of the largest value, the first one on ties
/// (run.c's `sample_argmax`).
pub fn cpu(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn argmax_matches_cpu_and_takes_the_first_of_ties() {
        let b = require!(Bench::new());
        for (n, seed) in [(1, 1), (257, 2), (32000, 3), (70001, 4)] {
            let mut x = random(n, seed);
            if n > 10 {
                // Two equal maxima: the lower index wins.
                x[n - 3] = 5.0;
                x[n / 3] = 5.0;
            }
            let xb = b.buffer(&x);
            let out = b.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 4,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let d = b.kernels.argmax.bind(
                &b.gpu.device,
                Bindings {
                    out: &out,
                    x: &xb,
                    n,
                },
            );
            b.run(&d, 1);
            let got: Vec<u32> = bytemuck::pod_collect_to_vec(&b.gpu.read_buffer(&out, 4).unwrap());
            assert_eq!(got[0], cpu(&x), "argmax of {n}");
        }
    }
}
