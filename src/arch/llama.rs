//! Llama (llama.cpp's `src/models/llama.cpp`): TinyLlama, SmolLM2, Llama 2
//! and 3, Mistral, and llama2.c checkpoints. RoPE over adjacent pairs:
//! llama.cpp's converter interleaves Hugging Face's halves into them.

use super::{Block, Family};

/// The Llama family.
pub const LLAMA: Family = Family {
    arch: "llama",
    block: Block::LLAMA,
    fused_qkv: false,
    fused_gate_up: false,
    chat_template: None,
};
