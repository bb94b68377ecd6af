//! Save and restore: a session's KV cache, the tokens that made it, the
//! token sampled next and the sampler's state, in one file, so decoding
//! goes on in another process exactly as if it had never stopped.
//!
//! File layout (little-endian), version 1:
//!
//! ```text
//! "KVGPUKV\0"  u32 version  u64 model fingerprint  u32 kv dtype  u32 n_layers
//! u32 kv_dim  u32 len  u32 next (u32::MAX: none)
//! u32 sampler (0 none, 1 some)  f32 temperature  f32 top_p  u32 top_k (0 none)  u64 rng
//! u32 extra length, extra bytes (a caller's own state, e.g. a chat's messages)
//! len x u32 tokens
//! per layer: K rows 0..len, then V rows 0..len, as the cache stores them
//! u64 checksum: FNV-1a of everything before it
//! ```
//!
//! The reader is hardened like the GGUF reader: every size is checked
//! against the file's before anything is allocated, and a file of another
//! version, model, cache type or shape, cut short or corrupted, is a typed
//! [`SnapshotError`] that leaves the session as it was.

use std::path::Path;

use crate::error::{Error, Result, SnapshotError};
use crate::kv_cache::KvDtype;
use crate::model::Fnv;
use crate::sampler::Sampler;
use crate::session::Session;

const MAGIC: &[u8; 8] = b"KVGPUKV\0";
const VERSION: u32 = 1;
/// Bytes before the extra bytes.
const HEADER: usize = 8 + 4 + 8 + 4 * 5 + 4 * 4 + 8 + 4;

/// What a snapshot holds besides the cache.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The model's fingerprint ([`crate::GpuModel::fingerprint`]).
    pub fingerprint: u64,
    /// How the cache stores values.
    pub kv_dtype: KvDtype,
    /// Layers and row width of the cache.
    pub n_layers: usize,
    /// Values per row.
    pub kv_dim: usize,
    /// The tokens at positions `0..len`.
    pub tokens: Vec<u32>,
    /// The token sampled last, not yet run (the next step's input).
    pub next: Option<u32>,
    /// The sampler, to go on with the same random sequence.
    pub sampler: Option<Sampler>,
    /// A caller's own bytes (a chat keeps its messages here).
    pub extra: Vec<u8>,
    /// Per layer, K rows then V rows, as the cache stores them.
    pub rows: Vec<u8>,
}

/// Reads fields from the front of a byte slice, refusing to run past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], SnapshotError> {
        if n > self.0.len() {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> std::result::Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> std::result::Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn f32(&mut self) -> std::result::Result<f32, SnapshotError> {
        Ok(f32::from_bits(self.u32()?))
    }
}

