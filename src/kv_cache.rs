//! The KV cache: per layer, one K and one V storage buffer of (rows, kv_dim)
//! values, allocated once ([`KvCache`]): `capacity` rows, or, for a layer
//! that attends over a sliding window, a ring of as many as it can still
//! read; and the bookkeeping of which positions are filled ([`Positions`]),
//! shared by every decoder.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Config;
use crate::tensor::{dequantize, quantize, DType};

/// How the KV cache stores values. F16 halves the cache's memory, Q8_0
/// and Q4_0 (GGML's 32-value blocks with an f16 scale) take 34/32 and
/// 18/32 bytes a value; values are rounded (quantized) when appended and
/// attention accumulates in f32.
///
/// A row of `kv_dim` values on the GPU: f32 bits; f16 pairs, one word each;
/// or, quantized, the row's block scales as f16 pairs (`ceil(blocks / 2)`
/// words) and then each block's data (Q8_0: 32 i8, 8 words; Q4_0: 16 bytes
/// whose low nibbles are values 0..16 and high nibbles 16..32, 4 words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value (packed in pairs; SHADER_F16 not needed).
    F16,
    /// 32-value blocks of i8 with an f16 scale: 34 bytes per 32 values.
    Q8_0,
    /// 32-value blocks of 4-bit values (less 8) with an f16 scale: 18 bytes per 32 values.
    Q4_0,
}

impl KvDtype {
    /// Every storage type.
    pub const ALL: [KvDtype; 4] = [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0, KvDtype::Q4_0];

    /// The type's name, as `--kv-type` takes it: "f32", "f16", "q8_0", "q4_0".
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8_0 => "q8_0",
            KvDtype::Q4_0 => "q4_0",
        }
    }

    /// The id the kernels switch on (`KV_*` in shaders/kv.wgsl).
    pub fn gpu_id(self) -> u32 {
        self as u32
    }

    /// The block type of the quantized caches.
    fn blocks(self) -> Option<DType> {
        match self {
            KvDtype::Q8_0 => Some(DType::Q8_0),
            KvDtype::Q4_0 => Some(DType::Q4_0),
            _ => None,
        }
    }

    /// Whether a row of `kv_dim` values can be stored (quantized caches
    /// need whole 32-value blocks).
    pub fn fits(self, kv_dim: usize) -> bool {
        self.blocks().is_none() || kv_dim.is_multiple_of(32)
    }

    /// [`KvDtype::fits`] as a result: [`Error::InvalidConfig`] naming the
    /// type and the row width.
    pub fn check(self, kv_dim: usize) -> Result<()> {
        if self.fits(kv_dim) {
            return Ok(());
        }
        Err(Error::InvalidConfig {
            field: "kv_dtype",
            value: kv_dim as i64,
            reason: format!(
                "a {self:?} KV cache needs rows of whole 32-value blocks; kv_dim is {kv_dim}"
            ),
        })
    }

    /// Bytes one position of a cache of this type takes for a model of
    /// `config`, all layers, K and V: `2 x n_layers x row_bytes(kv_dim)`.
    pub fn bytes_per_position(self, config: &Config) -> u64 {
        2 * config.n_layers as u64 * self.row_bytes(config.kv_dim())
    }

    /// Bytes of one cache row of `kv_dim` values (a multiple of 4).
    pub fn row_bytes(self, kv_dim: usize) -> u64 {
        let n = kv_dim as u64;
        match self {
            KvDtype::F32 => 4 * n,
            KvDtype::F16 => 4 * n.div_ceil(2),
            KvDtype::Q8_0 => 4 * scale_words(kv_dim) + n,
            KvDtype::Q4_0 => 4 * scale_words(kv_dim) + n / 2,
        }
    }

    /// `values` (one row) as the cache stores them, in the GPU layout.
    pub fn encode_row(self, values: &[f32]) -> Vec<u8> {
        match self.blocks() {
            None => values
                .iter()
                .flat_map(|&v| match self {
                    KvDtype::F32 => v.to_le_bytes().to_vec(),
                    _ => half::f16::from_f32(v).to_le_bytes().to_vec(),
                })
                .collect(),
            Some(dtype) => {
                let blocks = quantize(dtype, values, values.len()).expect("whole blocks");
                let mut scales = Vec::new();
                let mut data = Vec::new();
                for b in blocks.chunks_exact(dtype.block_bytes()) {
                    scales.extend_from_slice(&b[..2]);
                    data.extend_from_slice(&b[2..]);
                }
                scales.resize(4 * scale_words(values.len()) as usize, 0);
                scales.extend(data);
                scales
            }
        }
    }

    /// A row of `kv_dim` values back from the GPU layout.
    pub fn decode_row(self, bytes: &[u8], kv_dim: usize) -> Vec<f32> {
        match self.blocks() {
            None if self == KvDtype::F32 => bytemuck::pod_collect_to_vec(&bytes[..4 * kv_dim]),
            None => bytes[..2 * kv_dim]
                .chunks_exact(2)
                .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                .collect(),
            Some(dtype) => {
                let (scales, data) = bytes.split_at(4 * scale_words(kv_dim) as usize);
                let per = dtype.block_bytes() - 2;
                let mut blocks = Vec::new();
                for b in 0..kv_dim / 32 {
                    blocks.extend_from_slice(&scales[2 * b..2 * b + 2]);
                    blocks.extend_from_slice(&data[per * b..per * (b + 1)]);
                }
                let mut out = vec![0.0; kv_dim];
                dequantize(dtype, &blocks, &mut out);
                out
            }
        }
    }

    /// `row` as the cache stores it, back in f32 (the host reference's rounding).
    pub fn round_row(self, row: &mut [f32]) {
        if self != KvDtype::F32 {
            let back = self.decode_row(&self.encode_row(row), row.len());
            row.copy_from_slice(&back);
        }
    }
}

