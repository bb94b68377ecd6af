//! Microbenchmarks of the adapter itself, measured in the same run as the
//! models so that every rate can be compared with them: its copy bandwidth
//! and the fixed cost of a submit and of a kernel launch.

use std::time::Instant;

use kvgpu::wgpu;
use kvgpu::Gpu;

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Bytes per second of a buffer-to-buffer copy on the device (median of 5).
pub fn copy_bandwidth(gpu: &Gpu) -> f64 {
    let size = 64u64 << 20;
    let make = |usage| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench copy"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make(wgpu::BufferUsages::COPY_SRC);
    let dst = make(wgpu::BufferUsages::COPY_DST);
    let times: Vec<f64> = (0..6)
        .map(|_| {
            let t = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for _ in 0..4 {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
            }
            gpu.queue.submit([enc.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .expect("poll");
            t.elapsed().as_secs_f64()
        })
        .skip(1) // first touch of the pages
        .collect();
    4.0 * size as f64 / median(times)
}

/// The adapter's fixed costs of a decode step (medians of 30): seconds to
/// submit a pass and read 4 bytes back, and seconds per launch of an empty
/// kernel (32 launches in one pass, each with its own bind group, as a
/// decode step records them). A step of `d` launches can run no faster than
/// `floor + d * launch`, whatever its kernels do.
pub fn launch_costs(gpu: &Gpu) -> (f64, f64) {
    let d = &gpu.device;
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench empty kernel"),
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read_write> o: array<f32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                 o[g.x] += 1.0;
             }"
            .into(),
        ),
    });
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench empty kernel"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let buffer = |size, usage| {
        d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench launch"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let out = buffer(
        256,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let readback = buffer(
        4,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let groups: Vec<wgpu::BindGroup> = (0..32)
        .map(|_| {
            d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: out.as_entire_binding(),
                }],
            })
        })
        .collect();
    let step = |launches: usize| {
        let times = (0..31).map(|_| {
            let t = Instant::now();
            let mut enc = d.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                for g in &groups[..launches] {
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(1, 1, 1);
                }
            }
            enc.copy_buffer_to_buffer(&out, 0, &readback, 0, 4);
            gpu.queue.submit([enc.finish()]);
            readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            d.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            readback.unmap();
            t.elapsed().as_secs_f64()
        });
        median(times.skip(1).collect())
    };
    let floor = step(0);
    (floor, (step(32) - floor) / 32.0)
}