impl Snapshot {
    /// Reads and parses the snapshot at `path` ([`Snapshot::from_bytes`]).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Snapshot::from_bytes(&bytes).map_err(|error| Error::Snapshot {
            path: path.to_path_buf(),
            error,
        })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER + self.extra.len() + 4 * self.tokens.len() + self.rows.len() + 8,
        );
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend(self.fingerprint.to_le_bytes());
        for v in [
            self.kv_dtype.gpu_id(),
            self.n_layers as u32,
            self.kv_dim as u32,
            self.tokens.len() as u32,
            self.next.unwrap_or(u32::MAX),
        ] {
            out.extend(v.to_le_bytes());
        }
        let (t, p, k, rng) = self
            .sampler
            .as_ref()
            .map_or((0.0, 0.0, None, 0), Sampler::parts);
        out.extend(u32::from(self.sampler.is_some()).to_le_bytes());
        out.extend(t.to_le_bytes());
        out.extend(p.to_le_bytes());
        out.extend((k.unwrap_or(0) as u32).to_le_bytes());
        out.extend(rng.to_le_bytes());
        out.extend((self.extra.len() as u32).to_le_bytes());
        out.extend(&self.extra);
        out.extend(self.tokens.iter().flat_map(|t| t.to_le_bytes()));
        out.extend(&self.rows);
        let mut h = Fnv::default();
        h.write(&out);
        out.extend(h.0.to_le_bytes());
        out
    }

    /// Parses a snapshot, checking every size against the bytes there are
    /// and the checksum before trusting anything.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, SnapshotError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let mut r = Reader(&bytes[8..]);
        let version = r.u32()?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        // The checksum covers all but its own 8 bytes.
        if bytes.len() < HEADER + 8 {
            return Err(SnapshotError::Truncated);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let mut h = Fnv::default();
        h.write(body);
        let checksum_ok = h.0 == u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        let fingerprint = r.u64()?;
        let dtype = r.u32()?;
        let kv_dtype = KvDtype::ALL
            .into_iter()
            .find(|d| d.gpu_id() == dtype)
            .ok_or(SnapshotError::Field("kv dtype", dtype as u64))?;
        let n_layers = r.u32()? as usize;
        let kv_dim = r.u32()? as usize;
        let len = r.u32()? as usize;
        let next = Some(r.u32()?).filter(|&t| t != u32::MAX);
        let has_sampler = r.u32()?;
        let (t, p, k, rng) = (r.f32()?, r.f32()?, r.u32()?, r.u64()?);
        let extra_len = r.u32()? as usize;
        // Sizes against what is there, before any allocation.
        let row = kv_dtype.row_bytes(kv_dim) as u128;
        let needed =
            extra_len as u128 + 4 * len as u128 + 2 * n_layers as u128 * len as u128 * row + 8;
        if needed > r.0.len() as u128 {
            return Err(if checksum_ok {
                SnapshotError::Field("length", len as u64)
            } else {
                SnapshotError::Truncated
            });
        }
        if needed < r.0.len() as u128 || !checksum_ok {
            return Err(SnapshotError::Checksum);
        }
        if !kv_dtype.fits(kv_dim) {
            return Err(SnapshotError::Field("kv_dim", kv_dim as u64));
        }
        let sampler = match has_sampler {
            0 if (t.to_bits(), p.to_bits(), k, rng) == (0, 0, 0, 0) => None,
            0 => return Err(SnapshotError::Field("sampler", 0)),
            1 => Some(
                Sampler::from_parts(t, p, (k > 0).then_some(k as usize), rng)
                    .map_err(|_| SnapshotError::Field("sampler", 0))?,
            ),
            other => return Err(SnapshotError::Field("sampler", other as u64)),
        };
        let extra = r.take(extra_len)?.to_vec();
        let tokens = r
            .take(4 * len)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let rows = r.take((2 * n_layers * len) * row as usize)?.to_vec();
        Ok(Self {
            fingerprint,
            kv_dtype,
            n_layers,
            kv_dim,
            tokens,
            next,
            sampler,
            extra,
            rows,
        })
    }
}

