//! Model families: what each one's transformer block computes ([`Block`],
//! read by the CPU reference in `cpu.rs` and the GPU pass in `pass.rs`
//! alike) and how its GGUF files lay the block out ([`Family`], read by the
//! loader in `model/gguf.rs`). One file a family; [`FAMILIES`] lists them.
//!
//! Every family's block is the Llama block with some of these changes:
//!
//! ```text
//! x = embed(token) (* sqrt(dim))                          embed_scale
//! per layer l:
//!   n = rmsnorm(x) * g_att
//!   q, k, v = Wq n (+ bq), Wk n (+ bk), Wv n (+ bv)        qkv_bias
//!   q, k = rmsnorm_head(q) * g_q, rmsnorm_head(k) * g_k   qk_norm
//!   q, k = rope(q, pos), rope(k, pos)                     rope_pairing; the
//!                                                         layer's RoPE base
//!   a = attention(q, cache ∪ k, cache ∪ v)                over the last
//!                                                         `window` positions
//!                                                         on window layers
//!   x += Wo a, or rmsnorm(Wo a) * g_att_post              post_norms
//!   n = rmsnorm(x) * g_ffn
//!   h = act(W1 n) * W3 n                                  activation
//!   x += W2 h, or rmsnorm(W2 h) * g_ffn_post              post_norms
//! logits = Wcls (rmsnorm(x) * g_final)
//! ```

use crate::rope::Pairing;

mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

/// What a family's block computes beyond the Llama block. The layer
/// weights a block needs ([`LayerWeights`](crate::model::LayerWeights)'s
/// optional tensors) are present exactly when it asks for them
/// ([`Model::validate`](crate::model::Model::validate)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// How RoPE pairs a head's dimensions.
    pub rope_pairing: Pairing,
    /// Q, K and V projections add a bias (`LayerWeights::qkv_bias`).
    pub qkv_bias: bool,
    /// q and k are RMS-normed head by head, with weights of their own,
    /// before RoPE (`LayerWeights::qk_norm`).
    pub qk_norm: bool,
    /// The outputs of attention and of the feed-forward block are
    /// RMS-normed before they join the residual stream
    /// (`LayerWeights::post_norms`).
    pub post_norms: bool,
    /// The gate's activation.
    pub activation: Activation,
    /// Token embeddings are scaled by sqrt(dim).
    pub embed_scale: bool,
    /// Of every `n` layers, the first `n - 1` attend over a sliding window
    /// (`Config::sliding_window` positions) and the last over the whole
    /// context; `None`: every layer attends over the whole context.
    pub window_pattern: Option<usize>,
}

/// The activation of a gated feed-forward block: `h = act(W1 n) * W3 n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU's tanh approximation, as GGML computes it (GeGLU).
    GeluTanh,
}

impl Activation {
    /// Host reference of the activation.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            // llama2.c's form, bit for bit.
            Activation::Silu => x * (1.0 / (1.0 + (-x).exp())),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
            }
        }
    }
}

impl Block {
    /// The Llama block: adjacent RoPE pairs, no biases, no q/k norms.
    pub const LLAMA: Block = Block {
        rope_pairing: Pairing::Adjacent,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        activation: Activation::Silu,
        embed_scale: false,
        window_pattern: None,
    };

    /// Whether q and k need work between the QKV projection and RoPE
    /// (biases or norms): the GPU pass then runs them in the RoPE kernel,
    /// not in the projection's epilogue.
    pub fn prepares_qk(&self) -> bool {
        self.qkv_bias || self.qk_norm
    }
}

/// A model family as GGUF files store it: the architecture name, the block
/// it computes, and how its tensors are laid out.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// `general.architecture`, also the prefix of its hyper-parameter keys
    /// (`qwen2.attention.head_count`).
    pub arch: &'static str,
    /// What its block computes.
    pub block: Block,
    /// Whether Q, K and V may come as one `attn_qkv` tensor (rows: Q, then
    /// K, then V) instead of three.
    pub fused_qkv: bool,
    /// Whether gate and up come as one `ffn_up` tensor of 2 hidden_dim rows
    /// (gate rows, then up rows), with no `ffn_gate`.
    pub fused_gate_up: bool,
    /// The chat template (Jinja) of the family's instruct models, for
    /// files that carry none (`tokenizer.chat_template`).
    pub chat_template: Option<&'static str>,
}

/// Every family kvgpu runs.
pub const FAMILIES: [&Family; 5] = [
    &llama::LLAMA,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &phi3::PHI3,
    &gemma3::GEMMA3,
];

impl Family {
    /// The family whose GGUF architecture name is `arch`.
    pub fn from_arch(arch: &str) -> Option<&'static Family> {
        FAMILIES.into_iter().find(|f| f.arch == arch)
    }

    /// The Llama family (llama2.c checkpoints are Llama).
    pub fn llama() -> &'static Family {
        &llama::LLAMA
    }

    /// The architecture names of every family, for error messages.
    pub fn names() -> String {
        FAMILIES.map(|f| f.arch).join(", ")
    }
}
