//! Where a pass's GPU time goes: each kernel in its own compute pass between
//! two timestamp queries ([`Session::profile`]).

use crate::error::{Error, Result};
use crate::pass::Readback;
use crate::session::Session;

/// GPU time of each kernel of one pass, from timestamp queries.
#[derive(Clone, Debug)]
pub struct Profile {
    /// (kernel, seconds) in the order they ran; one entry per launch.
    pub kernels: Vec<(&'static str, f64)>,
}

impl Profile {
    /// Sum of the kernels' times.
    pub fn total(&self) -> f64 {
        self.kernels.iter().map(|(_, t)| t).sum()
    }

    /// (kernel, total seconds, launches) per kernel name, largest first.
    pub fn by_kernel(&self) -> Vec<(&'static str, f64, usize)> {
        let mut out: Vec<(&'static str, f64, usize)> = Vec::new();
        for &(name, t) in &self.kernels {
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => {
                    e.1 += t;
                    e.2 += 1;
                }
                None => out.push((name, t, 1)),
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

impl Session {
    /// Runs one pass over `tokens` (one token: a decode step; up to
    /// [`Session::prefill_tokens`]: a prefill pass) as
    /// [`Session::forward_greedy`] does, but with each kernel in its own
    /// compute pass between two timestamp queries, and returns each kernel's
    /// GPU time. Needs the device feature `TIMESTAMP_QUERY` ([`Gpu::new`](crate::Gpu::new)
    /// asks for it where the adapter has it). Allocates its query buffers
    /// each call: for measurement, not decoding.
    pub fn profile(&mut self, tokens: &[u32]) -> Result<Profile> {
        let gpu = self.model.gpu().clone();
        if !gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::Unsupported(
                "profiling needs the TIMESTAMP_QUERY device feature",
            ));
        }
        let positions = self.reserve(tokens)?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::EmptyInput);
        }
        if n > self.batch {
            return Err(Error::PassTooLong {
                tokens: n,
                max: self.batch,
            });
        }
        let pos = positions.start;
        let mut names = Vec::new();
        self.dispatches
            .each(pos + n, n, Readback::Argmax, |name, d| {
                names.extend(std::iter::repeat_n(name, d.launches(n as u32)))
            });
        let count = 2 * names.len() as u32;
        let ticks = gpu.scoped("profiling a pass", || {
            let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kvgpu profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let size = count as u64 * 8;
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvgpu profile resolve"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            self.stage(&mut encoder, pos, n, Some(tokens));
            let mut i = 0;
            self.dispatches
                .each(pos + n, n, Readback::Argmax, |name, d| {
                    for launch in 0..d.launches(n as u32) {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(name),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: &queries,
                                beginning_of_pass_write_index: Some(2 * i),
                                end_of_pass_write_index: Some(2 * i + 1),
                            }),
                        });
                        d.record_launch(&mut pass, launch, n as u32, (pos + n) as u32);
                        i += 1;
                    }
                });
            encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
            gpu.queue.submit([encoder.finish()]);
            resolved
        })?;
        self.submissions += 1;
        self.cache.commit(positions);
        let raw = gpu.read_buffer(&ticks, count as u64 * 8)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(Profile {
            kernels: names
                .into_iter()
                .zip(ticks.chunks_exact(2))
                .map(|(name, t)| (name, t[1].saturating_sub(t[0]) as f64 * period))
                .collect(),
        })
    }
}
