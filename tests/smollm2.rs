//! SmolLM2-135M-Instruct as people download it (`SmolLM2-135M-Instruct.Q4_1.gguf`,
//! see ../shared/models/README.md): its tokenizer against Hugging Face
//! `tokenizers` built from the same vocabulary and merges; llama.cpp's
//! greedy reference texts from the F16 conversion of its weights; the
//! prompt echoed as typed; a chat reply that ends at `<|im_end|>`; and a
//! three-turn chat that prefills only each turn's new tokens. Runs stay at
//! 32 tokens or fewer (a few tokens a second on lavapipe).

mod common;

use kvgpu::{generate, Chat, DType, GpuModel, Length, Model, Sampler, Session, Tokenizer};

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// llama.cpp's CPU greedy texts from the F16 conversion (models README).
const ONCE_UPON_A_TIME: &str = "Once upon a time, the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling streets. But as the years went by, the city began to lose its original essence. The once-blue skies of the planet Earth began to fade, and the once-blue oceans of the ocean began to fade. The once-blue";
const CAPITAL_OF_FRANCE: &str =
    "The capital of France is Paris.\n\nThe answer is: 2018-01-22 12:12:53.";

fn load() -> Option<(Model, Tokenizer)> {
    let (model, tok) = Model::load(common::model_file(FILE)?).unwrap();
    Some((model, tok.expect("GGUF holds its tokenizer")))
}

/// The file's vocabulary and merges, as `tokenizers` takes them.
fn vocab_and_merges() -> Option<(Vec<String>, Vec<String>)> {
    let g = kvgpu::gguf::Gguf::open(common::model_file(FILE)?).unwrap();
    let tokens = g
        .strings("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap()
        .to_vec();
    let merges = g
        .strings("tokenizer.ggml.merges")
        .unwrap()
        .unwrap()
        .to_vec();
    Some((tokens, merges))
}

/// Hugging Face's byte-level BPE over the same vocabulary and merges, with
/// SmolLM2's pre-tokenizer (each digit alone, then GPT-2's byte-level split).
fn hf_tokenizer(tokens: &[String], merges: &[String]) -> tokenizers::Tokenizer {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            let (l, r) = m.split_once(' ').unwrap();
            (l.to_string(), r.to_string())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(false);
    let pre = Sequence::new(vec![Digits::new(true).into(), byte_level.into()]);
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre));
    hf
}

#[test]
fn tokenizer_matches_hf_tokenizers_on_3000_strings() {
    let (tokens, merges) = require!(vocab_and_merges());
    let (_, ours) = require!(load());
    let hf = hf_tokenizer(&tokens, &merges);
    // The vocabulary lacks 21 byte values: the 6 control characters below
    // can be typed; 0xF1 and 0xF2 lead the UTF-8 of U+40000..U+BFFFF;
    // 0xC0, 0xC1 and 0xF5..=0xFF occur in no UTF-8 text at all.
    let lacking = [
        "\u{4}",
        "\u{6}",
        "\u{13}",
        "\u{14}",
        "\u{16}",
        "\u{1d}",
        "\u{40000}",
        "\u{7ffff}",
        "\u{80000}",
        "\u{bffff}",
    ];
    let mut strings = common::varied_strings(2900, 23);
    for i in 0..100 {
        let a = lacking[i % lacking.len()];
        let b = lacking[(i * 7 + 3) % lacking.len()];
        strings.push(format!("x{a}y {b}{i} {a}{b}word{a}"));
    }
    let mut skipped = 0;
    for text in &strings {
        let expect = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        let got = ours.encode(text, false, false).unwrap();
        assert_eq!(got, expect, "{text:?}");
        skipped += lacking.iter().filter(|l| text.contains(*l)).count();
    }
    assert!(skipped >= 100, "the lacking bytes were exercised");
}