/// Words of a quantized row's f16 block scales: two to a word.
fn scale_words(kv_dim: usize) -> u64 {
    (kv_dim as u64 / 32).div_ceil(2)
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
    /// (rows, kv_dim) keys, position p in row p % rows, as [`KvDtype`].
    pub k: wgpu::Buffer,
    /// (rows, kv_dim) values, likewise.
    pub v: wgpu::Buffer,
    /// Rows: the capacity, or a window layer's ring.
    pub rows: usize,
    /// The layer's sliding window, if it has one.
    pub window: Option<usize>,
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
    /// One past the highest position written since the cache was empty:
    /// a window layer's ring holds positions `written - rows..written`.
    written: usize,
    /// The oldest position every ring holds, when a restore filled them
    /// with fewer than they can hold.
    restored_from: usize,
}

/// Rows of layer `layer`'s cache for `capacity` positions and passes of
/// up to `batch` tokens: `capacity`, or for a window layer a ring of
/// `window + batch - 1` (a pass writes all its tokens' rows before it
/// attends, and its first token still reads `window - 1` rows back).
pub fn layer_rows(config: &Config, layer: usize, capacity: usize, batch: usize) -> usize {
    match config.layer_window(layer) {
        Some(w) => (w + batch - 1).min(capacity),
        None => capacity,
    }
}

impl KvCache {
    /// Allocates `capacity` positions for every layer of `config`, a window
    /// layer a ring for passes of up to `batch` tokens ([`layer_rows`]).
    /// Call inside an error scope.
    pub(crate) fn new(
        device: &wgpu::Device,
        config: &Config,
        capacity: usize,
        dtype: KvDtype,
        batch: usize,
    ) -> Result<Self> {
        check_capacity(config, capacity)?;
        let rows: Vec<usize> = (0..config.n_layers)
            .map(|l| layer_rows(config, l, capacity, batch))
            .collect();
        Self::allocate(device, config, capacity, &rows, dtype)
    }

    /// Allocates `rows[l]` rows for layer l of `config` (a paged pool's
    /// rows may outnumber the context) for `capacity` positions. Call
    /// inside an error scope.
    pub(crate) fn allocate(
        device: &wgpu::Device,
        config: &Config,
        capacity: usize,
        rows: &[usize],
        dtype: KvDtype,
    ) -> Result<Self> {
        let kv_dim = config.kv_dim();
        dtype.check(kv_dim)?;
        let limits = device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let layers = rows
            .iter()
            .enumerate()
            .map(|(l, &rows)| {
                let size = rows as u64 * dtype.row_bytes(kv_dim);
                if size > limit {
                    return Err(Error::OutOfMemory {
                        what: format!("one layer's K cache ({rows} positions x {kv_dim} values)"),
                        requested: size,
                        limit: Some(limit),
                    });
                }
                let buffer = |label| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size,
                        // COPY_SRC, COPY_DST: reads back, context shifts, restores.
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                };
                Ok(LayerCache {
                    k: buffer("k_cache"),
                    v: buffer("v_cache"),
                    rows,
                    window: config.layer_window(l),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            positions: Positions::new(capacity),
            kv_dim,
            dtype,
            written: 0,
            restored_from: 0,
        })
    }

    /// Whether some layer keeps only the positions its window still reads.
    pub fn has_rings(&self) -> bool {
        self.layers.iter().any(|l| l.rows < self.capacity())
    }

    /// Marks positions `positions` written (a pass ran them).
    pub(crate) fn commit(&mut self, positions: Range<usize>) {
        self.written = self.written.max(positions.end);
        self.positions.commit(positions);
    }

    /// Rows of each layer's K (and V) cache.
    pub fn layer_rows(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.rows).collect()
    }

