//! Finding model files, the same way for every tool and test: the path
//! given, else `$KVGPU_MODELS`, else the user cache folder
//! (`<platform cache>/kvgpu`, e.g. `~/.cache/kvgpu` on Linux,
//! `~/Library/Caches/kvgpu` on macOS), else (feature `download`) a download
//! into that folder, checked against its SHA-256 and moved into place only
//! when whole.

#[cfg(feature = "download")]
use std::path::Path;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A file kvgpu knows where to download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// File name.
    pub name: &'static str,
    /// Where to download it.
    pub url: &'static str,
    /// Its SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// Karpathy's stories260K llama2.c checkpoint (MIT), the default model.
pub const STORIES260K: Known = Known {
    name: "stories260K.bin",
    url: "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin",
    sha256: "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
};

/// Its tokenizer.
pub const TOK512: Known = Known {
    name: "tok512.bin",
    url: "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/tok512.bin",
    sha256: "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
};

/// The user cache folder kvgpu downloads into: `<platform cache>/kvgpu`.
pub fn cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("kvgpu"))
}

/// The folders searched for a file by name, in order: `$KVGPU_MODELS`, then
/// [`cache_dir`].
pub fn search_dirs() -> Vec<PathBuf> {
    let env = std::env::var_os("KVGPU_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    env.into_iter().chain(cache_dir()).collect()
}

/// The first file called `name` in [`search_dirs`], or
/// [`Error::ModelFileMissing`] listing where it looked.
pub fn find(name: &str) -> Result<PathBuf> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ModelFileMissing {
            name: name.to_string(),
            looked: dirs,
        })
}

/// `file` found as [`find`] does, else downloaded into [`cache_dir`] with
/// `progress(bytes so far, total if known)` called as it arrives.
#[cfg(feature = "download")]
pub fn fetch(file: &Known, progress: impl FnMut(u64, Option<u64>)) -> Result<PathBuf> {
    if let Ok(path) = find(file.name) {
        return Ok(path);
    }
    let dir = cache_dir().ok_or_else(|| Error::Download {
        url: file.url.to_string(),
        reason: "the platform has no user cache folder: set KVGPU_MODELS".into(),
    })?;
    let dest = dir.join(file.name);
    download(file.url, file.sha256, &dest, progress)?;
    Ok(dest)
}

/// Downloads `url` to `dest`, through a temporary file beside it that is
/// renamed into place only once whole and matching `sha256` (lowercase
/// hex); on any failure no file is left at `dest` or beside it.
#[cfg(feature = "download")]
pub fn download(
    url: &str,
    sha256: &str,
    dest: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<()> {
    use sha2::Digest;
    use std::io::{Read, Write};

    let fail = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let partial = partial_path(dest);
    let result = (|| {
        let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
        let total = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = response.into_body().into_reader();
        let io = |source| Error::Write {
            path: partial.clone(),
            source,
        };
        let mut out = std::fs::File::create(&partial).map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut done = 0u64;
        progress(0, total);
        loop {
            let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io)?;
            done += n as u64;
            progress(done, total);
        }
        if total.is_some_and(|t| t != done) {
            return Err(fail(format!(
                "transfer ended after {done} of {total:?} bytes"
            )));
        }
        out.sync_all().map_err(io)?;
        let found: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if found != sha256 {
            return Err(Error::ChecksumMismatch {
                url: url.to_string(),
                expected: sha256.to_string(),
                found,
            });
        }
        std::fs::rename(&partial, dest).map_err(|source| Error::Write {
            path: dest.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Where a download of `dest` is written until it is whole.
#[cfg(feature = "download")]
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}