#[test]
fn reads_bos_eos_and_end_of_turn_from_the_file() {
    let (_, tok) = require!(load());
    assert!(!tok.add_bos(), "SmolLM2 adds no BOS");
    assert_eq!(tok.control_text(tok.eos()), Some("<|im_end|>"));
    assert!(tok.is_end(tok.eos()));
    let endoftext = tok.encode_special("<|endoftext|>", false, false).unwrap();
    assert!(tok.is_end(endoftext[0]));
    let im_start = tok.encode_special("<|im_start|>", false, false).unwrap();
    assert_eq!(im_start, [tok.bos()]);
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

/// Greedy text of `prompt` for `n` new tokens.
fn greedy(model: &GpuModel, tok: &Tokenizer, prompt: &str, n: usize) -> kvgpu::Generation {
    let mut s = Session::new(model, Some(256)).unwrap();
    generate(
        &mut s,
        tok,
        &mut Sampler::greedy(),
        prompt,
        Length::NewTokens(n),
        |_| {},
    )
    .unwrap()
}

#[test]
fn f16_conversion_gives_llama_cpp_greedy_texts() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    // Every tensor dequantized to f32 and stored as F16, norms F32 (as the README's F16 file).
    let f16 = Model {
        weights: model.weights.convert(DType::F16),
        config: model.config.clone(),
    };
    assert_eq!(f16.weights.token_embedding.dtype, DType::F16);
    let gm = GpuModel::new(&gpu, &f16).unwrap();
    // 32 of the reference's 64 tokens.
    let run = greedy(&gm, &tok, "Once upon a time", 32);
    assert!(!run.ended && run.generated_tokens == 32);
    assert!(
        ONCE_UPON_A_TIME.starts_with(&run.text) && run.text.len() > 120,
        "{:?}",
        run.text
    );
    // Ends at EOS after 30 tokens (of at most 32).
    let run = greedy(&gm, &tok, "The capital of France is", 32);
    assert!(run.ended, "stops at EOS");
    assert_eq!(run.text, CAPITAL_OF_FRANCE);
}

#[test]
fn q4_1_echoes_the_prompt_as_typed_and_continues() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let run = greedy(&gm, &tok, "Once upon a time", 16);
    assert!(run.text.starts_with("Once upon a time,"), "{:?}", run.text);
    // The published Q4_1 weights agree with the F16 text this far.
    assert!(ONCE_UPON_A_TIME.starts_with(&run.text), "{:?}", run.text);
}

/// Three scripted turns; returns the replies.
fn three_turns(gm: &GpuModel, tok: &Tokenizer, seed: u64) -> Vec<String> {
    let mut session = Session::new(gm, Some(512)).unwrap();
    let mut sampler = Sampler::new(0.7, 0.9, seed).unwrap();
    let mut chat = Chat::new(tok, Some("You answer in one short sentence.")).unwrap();
    let turns = [
        "What is the capital of France?",
        "And of Italy?",
        "Which of the two is larger?",
    ];
    let mut replies = Vec::new();
    for (i, text) in turns.into_iter().enumerate() {
        let held = session.cache().len();
        // The text the cache holds: the conversation so far, the last
        // reply's end-of-turn marker not yet run.
        let closed = chat.render(chat.messages(), false).unwrap();
        let before = match i {
            0 => "",
            _ => closed.strip_suffix("<|im_end|>\n").unwrap(),
        };
        let turn = chat
            .send(&mut session, tok, &mut sampler, text, 24, |_| {})
            .unwrap();
        // What this turn added to the conversation's text, as tokens: all
        // that was run (plus at most one token left from the last reply).
        let mut messages = chat.messages().to_vec();
        messages.pop(); // the reply
        let after = chat.render(&messages, true).unwrap();
        let added = tok
            .encode_special(&after[before.len()..], false, false)
            .unwrap()
            .len();
        if i == 0 {
            assert_eq!(turn.prefilled, added);
        } else {
            assert!(
                turn.prefilled == added || turn.prefilled == added + 1,
                "turn {i}: ran {} tokens for {added} new ones",
                turn.prefilled
            );
            let whole = tok.encode_special(&after, false, false).unwrap().len();
            assert!(turn.prefilled < whole / 2, "turn {i} re-ran earlier turns");
        }
        assert_eq!(
            session.cache().len(),
            held + turn.prefilled + turn.generated - usize::from(!turn.ended)
        );
        replies.push(turn.reply);
    }
    replies
}

#[test]
fn chat_keeps_the_conversation_in_the_cache_and_replays_by_seed() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let first = three_turns(&gm, &tok, 5);
    assert!(first.iter().all(|r| !r.is_empty()), "{first:?}");
    assert_eq!(
        three_turns(&gm, &tok, 5),
        first,
        "same seed, same conversation"
    );
}

#[test]
fn a_chat_reply_ends_at_im_end() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut session = Session::new(&gm, Some(256)).unwrap();
    let mut chat = Chat::new(&tok, None).unwrap();
    let turn = chat
        .send(
            &mut session,
            &tok,
            &mut Sampler::greedy(),
            "What is the capital of France?",
            32,
            |_| {},
        )
        .unwrap();
    assert!(turn.ended, "{:?}", turn.reply);
    assert!(turn.reply.contains("Paris"), "{:?}", turn.reply);
    assert!(!turn.reply.contains("<|im_end|>"));
    // The next turn's text opens by closing this one.
    let next = chat.render(chat.messages(), false).unwrap();
    assert!(next.ends_with(&format!("{}<|im_end|>\n", turn.reply)));
}

