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
    chat_template: Some(TEMPLATE),
};

/// Gemma 3's turns, as its instruct models' template writes them (string
/// contents; a system message opens the first user turn):
/// `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`.
const TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim -}}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"#;
