//! The crate's one error type. Every fallible public function returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong in kvgpu, grouped by concern. Messages say what
/// was expected and what was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// A file could not be written (or its folder created).
    #[error("cannot write {path}: {source}")]
    Write {
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
        kind: GgufError,
    },

    /// A file is neither a GGUF model nor a llama2.c checkpoint.
    #[error("{path}: not a model file ({reason}); expected a GGUF file or a llama2.c checkpoint")]
    NotAModel {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// A file given as a tokenizer is something else.
    #[error("{path}: not a llama2.c tokenizer: {reason}")]
    NotATokenizer {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },

    /// A model file is in none of the folders searched.
    #[error("{name} not found (looked in: {}); set KVGPU_MODELS to its folder, or pass its path", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ModelFileMissing {
        /// The file name.
        name: String,
        /// The folders searched, in order.
        looked: Vec<PathBuf>,
    },

    /// A download failed; nothing was left behind.
    #[error("cannot download {url}: {reason}")]
    Download {
        /// What was asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },

    /// A downloaded file does not have the expected SHA-256; it was deleted.
    #[error("{url}: SHA-256 is {found}, expected {expected}; the download was deleted")]
    ChecksumMismatch {
        /// What was downloaded.
        url: String,
        /// The checksum expected.
        expected: String,
        /// The checksum of what arrived.
        found: String,
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

    /// A paged KV pool has too few pages left for what was asked.
    #[error("the KV pool has {available} pages left but this needs {needed} (end or truncate a sequence, or make a bigger pool)")]
    PoolExhausted {
        /// Pages needed: new ones, and copies of shared ones written into.
        needed: usize,
        /// Pages free or cached.
        available: usize,
    },

    /// An [`Engine`](crate::Engine) sequence id that is not (or no longer) there.
    #[error("no sequence {id} in this engine (it was removed, or is another engine's)")]
    UnknownSequence {
        /// The id.
        id: u64,
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

    /// A rollback past what a sliding-window layer's ring still holds.
    #[error("cannot roll the KV cache back to {requested} positions: its sliding-window layers keep positions {oldest}.. only, and position {requested} attends back to {needed}")]
    WindowRollback {
        /// Positions asked to keep.
        requested: usize,
        /// Oldest position the window layers' rings still hold.
        oldest: usize,
        /// Oldest position the next token would attend to.
        needed: usize,
    },
    /// One pass was asked to run more tokens than it can hold.
    #[error("a pass of {tokens} tokens exceeds the {max} tokens one pass runs")]
    PassTooLong {
        /// Tokens asked for.
        tokens: usize,
        /// Most tokens one pass runs ([`crate::Session::prefill_tokens`]).
        max: usize,
    },

    /// A layer index past the model's last layer.
    #[error("layer {layer} does not exist: the model has {n_layers} layers")]
    LayerOutOfRange {
        /// The index asked for.
        layer: usize,
        /// Layers in the model.
        n_layers: usize,
    },

    /// A session's last readback has not been read (or dropped) yet.
    #[error(
        "the session's previous readback is still pending: poll it to completion or drop it first"
    )]
    ReadbackPending,

    /// A saved KV cache that cannot be restored (see [`SnapshotError`]).
    #[error("{path}: {error}")]
    Snapshot {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        error: SnapshotError,
    },

    /// A context shift that does not fit the filled positions.
    #[error("cannot keep {n_keep} positions and drop {n_discard} of a cache holding {len} (drop at least one)")]
    InvalidShift {
        /// Positions kept at the start.
        n_keep: usize,
        /// Positions dropped after them.
        n_discard: usize,
        /// Positions filled.
        len: usize,
    },

    /// A context shift after which the next token's sliding window would
    /// read positions the window layers' rings no longer hold.
    #[error("cannot keep {n_keep} positions and drop {n_discard}: the sliding-window layers would attend to positions before {oldest}, which their rings no longer hold (keep positions the window does not reach, or drop fewer)")]
    WindowShift {
        /// Positions kept at the start.
        n_keep: usize,
        /// Positions dropped after them.
        n_discard: usize,
        /// Oldest position (before the shift) the rings hold.
        oldest: usize,
    },

    /// An engine sequence's logits asked for after a step that did not
    /// run its last token (or before any step).
    #[error("sequence {id} has no logits: the last step did not run its last token")]
    NoLogits {
        /// The sequence.
        id: u64,
    },

    /// The logits after a position hold a NaN or an infinity (a NaN weight,
    /// an infinite norm epsilon, a corrupt cache): no token follows from them.
    #[error("the logits after position {position} are not finite (NaN or infinity): the model's weights, settings or cache give no number there")]
    NonFiniteLogits {
        /// Position of the token whose logits they are.
        position: usize,
    },

    /// A KV cache byte budget that holds not even one position.
    #[error(
        "a KV cache budget of {budget} bytes holds no position: one takes {per_position} bytes"
    )]
    KvBudgetTooSmall {
        /// The budget.
        budget: u64,
        /// Bytes of one position (all layers, K and V).
        per_position: u64,
    },

    /// A chat template that is missing, does not parse or fails to render,
    /// or a chat used with a session that holds something else.
    #[error("chat: {0}")]
    ChatTemplate(String),

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

    /// A kernel needs more of something than the device allows.
    #[error("kernel {kernel} needs {needs} {what}, the device allows {allows}")]
    DeviceLimit {
        /// The kernel (its file in `shaders/`).
        kernel: &'static str,
        /// Which limit, e.g. "storage buffers per shader stage".
        what: &'static str,
        /// What the kernel needs.
        needs: u64,
        /// The device's limit.
        allows: u64,
    },

    /// wgpu reported an error (validation, out-of-memory, internal) inside an error scope.
    #[error("GPU error while {context}: {message}")]
    Gpu {
        /// What kvgpu was doing.
        context: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// The device cannot hold what was asked for: a buffer larger than it
    /// allows (checked before allocating), or an allocation it refused.
    #[error("out of GPU memory for {what}: {requested} bytes requested{}", match limit { Some(l) => format!(", the device allows {l} per buffer"), None => String::new() })]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes asked for (at least: a session counts its KV cache; 0 where
        /// kvgpu cannot tell).
        requested: u64,
        /// The device's limit per buffer, when that is what refused it.
        limit: Option<u64>,
    },

    /// The device was lost or destroyed: nothing more runs on it.
    #[error("the GPU device was lost or destroyed")]
    DeviceLost,

    /// The device lacks a feature the call needs.
    #[error("not supported on this device: {0}")]
    Unsupported(&'static str),

    /// Reading a buffer back from the GPU failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
}

