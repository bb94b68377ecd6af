//! Gemma 3 (llama.cpp's `src/models/gemma3.cpp`): embeddings scaled by
//! sqrt(dim); q and k RMS-normed head by head before RoPE over half-split
//! pairs; the outputs of attention and of the feed-forward block RMS-normed
//! again before they join the residual stream (`post_attention_norm`,
//! `post_ffw_norm`); a GELU (tanh) gate; heads wider than dim / n_heads
//! (`gemma3.attention.key_length`, 256 for the 270M model); five of every
//! six layers attend over a sliding window (`gemma3.attention.sliding_window`)
//! with RoPE base 10,000, the sixth over the whole context with
//! `gemma3.rope.freq_base`. Its norm weights already hold Gemma's `1 + w`
//! (llama.cpp's converter adds the one), so they are plain RMSNorms here.

use super::{Activation, Block, Family};
use crate::rope::Pairing;

/// The Gemma 3 family.
pub const GEMMA3: Family = Family {
    arch: "gemma3",
    block: Block {
        rope_pairing: Pairing::HalfSplit,
        qk_norm: true,
        post_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: true,
        window_pattern: Some(6),
        ..Block::LLAMA
    },
    fused_qkv: false,
    fused_gate_up: false,
};
