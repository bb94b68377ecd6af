//! Phi-3 (llama.cpp's `src/models/phi3.cpp`): the Llama block stored fused,
//! Q, K and V as one `attn_qkv` (or three tensors) and gate and up as one
//! `ffn_up` of twice the hidden size (gate rows first), with RoPE over
//! half-split pairs (NEOX).

use super::{Block, Family};
use crate::rope::Pairing;

/// The Phi-3 family.
pub const PHI3: Family = Family {
    arch: "phi3",
    block: Block {
        rope_pairing: Pairing::HalfSplit,
        ..Block::LLAMA
    },
    fused_qkv: true,
    fused_gate_up: true,
    chat_template: None,
};
