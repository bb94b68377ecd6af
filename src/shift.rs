//! Context shift: when the cache is full, keep the first `n_keep`
//! positions (attention sinks: the prompt's start), drop the next
//! `n_discard`, and move the rest down. K is re-rotated on the GPU by RoPE
//! of minus the distance moved (llama.cpp's K-shift, `ops::kv_shift`), V is
//! copied; nothing is recomputed from tokens. The CPU reference does the
//! same on the host.

use crate::cpu::CpuSession;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::ops::{kv_shift, WHOLE_GRID};
use crate::session::Session;

/// Checks a shift of a cache holding `len` positions.
fn check(n_keep: usize, n_discard: usize, len: usize) -> Result<()> {
    if n_discard == 0 || n_keep.checked_add(n_discard).is_none_or(|end| end > len) {
        return Err(Error::InvalidShift {
            n_keep,
            n_discard,
            len,
        });
    }
    Ok(())
}

impl Session {
    /// Drops positions `n_keep .. n_keep + n_discard` and moves the later
    /// ones down by `n_discard`, re-rotating their keys, in one submit:
    /// the cache then holds `len - n_discard` positions and decoding goes
    /// on as if the dropped tokens had never been there. A shift that does
    /// not fit the filled positions is [`Error::InvalidShift`] and changes
    /// nothing.
    pub fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        let len = self.cache.len();
        check(n_keep, n_discard, len)?;
        windowless(self.model.config())?;
        let rows = len - n_keep - n_discard;
        if rows > 0 {
            let model = &self.model;
            let c = model.config();
            let gpu = model.gpu().clone();
            let cache: &KvCache = &self.cache;
            let dtype = cache.dtype();
            let row = dtype.row_bytes(c.kv_dim());
            let bytes = rows as u64 * row;
            let (from, to) = ((n_keep + n_discard) as u64 * row, n_keep as u64 * row);
            gpu.scoped("shifting the cache", || {
                let device = &gpu.device;
                // The moved rows of one layer at a time: reading and writing never overlap.
                let moved = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kvgpu shift"),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut encoder = device.create_command_encoder(&Default::default());
                for layer in &cache.layers {
                    encoder.copy_buffer_to_buffer(&layer.k, from, &moved, 0, bytes);
                    let d = model.kernels.kv_shift.bind(
                        device,
                        kv_shift::Bindings {
                            table: model.rope_table(0),
                            src: &moved,
                            k_cache: &layer.k,
                            kv_dim: c.kv_dim(),
                            head_size: c.head_size,
                            kv_dtype: dtype,
                            rows,
                            delta: n_discard,
                            dst: n_keep,
                        },
                    );
                    d.record(
                        &mut encoder.begin_compute_pass(&Default::default()),
                        1,
                        WHOLE_GRID,
                    );
                    encoder.copy_buffer_to_buffer(&layer.v, from, &moved, 0, bytes);
                    encoder.copy_buffer_to_buffer(&moved, 0, &layer.v, to, bytes);
                }
                gpu.queue.submit([encoder.finish()]);
            })?;
            self.submissions += 1;
        }
        self.cache.truncate(len - n_discard)
    }
}

impl CpuSession<'_> {
    /// [`Session::shift`] on the host: the same moves and rotations.
    pub fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        let len = self.len();
        check(n_keep, n_discard, len)?;
        windowless(&self.model().config)?;
        let c = &self.model().config;
        let (kv, capacity) = (c.kv_dim(), self.capacity());
        let table = c.rope().table(n_discard + 1);
        let dtype = self.kv_dtype();
        // The shift rotates adjacent pairs: a half-split cache's heads are
        // put in adjacent order for it, and back.
        let order = c
            .block()
            .rope_pairing
            .adjacent_order(c.head_size, c.rope_dim);
        let reorder = |rows: &mut [f32], forward: bool| {
            for head in rows.chunks_mut(c.head_size) {
                let stored = head.to_vec();
                for (r, &o) in order.iter().enumerate() {
                    match forward {
                        true => head[r] = stored[o],
                        false => head[o] = stored[r],
                    }
                }
            }
        };
        let (keys, values) = self.caches();
        for l in 0..c.n_layers {
            let layer = l * capacity * kv;
            let (src, dst) = (layer + (n_keep + n_discard) * kv, layer + n_keep * kv);
            let n = (len - n_keep - n_discard) * kv;
            keys.copy_within(src..src + n, dst);
            values.copy_within(src..src + n, dst);
            reorder(&mut keys[dst..dst + n], true);
            kv_shift::cpu(
                &mut keys[dst..dst + n],
                kv,
                c.head_size,
                &table,
                n_discard,
                dtype,
            );
            reorder(&mut keys[dst..dst + n], false);
        }
        self.truncate(len - n_discard)
    }
}

/// A shift re-rotates keys by one RoPE table and moves rows as a flat
/// cache holds them: models with sliding-window layers (rings, a RoPE base
/// of their own) are refused.
fn windowless(c: &crate::model::Config) -> Result<()> {
    match (0..c.n_layers).any(|l| c.layer_window(l).is_some()) {
        true => Err(crate::error::Error::Unsupported(
            "context shift of a model with sliding-window layers",
        )),
        false => Ok(()),
    }
}
