//! kvgpu: Llama-family decoding with a KV cache, on any GPU that wgpu reaches
//! (Vulkan, Metal, DX12, GL, and software adapters such as Mesa's lavapipe).
//!
//! - [`Model`] reads llama2.c checkpoints; [`Tokenizer`] reads llama2.c tokenizers.
//! - [`GpuModel`] holds the weights on a [`Gpu`]; a [`Session`] holds the KV
//!   cache (one K and one V buffer per layer, allocated once) and decodes one
//!   token per encoder and submit.
//! - [`cpu::CpuSession`] is the f32 reference the GPU is tested against.
//! - [`generate()`] runs prompt + sampling with llama2.c's `run.c` semantics.
//!
//! ```no_run
//! # fn main() -> kvgpu::Result<()> {
//! let model = kvgpu::Model::load_llama2c("stories260K.bin")?;
//! let tokenizer = kvgpu::Tokenizer::load("tok512.bin", model.config.vocab_size)?;
//! let gpu = kvgpu::Gpu::new(None)?;
//! let mut session = kvgpu::Session::new(&kvgpu::GpuModel::new(&gpu, &model)?, None)?;
//! let mut sampler = kvgpu::Sampler::greedy();
//! kvgpu::generate(&mut session, &tokenizer, &mut sampler, "Once", 64, |s| print!("{s}"))?;
//! # Ok(()) }
//! ```

pub mod cpu;
mod error;
pub mod generate;
pub mod gguf;
mod gpu;
pub mod model;
pub mod ops;
pub mod sampler;
mod session;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use generate::{generate, Decoder, Generation, NoCache};
pub use gpu::Gpu;
pub use model::{Config, LayerWeights, Model, Weights};
pub use sampler::Sampler;
pub use session::{GpuModel, KvCache, KvDtype, Session, SessionOptions};
pub use tensor::{DType, Tensor};
pub use tokenizer::Tokenizer;
