//! Qwen2 and Qwen2.5 (llama.cpp's `src/models/qwen2.cpp`): the Llama block
//! with biases on the Q, K and V projections (`attn_q.bias`, `attn_k.bias`,
//! `attn_v.bias`) and RoPE over half-split pairs (NEOX).

use super::{Block, Family};
use crate::rope::Pairing;

/// The Qwen2 family.
pub const QWEN2: Family = Family {
    arch: "qwen2",
    block: Block {
        rope_pairing: Pairing::HalfSplit,
        qkv_bias: true,
        ..Block::LLAMA
    },
    fused_qkv: false,
    fused_gate_up: false,
    chat_template: None,
};
