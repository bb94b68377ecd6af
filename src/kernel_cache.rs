//! The driver's compiled kernels, kept on disk between runs
//! ([`crate::Gpu::keep_kernels_in`]): one file per adapter in a folder,
//! holding wgpu's pipeline-cache data behind a header of kvgpu's own.
//!
//! File layout (integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `KVGPUPC1` |
//! | 4 | key length k |
//! | k | key: kvgpu and wgpu versions, a hash of every kernel's source, the adapter, its driver and driver version ([`key`]) |
//! | 8 | data length n |
//! | 8 | FNV-1a 64 of the data |
//! | n | the data, as `wgpu::PipelineCache::get_data` gave it |
//!
//! wgpu checks its own header inside the data (adapter, driver cache UUID)
//! but not the bytes after it, and drivers trust those bytes: a file is
//! handed to wgpu only when its key is this build's and adapter's and its
//! checksum holds. Anything else is reported, ignored and later replaced.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Fnv;

const MAGIC: &[u8; 8] = b"KVGPUPC1";

/// The wgpu version kvgpu is built with (a test checks it against Cargo.lock).
pub const WGPU_VERSION: &str = "30.0.2";

/// A cache file larger than this is not read (kvgpu's kernels take a few
/// MB in any driver's cache).
const MAX_FILE: u64 = 256 << 20;

/// What [`crate::Gpu::kernel_cache`] reports about the kernels' pipeline
/// cache on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelCache {
    /// The cache was read from `path` (`bytes` of driver data).
    Loaded {
        /// The file.
        path: PathBuf,
        /// Bytes of pipeline-cache data read.
        bytes: u64,
    },
    /// The kernels compile afresh, and [`crate::Gpu::save_kernels`] will
    /// write `path`: `why` says what was found there.
    Empty {
        /// The file.
        path: PathBuf,
        /// Why nothing was read, e.g. "no file yet" or "written by another kvgpu build".
        why: String,
    },
    /// This device keeps no pipeline cache (wgpu offers them on Vulkan
    /// only), or no folder was set: kernels compile every run (a driver
    /// may still keep its own cache, as Mesa's do).
    Unsupported,
}

impl std::fmt::Display for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelCache::Loaded { path, bytes } => {
                write!(f, "read {bytes} bytes from {}", path.display())
            }
            KernelCache::Empty { path, why } => {
                write!(f, "none read ({why}), to be written to {}", path.display())
            }
            KernelCache::Unsupported => write!(f, "none (the device keeps no pipeline cache)"),
        }
    }
}

/// The file in `dir` for `info`'s adapter: wgpu's name for its cache,
/// where wgpu has pipeline caches for that backend.
pub(crate) fn path(dir: &Path, info: &wgpu::AdapterInfo) -> Option<PathBuf> {
    wgpu::util::pipeline_cache_key(info).map(|name| dir.join(format!("{name}.kvgpu")))
}

/// What a file must carry to be read for `info`'s adapter and the kernels
/// whose sources hash to `kernels`.
pub(crate) fn key(info: &wgpu::AdapterInfo, kernels: u64) -> String {
    format!(
        "kvgpu {} | wgpu {WGPU_VERSION} | kernels {kernels:016x} | {:?} {} (vendor {:#x} device {:#x}) | driver {} {}",
        env!("CARGO_PKG_VERSION"),
        info.backend,
        info.name,
        info.vendor,
        info.device,
        info.driver,
        info.driver_info
    )
}

/// A hash of `data`.
pub(crate) fn checksum(data: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(data);
    h.0
}

/// The data in `path` if it is whole and carries `key`; else why not.
pub(crate) fn read(path: &Path, key: &str) -> std::result::Result<Vec<u8>, String> {
    let len = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no file yet".into()),
        Err(e) => return Err(format!("unreadable: {e}")),
        Ok(m) => m.len(),
    };
    if len > MAX_FILE {
        return Err(format!("{len} bytes, more than a cache of kvgpu's holds"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    parse(&bytes, key).map(<[u8]>::to_vec)
}

/// The data in a file's `bytes`, checked as [`read`] says.
fn parse<'a>(bytes: &'a [u8], key: &str) -> std::result::Result<&'a [u8], String> {
    let damaged = || "damaged (cut short or not a kvgpu kernel cache)".to_string();
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(damaged)?;
    let (n, rest) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
    let n = u32::from_le_bytes(*n) as usize;
    let (found, rest) = rest.split_at_checked(n).ok_or_else(damaged)?;
    if found != key.as_bytes() {
        return Err(format!(
            "written for another build or adapter: {}",
            String::from_utf8_lossy(found)
        ));
    }
    let (n, rest) = rest.split_first_chunk::<8>().ok_or_else(damaged)?;
    let (sum, data) = rest.split_first_chunk::<8>().ok_or_else(damaged)?;
    if u64::from_le_bytes(*n) != data.len() as u64 {
        return Err(damaged());
    }
    if u64::from_le_bytes(*sum) != checksum(data) {
        return Err("damaged (checksum mismatch)".into());
    }
    Ok(data)
}

/// The file's bytes for `data` under `key`.
fn encode(key: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + key.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes `data` under `key` to `path`, whole or not at all: into a
/// temporary file beside it, then renamed over it (a run that stops
/// halfway, or two runs at once, leave a whole file).
pub(crate) fn write(path: &Path, key: &str, data: &[u8]) -> Result<()> {
    let error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&partial, encode(key, data)).map_err(error)?;
    std::fs::rename(&partial, path).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        error(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_back_only_whole_and_under_its_key() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let bytes = encode("key A", &data);
        assert_eq!(parse(&bytes, "key A"), Ok(&data[..]));
        let err = parse(&bytes, "key B").unwrap_err();
        assert!(
            err.contains("another build") && err.contains("key A"),
            "{err}"
        );
        // Every cut and every flipped byte is refused.
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut], "key A").is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(parse(&bad, "key A").is_err(), "byte {i} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse(&longer, "key A").is_err());
    }

    #[test]
    fn files_are_written_whole_and_read_with_reasons() {
        let dir = std::env::temp_dir().join(format!("kvgpu-kernel-cache-{}", std::process::id()));
        let path = dir.join("sub").join("a.kvgpu");
        assert_eq!(read(&path, "k"), Err("no file yet".to_string()));
        write(&path, "k", b"driver data").unwrap();
        assert_eq!(read(&path, "k").unwrap(), b"driver data");
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.kvgpu"]);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read(&path, "k").unwrap_err().contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_wgpu_version_is_the_locked_one() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
            .expect("Cargo.lock");
        let locked = lock
            .split("[[package]]")
            .find(|p| p.contains("\nname = \"wgpu\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .expect("wgpu in Cargo.lock");
        assert_eq!(locked.trim_matches('"'), WGPU_VERSION);
    }
}
