//! Qwen3 (llama.cpp's `src/models/qwen3.cpp`): the Llama block with q and k
//! RMS-normed head by head before RoPE (`attn_q_norm`, `attn_k_norm`, one
//! weight per dimension of a head), RoPE over half-split pairs (NEOX), and
//! a head size of its own (`qwen3.attention.key_length`: 128 where
//! dim / n_heads is 64 for Qwen3-0.6B).

use super::{Block, Family};
use crate::rope::Pairing;

/// The Qwen3 family.
pub const QWEN3: Family = Family {
    arch: "qwen3",
    block: Block {
        rope_pairing: Pairing::HalfSplit,
        qk_norm: true,
        ..Block::LLAMA
    },
    fused_qkv: false,
    fused_gate_up: false,
    chat_template: None,
};