impl Session {
    /// Writes the session's cache to `path` with the `tokens` at its
    /// positions (as many as it holds), the token sampled `next` (not yet
    /// run), the `sampler`'s state and `extra` bytes of the caller's own.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        tokens: &[u32],
        next: Option<u32>,
        sampler: Option<&Sampler>,
        extra: &[u8],
    ) -> Result<()> {
        let path = path.as_ref();
        let c = self.model.config();
        let len = self.cache.len();
        if tokens.len() != len {
            return Err(Error::Snapshot {
                path: path.to_path_buf(),
                error: SnapshotError::Field("tokens", tokens.len() as u64),
            });
        }
        let dtype = self.cache.dtype();
        let row = dtype.row_bytes(c.kv_dim());
        let gpu = self.model.gpu();
        let mut rows = Vec::with_capacity(2 * c.n_layers * len * row as usize);
        for layer in &self.cache.layers {
            if len == 0 {
                continue;
            }
            for buffer in [&layer.k, &layer.v] {
                match ring(layer, len) {
                    // Rows 0..len hold positions 0..len.
                    None => rows.extend(gpu.read_buffer(buffer, len as u64 * row)?),
                    // The last `window` positions from the ring, zeros
                    // before them (the ring no longer holds those).
                    Some(from) => {
                        let ring = gpu.read_buffer(buffer, layer.rows as u64 * row)?;
                        let row = row as usize;
                        rows.resize(rows.len() + from * row, 0);
                        for p in from..len {
                            let at = p % layer.rows * row;
                            rows.extend_from_slice(&ring[at..at + row]);
                        }
                    }
                }
            }
        }
        let snapshot = Snapshot {
            fingerprint: self.model.fingerprint(),
            kv_dtype: dtype,
            n_layers: c.n_layers,
            kv_dim: c.kv_dim(),
            tokens: tokens.to_vec(),
            next,
            sampler: sampler.cloned(),
            extra: extra.to_vec(),
            rows,
        };
        std::fs::write(path, snapshot.to_bytes()).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Replaces the session's cache with the one saved at `path` and
    /// returns the rest of the snapshot. A file that is not a snapshot of
    /// this model with this cache type, that does not fit the cache, or is
    /// cut short or corrupted, is [`Error::Snapshot`], and the session is
    /// left as it was.
    pub fn restore(&mut self, path: impl AsRef<Path>) -> Result<Snapshot> {
        let path = path.as_ref();
        let s = Snapshot::read(path)?;
        self.restore_from(path, s)
    }

    /// [`Session::restore`] of a snapshot already read from `path` (named in errors).
    pub(crate) fn restore_from(&mut self, path: &Path, mut s: Snapshot) -> Result<Snapshot> {
        let fail = |error| Error::Snapshot {
            path: path.to_path_buf(),
            error,
        };
        let c = self.model.config();
        if s.fingerprint != self.model.fingerprint()
            || (s.n_layers, s.kv_dim) != (c.n_layers, c.kv_dim())
        {
            return Err(fail(SnapshotError::OtherModel));
        }
        if s.kv_dtype != self.cache.dtype() {
            return Err(fail(SnapshotError::OtherCacheType {
                file: s.kv_dtype.name(),
                session: self.cache.dtype().name(),
            }));
        }
        let len = s.tokens.len();
        if len > self.cache.capacity() {
            return Err(fail(SnapshotError::TooLong {
                len,
                capacity: self.cache.capacity(),
            }));
        }
        if let Some(&t) = s
            .tokens
            .iter()
            .chain(&s.next)
            .find(|&&t| t as usize >= c.vocab_size)
        {
            return Err(fail(SnapshotError::Field("token", t as u64)));
        }
        let row = s.kv_dtype.row_bytes(c.kv_dim()) as usize;
        let gpu = self.model.gpu().clone();
        // A window layer's positions before its last `window` may be zeros
        // in the file (its saver's ring no longer held them): no rollback
        // past them.
        let from = (0..c.n_layers)
            .filter_map(|l| c.layer_window(l))
            .map(|w| len.saturating_sub(w))
            .max()
            .unwrap_or(0);
        gpu.scoped("restoring a cache", || {
            // (A snapshot of no positions has no rows to write.)
            let layer_bytes = (2 * len * row).max(1);
            for (layer, data) in self.cache.layers.iter().zip(s.rows.chunks(layer_bytes)) {
                let (k, v) = data.split_at(len * row);
                for (buffer, data) in [(&layer.k, k), (&layer.v, v)] {
                    match ring(layer, len) {
                        None => gpu.queue.write_buffer(buffer, 0, data),
                        // Positions first..len into their rows of the ring.
                        Some(first) => {
                            for p in first..len {
                                let at = (p % layer.rows * row) as u64;
                                gpu.queue
                                    .write_buffer(buffer, at, &data[p * row..(p + 1) * row]);
                            }
                        }
                    }
                }
            }
        })?;
        self.cache.set_len(len, from);
        s.rows = Vec::new();
        Ok(s)
    }
}

/// For a window layer whose rows do not hold every position of a cache of
/// `len`: the first position a snapshot keeps (the last `window` are what
/// the next token reads). `None`: rows 0..len hold positions 0..len.
fn ring(layer: &crate::kv_cache::LayerCache, len: usize) -> Option<usize> {
    let window = layer.window?;
    (len > layer.rows).then(|| len.saturating_sub(window))
}
