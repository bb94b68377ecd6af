//! kvgpu: Llama-family decoding with a KV cache, on any GPU that wgpu reaches
//! (Vulkan, Metal, DX12, GL, and software adapters such as Mesa's lavapipe).
//!
//! - [`Model::load`] reads a GGUF file (tokenizer included) or a llama2.c
//!   checkpoint ([`Model::load_llama2c`], with [`Tokenizer::load`]).
//! - [`GpuModel`] holds the weights on a [`Gpu`]; a [`Session`] holds one
//!   sequence's KV cache (one K and one V buffer per layer, allocated once)
//!   and decodes one token per encoder and submit.
//! - [`cpu::CpuSession`] is the f32 reference the GPU is tested against.
//! - [`generate()`] runs prompt + sampling with llama2.c's `run.c` semantics.
//!
//! `examples/generate.rs` is the shortest whole program: load, upload,
//! generate (`cargo run --example generate -- MODEL [TOKENIZER] [PROMPT]`);
//! README.md's "Use it as a library" walks through it. The examples are
//! built by `cargo test`, so they compile against this version.
//!
//! How the modules are layered (each uses only the layers below it) is
//! README.md's "Where things live" table, which `tests/layering.rs` reads.

pub mod arch;
mod error;
pub mod files;
mod frame_budget;
pub mod perplexity;
pub mod rng;
pub mod rope;
pub mod tensor;
#[cfg(test)]
mod test_util;

pub mod gguf;
pub mod tokenizer;

pub mod model;

mod gpu;
mod kernel_cache;
mod kv_cache;
mod ops;
mod readback;

mod gpu_model;
pub mod sampler;

mod pass;
mod pool;
mod profile;
mod session;
mod shift;
pub mod snapshot;

pub mod cpu;
pub mod generate;

pub mod chat;
mod engine;
mod lookup;
mod parallel;

pub use chat::{Chat, Message, Turn};
pub use engine::{Engine, EngineOptions, EngineStats, PoolMemory, SeqId, SequenceMemory};
pub use error::{Error, GgufError, Result, SnapshotError};
pub use frame_budget::FrameBudget;
pub use generate::{
    generate, generate_shifting, generate_tokens, ContextShift, Decoder, Generation, Length,
    NoCache, Prompt, GREEDY_BLOCK,
};
pub use gpu::{Compiled, Gpu};
pub use gpu_model::GpuModel;
pub use kernel_cache::KernelCache;
pub use kv_cache::{KvCache, KvDtype, Positions};
pub use lookup::{Lookup, LookupStats};
pub use model::{Config, LayerWeights, Model, Weights};
pub use parallel::{generate_parallel, Continuations};
pub use pass::{ATTENTION_SPLIT, PASSES_PER_SUBMIT};
pub use pool::PageCounts;
pub use profile::Profile;
pub use readback::{Output, Pending};
pub use sampler::Sampler;
pub use session::{Session, SessionOptions, PREFILL_TOKENS};
pub use tensor::{DType, Tensor};
pub use tokenizer::Tokenizer;
/// The wgpu kvgpu is built on, for apps that share their device
/// ([`Gpu::from_device`]) without depending on a matching version themselves.
pub use wgpu;
