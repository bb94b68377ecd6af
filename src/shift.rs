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
    /// on as if the dropped tokens had never been there. A sliding-window
    /// layer moves what its ring holds; a shift after which the next
    /// token's window would read positions no ring holds is
    /// [`Error::WindowShift`]. A shift that does not fit the filled
    /// positions is [`Error::InvalidShift`]. Either changes nothing.
    pub fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        let len = self.cache.len();
        check(n_keep, n_discard, len)?;
        let c = self.model.config().clone();
        let oldest = self.cache.oldest_held();
        let window = (0..c.n_layers).filter_map(|l| c.layer_window(l)).max();
        let held_after = match window {
            Some(window) => ring_after_shift(n_keep, n_discard, len, window, oldest)?,
            None => 0,
        };
        // Positions from..len move down: a ring's from its oldest, if later.
        let from = |layer: &crate::kv_cache::LayerCache| match layer.window {
            Some(_) => (n_keep + n_discard).max(oldest),
            None => n_keep + n_discard,
        };
        let most = len - n_keep - n_discard;
        if most > 0 {
            let model = &self.model;
            let gpu = model.gpu().clone();
            let cache: &KvCache = &self.cache;
            let dtype = cache.dtype();
            let row = dtype.row_bytes(c.kv_dim());
            gpu.scoped("shifting the cache", || {
                let device = &gpu.device;
                // The moved rows in position order; one destination run of
                // them at a time: reading and writing never overlap.
                let buffer = |label| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size: most as u64 * row,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                };
                let (moved_k, moved_v, run) =
                    (buffer("shift k"), buffer("shift v"), buffer("shift run"));
                let mut encoder = device.create_command_encoder(&Default::default());
                for (i, layer) in cache.layers.iter().enumerate() {
                    let (ring, from) = (layer.rows as u64, from(layer));
                    let rows = (len - from) as u64;
                    for (at, r, n) in runs(from as u64, rows, ring) {
                        encoder.copy_buffer_to_buffer(
                            &layer.k,
                            r * row,
                            &moved_k,
                            at * row,
                            n * row,
                        );
                        encoder.copy_buffer_to_buffer(
                            &layer.v,
                            r * row,
                            &moved_v,
                            at * row,
                            n * row,
                        );
                    }
                    let to = (from - n_discard) as u64;
                    for (at, r, n) in runs(to, rows, ring) {
                        encoder.copy_buffer_to_buffer(&moved_k, at * row, &run, 0, n * row);
                        let d = model.kernels.kv_shift.bind(
                            device,
                            kv_shift::Bindings {
                                table: &model.rope_table(i),
                                src: &run,
                                k_cache: &layer.k,
                                kv_dim: c.kv_dim(),
                                head_size: c.head_size,
                                kv_dtype: dtype,
                                rows: n as usize,
                                delta: n_discard,
                                dst: r as usize,
                            },
                        );
                        d.record(
                            &mut encoder.begin_compute_pass(&Default::default()),
                            1,
                            WHOLE_GRID,
                        );
                        encoder.copy_buffer_to_buffer(
                            &moved_v,
                            at * row,
                            &layer.v,
                            r * row,
                            n * row,
                        );
                    }
                }
                gpu.queue.submit([encoder.finish()]);
            })?;
            self.submissions += 1;
        }
        match window {
            Some(_) => {
                self.cache.set_len(len - n_discard, held_after);
                Ok(())
            }
            None => self.cache.truncate(len - n_discard),
        }
    }
}

/// The rows of positions `from..from + n` in a cache of `ring` rows
/// (position p in row p % ring), as runs (offset in the positions, first
/// row, rows): one, or two where they wrap.
fn runs(from: u64, n: u64, ring: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let first = n.min(ring - from % ring);
    [(0, from % ring, first), (first, 0, n - first)]
        .into_iter()
        .filter(|&(_, _, n)| n > 0)
}

/// Checks that after a shift the next token's window (the `window`
/// positions up to it) reads only positions the rings hold, where before
/// it they hold `oldest..len`; returns the oldest position they hold
/// after it, else [`Error::WindowShift`].
fn ring_after_shift(
    n_keep: usize,
    n_discard: usize,
    len: usize,
    window: usize,
    oldest: usize,
) -> Result<usize> {
    let next = len - n_discard;
    let reads = (next + 1).saturating_sub(window);
    // Kept positions it reads stay where they were; moved ones came from
    // n_discard further on.
    let kept_ok = reads >= n_keep || reads >= oldest;
    let moved_ok = reads.max(n_keep) + n_discard >= oldest || reads.max(n_keep) >= next;
    if !(kept_ok && moved_ok) {
        return Err(Error::WindowShift {
            n_keep,
            n_discard,
            oldest,
        });
    }
    Ok(match oldest <= n_keep + n_discard {
        true => oldest.min(n_keep),
        false => oldest - n_discard,
    })
}

impl CpuSession<'_> {
    /// [`Session::shift`] on the host: the same moves and rotations.
    pub fn shift(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        let len = self.len();
        check(n_keep, n_discard, len)?;
        let c = &self.model().config;
        let (kv, capacity) = (c.kv_dim(), self.capacity());
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
                &c.layer_rope(l).table(n_discard + 1),
                n_discard,
                dtype,
            );
            reorder(&mut keys[dst..dst + n], false);
        }
        self.truncate(len - n_discard)
    }
}