    /// Bytes a session's cache of `capacity` positions, passes of up to
    /// `batch` tokens, takes for a model of `config`, stored as `dtype`:
    /// by layer kind, (whole-context layers, sliding-window layers).
    pub fn bytes_for(config: &Config, capacity: usize, batch: usize, dtype: KvDtype) -> (u64, u64) {
        let row = 2 * dtype.row_bytes(config.kv_dim());
        (0..config.n_layers).fold((0, 0), |(whole, window), l| {
            let bytes = layer_rows(config, l, capacity, batch) as u64 * row;
            match config.layer_window(l) {
                Some(_) => (whole, window + bytes),
                None => (whole + bytes, window),
            }
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

    /// Bytes allocated: `2 x row bytes x` the rows of every layer
    /// ([`KvDtype::row_bytes`]: `kv_dim x` 4 for f32, 2 for f16, 34/32 for
    /// Q8_0, 18/32 for Q4_0; rows: the capacity, or a window layer's ring).
    pub fn bytes(&self) -> u64 {
        let row = self.dtype.row_bytes(self.kv_dim);
        self.layers.iter().map(|l| 2 * l.rows as u64 * row).sum()
    }

    /// Bytes one position takes across all layers (K and V).
    pub fn bytes_per_position(&self) -> u64 {
        2 * self.layers.len() as u64 * self.dtype.row_bytes(self.kv_dim)
    }

    /// Bytes of the rows holding positions filled (a ring's rows at most).
    pub fn bytes_in_use(&self) -> u64 {
        let row = self.dtype.row_bytes(self.kv_dim);
        let len = self.len();
        self.layers
            .iter()
            .map(|l| 2 * len.min(l.rows) as u64 * row)
            .sum()
    }

    /// Empties the cache (no GPU work: slots are overwritten as they refill).
    pub fn reset(&mut self) {
        self.positions.reset();
        (self.written, self.restored_from) = (0, 0);
    }

    /// Keeps positions `0..len`, forgetting the rest (rollback). A window
    /// layer's ring must still hold every position the token at `len`
    /// attends to ([`Error::WindowRollback`]); the cache is then unchanged.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > 0 && len < self.len() {
            for l in self.layers.iter() {
                let Some(window) = l.window else { continue };
                let oldest = self.restored_from.max(self.written.saturating_sub(l.rows));
                let needed = len.saturating_sub(window - 1);
                if needed < oldest {
                    return Err(Error::WindowRollback {
                        requested: len,
                        oldest,
                        needed,
                    });
                }
            }
        }
        self.positions.truncate(len)
    }

    /// The oldest position every window layer's ring still holds (0
    /// without window layers: a whole-context layer holds every position).
    pub(crate) fn oldest_held(&self) -> usize {
        let rings = self.layers.iter().filter(|l| l.window.is_some());
        rings
            .map(|l| self.restored_from.max(self.written.saturating_sub(l.rows)))
            .max()
            .unwrap_or(0)
    }

    /// Marks positions `0..len` filled, the window layers' rings holding
    /// positions `from..len` (their rows were written whole: a restored
    /// snapshot). `len` is at most the capacity.
    pub(crate) fn set_len(&mut self, len: usize, from: usize) {
        self.positions.reset();
        self.positions.commit(0..len);
        (self.written, self.restored_from) = (len, from);
    }

    /// Copies layer `layer`'s K and V rows `0..len` back to the host, each
    /// (len, kv_dim) as f32.
    pub(crate) fn read(&self, gpu: &Gpu, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let lc = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        let row = self.dtype.row_bytes(self.kv_dim);
        let bytes = self.len() as u64 * row;
        if bytes == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let read = |b| -> Result<Vec<f32>> {
            let raw = gpu.read_buffer(b, bytes)?;
            Ok(raw
                .chunks_exact(row as usize)
                .flat_map(|r| self.dtype.decode_row(r, self.kv_dim))
                .collect())
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