/// `Result` with kvgpu's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a GGUF file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The first 4 bytes are not `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// Versions 2 and 3 are read.
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The file ends inside something.
    #[error(
        "file cut short (incomplete download?): {what} needs {needed} bytes, {remaining} remain"
    )]
    CutShort {
        /// What was being read.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A count cannot fit in the bytes that remain.
    #[error("{what} count {count} cannot fit in the {remaining} bytes that remain: the file is cut short (incomplete download?) or corrupt")]
    CountTooLarge {
        /// What is counted.
        what: String,
        /// The count read.
        count: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A metadata value type id that GGUF does not define.
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    /// Arrays of arrays are not read.
    #[error("nested array in metadata key {0:?}")]
    NestedArray(String),
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(String),
    /// A metadata key appears twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A known key holds a value of the wrong type.
    #[error("metadata key {key:?} should be {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// The type expected.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A required metadata key is missing.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// `general.alignment` is 0 or not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// A tensor has 0 or more than 4 dimensions.
    #[error("tensor {name:?} has {n_dims} dimensions (1 to 4 are allowed)")]
    BadDimensionCount {
        /// Tensor name.
        name: String,
        /// Dimensions read.
        n_dims: u32,
    },
    /// A tensor has a zero dimension.
    #[error("tensor {0:?} has a zero dimension")]
    ZeroDimension(String),
    /// A tensor's element or byte count overflows.
    #[error("tensor {0:?}: element count overflows")]
    ElementCountOverflow(String),
    /// A tensor type id GGML does not define.
    #[error("tensor {name:?} has unknown type id {id}")]
    UnknownTensorType {
        /// Tensor name.
        name: String,
        /// The type id.
        id: u32,
    },
    /// A tensor type GGML defines but kvgpu does not compute with.
    #[error("tensor {name:?} has type {ty}, which kvgpu does not support (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K are)")]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// GGML's name for the type.
        ty: &'static str,
    },
    /// A row length is not a whole number of the type's blocks.
    #[error("tensor {name:?}: row length {cols} is not a multiple of the {ty} block size")]
    PartialBlock {
        /// Tensor name.
        name: String,
        /// Row length.
        cols: u64,
        /// Type name.
        ty: &'static str,
    },
    /// A tensor's data is not at a multiple of the alignment.
    #[error("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// Tensor name.
        name: String,
        /// Offset in the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data runs past the end of the file (a download cut short).
    #[error(
        "the file ends at byte {} but tensor {name:?} needs bytes up to {}: truncated (incomplete download?)",
        .data_start.saturating_add(*.data_len),
        .data_start.saturating_add(*.end)
    )]
    OutOfBounds {
        /// Where the data section starts in the file.
        data_start: u64,
        /// Tensor name.
        name: String,
        /// Start in the data section.
        offset: u64,
        /// End in the data section.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors {0:?} and {1:?} overlap")]
    Overlap(String, String),
    /// Two tensors have the same name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor the model needs is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor has the wrong shape for the model.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Shape expected (GGUF order: innermost first).
        expected: Vec<u64>,
        /// Shape found.
        found: Vec<u64>,
    },
    /// The model architecture is none of the families kvgpu runs.
    #[error("unsupported architecture {0:?} (kvgpu runs {1})")]
    UnsupportedArchitecture(String, String),
    /// A hyper-parameter or tokenizer field is out of range.
    #[error("{key}: {reason}")]
    BadValue {
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a saved KV cache ([`crate::snapshot`]) cannot be restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file does not start as a kvgpu snapshot.
    #[error("not a kvgpu KV cache snapshot")]
    NotASnapshot,
    /// A format version this build does not read.
    #[error("snapshot format version {0}; this kvgpu reads version 1")]
    Version(u32),
    /// The file ends before what its header promises.
    #[error("the snapshot is cut short")]
    Truncated,
    /// The checksum does not match: the bytes were changed.
    #[error("the snapshot is corrupted (checksum mismatch)")]
    Checksum,
    /// A header field holds a value that cannot be.
    #[error("the snapshot's {0} field holds {1}, which cannot be")]
    Field(&'static str, u64),
    /// Saved from another model (its fingerprint or shape differ).
    #[error("the snapshot was saved from another model")]
    OtherModel,
    /// Saved from a cache of another storage type.
    #[error("the snapshot holds a {file} KV cache; this session's is {session}")]
    OtherCacheType {
        /// The file's (`KvDtype::name`).
        file: &'static str,
        /// The session's.
        session: &'static str,
    },
    /// More positions than the session holds.
    #[error("the snapshot holds {len} positions; this session's cache holds {capacity}")]
    TooLong {
        /// Positions saved.
        len: usize,
        /// The session's capacity.
        capacity: usize,
    },
}
