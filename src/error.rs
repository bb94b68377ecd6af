//! The crate's one error type. Every fallible public function returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong in kvgpu, grouped by concern. Messages say what
/// was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files -------------------------------------------------------------
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// A checkpoint's header holds an impossible hyper-parameter.
    #[error("invalid model config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The header field, e.g. `n_kv_heads`.
        field: &'static str,
        /// The value read.
        value: i64,
        /// Why it cannot be used.
        reason: String,
    },

    /// A checkpoint's length does not match what its header implies.
    #[error(
        "{path}: checkpoint is {found} bytes but its header implies exactly {expected} bytes ({})",
        if found < expected { "file cut short" } else { "trailing bytes" }
    )]
    CheckpointSize {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes on disk.
        found: u64,
    },

    /// A tokenizer file is malformed.
    #[error("{path}: bad tokenizer file at byte {offset}: {reason}")]
    TokenizerFormat {
        /// The file.
        path: PathBuf,
        /// Byte offset where reading failed.
        offset: u64,
        /// What was wrong there.
        reason: String,
    },

    /// A GGUF file is malformed or describes a model kvgpu cannot run.
    #[error("{path}: GGUF error at byte {offset}: {kind}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong.
        kind: crate::gguf::GgufError,
    },

    /// A tokenizer cannot encode the text (e.g. its vocabulary lacks a piece it needs).
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    // ---- decoding ----------------------------------------------------------
    /// A token id is not in the vocabulary.
    #[error("token id {token} is out of range: vocabulary has {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },

    /// A prompt does not fit in the KV cache.
    #[error("prompt is {tokens} tokens but the KV cache holds only {capacity} positions")]
    PromptTooLong {
        /// Prompt length in tokens (BOS included).
        tokens: usize,
        /// Cache capacity in positions.
        capacity: usize,
    },

    /// The KV cache is full: a step past capacity was asked for.
    #[error("KV cache is full: all {capacity} positions are used (truncate or reset it)")]
    ContextFull {
        /// Cache capacity in positions.
        capacity: usize,
    },

    /// A KV cache capacity that cannot be allocated.
    #[error("invalid KV cache capacity {requested}: must be between 1 and {max} positions")]
    InvalidCapacity {
        /// The capacity asked for.
        requested: usize,
        /// The largest allowed (the model's context length).
        max: usize,
    },

    /// `truncate` was asked to grow the cache.
    #[error("cannot truncate the KV cache to {requested} positions: it holds only {len}")]
    TruncateBeyondLength {
        /// Length asked for.
        requested: usize,
        /// Current length.
        len: usize,
    },

    /// A call that needs at least one token got none.
    #[error("no tokens given")]
    EmptyInput,

    /// Sampler settings out of range.
    #[error("invalid sampler setting: {0}")]
    InvalidSampler(String),

    // ---- GPU ---------------------------------------------------------------
    /// No adapter matched the request.
    #[error("no GPU adapter {}; adapters found: [{}]", match wanted { Some(w) => format!("named like {w:?}"), None => "found".to_string() }, available.join(", "))]
    NoAdapter {
        /// Name filter asked for (`WGPU_ADAPTER_NAME` or `--adapter`).
        wanted: Option<String>,
        /// Adapters that exist, as "name (backend)".
        available: Vec<String>,
    },

    /// The adapter refused to create a device.
    #[error("cannot create a device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A buffer the model needs exceeds a device limit.
    #[error("{what} needs {needed} bytes but the device allows at most {limit} bytes per binding")]
    ModelTooLarge {
        /// Which buffer.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// The device limit.
        limit: u64,
    },

    /// wgpu reported an error (validation, out-of-memory, internal) inside an error scope.
    #[error("GPU error while {context}: {message}")]
    Gpu {
        /// What kvgpu was doing.
        context: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// The device lacks a feature the call needs.
    #[error("not supported on this device: {0}")]
    Unsupported(&'static str),

    /// Reading a buffer back from the GPU failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
}

/// `Result` with kvgpu's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