#[test]
fn a_full_context_is_a_typed_error_and_changes_nothing() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut session = Session::new(&gm, Some(40)).unwrap();
    let mut chat = Chat::new(&tok, None).unwrap();
    let long = "Tell me everything about the history of every city in Europe. ".repeat(4);
    let e = chat
        .send(&mut session, &tok, &mut Sampler::greedy(), &long, 8, |_| {})
        .unwrap_err();
    assert!(
        matches!(e, kvgpu::Error::ContextFull { capacity: 40 }),
        "{e}"
    );
    let e = chat
        .send(&mut session, &tok, &mut Sampler::greedy(), "Hi", 0, |_| {})
        .unwrap_err();
    assert!(matches!(e, kvgpu::Error::ChatTemplate(_)), "{e}");
    assert!(chat.messages().is_empty());
    assert_eq!(session.cache().len(), 0);
}

#[test]
fn a_saved_chat_goes_on_in_another_session_as_it_would_have() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let path = common::scratch("chat_save").join("chat.kvs");
    let turns = ["What is the capital of France?", "And of Italy?"];
    // Both turns in one session.
    let mut session = Session::new(&gm, Some(256)).unwrap();
    let mut chat = Chat::new(&tok, None).unwrap();
    let mut sampler = Sampler::new(0.7, 0.9, 11).unwrap();
    let mut whole = Vec::new();
    for t in turns {
        let turn = chat
            .send(&mut session, &tok, &mut sampler, t, 12, |_| {})
            .unwrap();
        whole.push(turn.reply);
        if whole.len() == 1 {
            chat.save(&session, &path, &sampler).unwrap();
        }
    }
    // The second turn after a restore into a fresh session.
    let mut fresh = Session::new(&gm, Some(256)).unwrap();
    let (mut restored, saved) = Chat::restore(&tok, &mut fresh, &path).unwrap();
    assert_eq!(restored.messages().len(), 2);
    let mut sampler = saved.unwrap();
    let turn = restored
        .send(&mut fresh, &tok, &mut sampler, turns[1], 12, |_| {})
        .unwrap();
    assert_eq!(turn.reply, whole[1]);
    assert!(
        turn.prefilled < 30,
        "only the new turn ran: {}",
        turn.prefilled
    );
}

#[test]
fn sequences_decoded_together_equal_their_solo_runs() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let steps = 12;
    let prompts = [
        "Once upon a time",
        "The capital of France is",
        "Write a haiku",
    ];
    let samplers = || {
        [
            Sampler::greedy(),
            Sampler::greedy(),
            Sampler::new(0.8, 0.9, 3).unwrap(),
        ]
    };
    let encode = |p: &str| tok.encode(p, tok.add_bos(), false).unwrap();
    // Solo: one session each.
    let mut solo = Vec::new();
    for (prompt, mut sampler) in prompts.iter().zip(samplers()) {
        let mut s = Session::new(&gm, Some(64)).unwrap();
        let mut logits = s.prefill(&encode(prompt)).unwrap().to_vec();
        let mut out = Vec::new();
        for _ in 0..steps {
            let next = sampler.sample(&logits);
            out.push(next);
            logits = s.forward(next).unwrap().to_vec();
        }
        solo.push(out);
    }
    // Together: one engine, the third joining two steps later.
    let options = kvgpu::EngineOptions::default().context(64).pages(16);
    let mut engine = kvgpu::Engine::new(&gm, options).unwrap();
    let mut ids = [None; 3];
    let mut out = vec![Vec::new(); 3];
    let mut samplers = samplers();
    let joins = [0, 0, 2];
    for step in 0.. {
        for (i, prompt) in prompts.iter().enumerate() {
            if step == joins[i] {
                ids[i] = Some(engine.add(&encode(prompt)).unwrap());
            }
        }
        for id in engine.step().unwrap() {
            let i = ids.iter().position(|&x| x == Some(id)).unwrap();
            let next = samplers[i].sample(engine.logits(id).unwrap());
            out[i].push(next);
            if out[i].len() < steps {
                engine.push(id, next).unwrap();
            }
        }
        if out.iter().all(|o| o.len() == steps) {
            break;
        }
    }
    assert_eq!(out, solo);
}

#[test]
fn prompt_lookup_repeats_a_paragraph_with_the_plain_greedy_text() {
    let (model, tok) = require!(load());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let prompt = "Copy this sentence exactly: The old lighthouse keeper climbed the stairs every night to light the lamp.\nCopy: The old";
    let expect = greedy(&gm, &tok, prompt, 24);
    let mut lookup = kvgpu::Lookup::new(Session::new(&gm, Some(256)).unwrap(), 8).draft_always();
    let run = generate(
        &mut lookup,
        &tok,
        &mut Sampler::greedy(),
        prompt,
        Length::NewTokens(24),
        |_| {},
    )
    .unwrap();
    assert_eq!(run.text, expect.text);
    let s = lookup.stats();
    assert!(s.accepted > 0, "{s:?}");
}
