//! The KV cache: per layer, one K and one V storage buffer of (capacity,
//! kv_dim) values, allocated once ([`KvCache`]), and the bookkeeping of which
//! positions are filled ([`Positions`]), shared by every decoder.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Config;

/// How the KV cache stores values. F16 halves the cache's memory; values are
/// rounded to f16 when appended and attention accumulates in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value (packed in pairs; SHADER_F16 not needed).
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    /// `x` as the cache stores it, back in f32 (the host reference's rounding).
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvDtype::F32 => x,
            KvDtype::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

/// Which positions of a cache are filled: `0..len` of `capacity`. Every
/// decoder (GPU session, CPU reference, no-cache) checks a run of tokens
/// with [`Positions::reserve`] before doing anything, and marks it filled
/// with [`Positions::commit`] once done, so a refused run changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    len: usize,
    capacity: usize,
}

impl Positions {
    /// An empty cache of `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self { len: 0, capacity }
    }

    /// Positions filled; the next token goes at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions left.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Checks that `tokens` can run next: each below `vocab_size`, all within
    /// the room left. Returns the positions they will take; nothing changes.
    pub fn reserve(&self, tokens: &[u32], vocab_size: usize) -> Result<Range<usize>> {
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange { token, vocab_size });
        }
        if self.room() == 0 && !tokens.is_empty() {
            return Err(Error::ContextFull {
                capacity: self.capacity,
            });
        }
        if tokens.len() > self.room() {
            return Err(Error::PromptTooLong {
                tokens: tokens.len(),
                capacity: self.room(),
            });
        }
        Ok(self.len..self.len + tokens.len())
    }

    /// Marks `positions` (from [`Positions::reserve`]) filled.
    pub fn commit(&mut self, positions: Range<usize>) {
        debug_assert_eq!(positions.start, self.len, "commit what was reserved");
        debug_assert!(positions.end <= self.capacity);
        self.len = positions.end;
    }

    /// Keeps positions `0..len`, forgetting the rest (rollback).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::TruncateBeyondLength {
                requested: len,
                len: self.len,
            });
        }
        self.len = len;
        Ok(())
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// One layer's K and V cache on the GPU.
#[derive(Debug)]
pub(crate) struct LayerCache {
    /// (capacity, kv_dim) keys, position-major, as [`KvDtype`].
    pub k: wgpu::Buffer,
    /// (capacity, kv_dim) values, position-major, as [`KvDtype`].
    pub v: wgpu::Buffer,
}

/// The KV cache: per layer, one K and one V storage buffer of `(capacity,
/// kv_dim)` values stored as [`KvDtype`] (f32 or packed f16 pairs),
/// allocated once. Positions `0..len` are valid; appending writes slot
/// `len`. Nothing is ever moved: truncating only lowers `len`, and later
/// steps overwrite the slots.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) positions: Positions,
    kv_dim: usize,
    dtype: KvDtype,
}

impl KvCache {
    /// Allocates `capacity` positions for every layer of `config`. Call
    /// inside an error scope.
    pub(crate) fn new(
        device: &wgpu::Device,
        config: &Config,
        capacity: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        check_capacity(config, capacity)?;
        let kv_dim = config.kv_dim();
        let size = capacity as u64 * kv_dim as u64 * dtype.bytes();
        let limits = device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if size > limit {
            return Err(Error::OutOfMemory {
                what: format!("one layer's K cache ({capacity} positions x {kv_dim} values)"),
                requested: size,
                limit: Some(limit),
            });
        }
        let buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                // COPY_SRC: lets tests and tools read the cache back.
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let layers = (0..config.n_layers)
            .map(|_| LayerCache {
                k: buffer("k_cache"),
                v: buffer("v_cache"),
            })
            .collect();
        Ok(Self {
            layers,
            positions: Positions::new(capacity),
            kv_dim,
            dtype,
        })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.positions.capacity()
    }

    /// How values are stored.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Bytes allocated: `2 x n_layers x capacity x kv_dim x (4 for f32, 2 for f16)`.
    pub fn bytes(&self) -> u64 {
        self.capacity() as u64 * self.bytes_per_position()
    }

    /// Bytes one position takes across all layers (K and V).
    pub fn bytes_per_position(&self) -> u64 {
        2 * self.layers.len() as u64 * self.kv_dim as u64 * self.dtype.bytes()
    }

    /// Empties the cache (no GPU work: slots are overwritten as they refill).
    pub fn reset(&mut self) {
        self.positions.reset();
    }

    /// Keeps positions `0..len`, forgetting the rest (rollback).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.positions.truncate(len)
    }

    /// Copies layer `layer`'s K and V rows `0..len` back to the host, each
    /// (len, kv_dim) as f32.
    pub(crate) fn read(&self, gpu: &Gpu, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let lc = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        let bytes = (self.len() * self.kv_dim) as u64 * self.dtype.bytes();
        if bytes == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let read = |b| -> Result<Vec<f32>> {
            let raw = gpu.read_buffer(b, bytes)?;
            Ok(match self.dtype {
                KvDtype::F32 => bytemuck::pod_collect_to_vec(&raw),
                KvDtype::F16 => raw
                    .chunks_exact(2)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect(),
            })
        };
        Ok((read(&lc.k)?, read(&lc.v)?))
    }
}

/// Checks a capacity against the model's context length.
pub(crate) fn check_capacity(config: &Config, capacity: usize) -> Result<()> {
    if capacity == 0 || capacity > config.seq_len {
        return Err(Error::InvalidCapacity {
            requested: capacity,
            max: config.seq_len,
        });
    }
    Ok(())
}
