//! Many sequences in one paged pool (`kvgpu::Engine`) against solo
//! `Session`s on stories260K: each sequence's tokens equal its solo run's
//! and its logits match, whatever else shares the pass; forks share their
//! prompt's pages and copy a shared partial page once per writer; a prompt
//! prefix the pool holds is not run again; a pool too small refuses with a
//! typed error and leaves every other sequence as it was.

mod common;

use common::GREEDY;
use kvgpu::{Engine, EngineOptions, Error, Gpu, GpuModel, Sampler, SeqId, Session, Tokenizer};

/// Tolerance for engine logits against a solo session's, relative to the
/// largest logit: both f32; a batched pass runs the projections as
/// matrix-matrix products (the solo decode as matrix-vector ones, its norms
/// folded in), so sums run in another order.
const LOGIT_TOLERANCE: f32 = 1e-5;

fn setup() -> Option<(GpuModel, Tokenizer)> {
    let (model, tok) = common::stories()?;
    let gpu: Gpu = common::gpu()?;
    Some((GpuModel::new(&gpu, &model).unwrap(), tok))
}

/// A solo run: `prompt` prefilled, then `steps` tokens sampled; the tokens
/// and the logits each was sampled from.
fn solo(model: &GpuModel, prompt: &[u32], steps: usize, mut sampler: Sampler) -> Run {
    let mut session = Session::new(model, None).unwrap();
    let mut run = Run::default();
    let mut logits = session.prefill(prompt).unwrap().to_vec();
    for _ in 0..steps {
        let next = sampler.sample(&logits);
        run.push(next, logits);
        logits = session.forward(next).unwrap().to_vec();
    }
    run
}

#[derive(Default, Debug)]
struct Run {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

impl Run {
    fn push(&mut self, token: u32, logits: Vec<f32>) {
        self.tokens.push(token);
        self.logits.push(logits);
    }

    /// Tokens equal, logits within the tolerance; returns the largest
    /// relative difference.
    fn check(&self, solo: &Run, what: &str) -> f32 {
        self.check_within(solo, LOGIT_TOLERANCE, what)
    }

    fn check_within(&self, solo: &Run, tolerance: f32, what: &str) -> f32 {
        assert_eq!(
            self.tokens, solo.tokens,
            "{what}: tokens differ from the solo run"
        );
        let mut worst = 0f32;
        for (step, (a, b)) in self.logits.iter().zip(&solo.logits).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = common::max_abs_diff(a, b) / scale;
            assert!(
                diff <= tolerance,
                "{what}: step {step}: logits differ by {diff} (relative)"
            );
            worst = worst.max(diff);
        }
        worst
    }
}

/// A request: prompt, sampler, tokens to generate, and the step it joins at.
struct Request {
    prompt: Vec<u32>,
    sampler: Sampler,
    steps: usize,
    joins: usize,
}

fn requests(tok: &Tokenizer, n: usize) -> Vec<Request> {
    let words = [
        "Once",
        "Lily",
        "The cat",
        "One day, a big dog",
        "Tom and Sue went",
        "Zoo",
    ];
    (0..n)
        .map(|i| {
            let text = format!("{} {}", words[i % words.len()], "and".repeat(i % 3));
            let prompt = tok.encode(text.trim(), true, false).unwrap();
            let sampler = match i % 2 {
                0 => Sampler::greedy(),
                _ => Sampler::new(1.0, 0.9, 1000 + i as u64).unwrap(),
            };
            Request {
                prompt,
                sampler,
                steps: 6 + (i * 7) % 23,
                joins: (i * 5) % 11,
            }
        })
        .collect()
}

/// Runs `requests` through one engine, each joining at its step and
/// leaving when done; returns each one's run.
fn batched(engine: &mut Engine, requests: &[Request]) -> Vec<Run> {
    let mut runs: Vec<Run> = requests.iter().map(|_| Run::default()).collect();
    let mut samplers: Vec<Sampler> = requests.iter().map(|r| r.sampler.clone()).collect();
    let mut ids: Vec<Option<SeqId>> = vec![None; requests.len()];
    let mut step = 0;
    while runs
        .iter()
        .zip(requests)
        .any(|(run, r)| run.tokens.len() < r.steps)
    {
        for (i, r) in requests.iter().enumerate() {
            if r.joins == step {
                ids[i] = Some(engine.add(&r.prompt).unwrap());
            }
        }
        for id in engine.step().unwrap() {
            let i = ids.iter().position(|&x| x == Some(id)).unwrap();
            let logits = engine.logits(id).unwrap().to_vec();
            let next = samplers[i].sample(&logits);
            runs[i].push(next, logits);
            if runs[i].tokens.len() == requests[i].steps {
                engine.remove(id).unwrap();
                ids[i] = None;
            } else {
                engine.push(id, next).unwrap();
            }
        }
        step += 1;
    }
    assert_eq!(engine.memory().pages.held, 0, "every sequence left");
    runs
}

#[test]
fn every_sequence_equals_its_solo_run_whatever_shares_its_passes() {
    let (model, tok) = require!(setup());
    let all = requests(&tok, 16);
    let solos: Vec<Run> = all
        .iter()
        .map(|r| solo(&model, &r.prompt, r.steps, r.sampler.clone()))
        .collect();
    // Passes of 12 tokens: prompts are cut into chunks that share passes
    // with other sequences' decode steps.
    let options = EngineOptions::default().pass_tokens(12).pages(80);
    let mut engine = Engine::new(&model, options).unwrap();
    let mut worst = 0f32;
    for n in [1, 2, 5, 16] {
        let runs = batched(&mut engine, &all[..n]);
        for (i, (run, solo)) in runs.iter().zip(&solos).enumerate() {
            worst = worst.max(run.check(solo, &format!("{n} sequences, sequence {i}")));
        }
    }
    println!("largest relative logit difference against the solo runs: {worst:e}");
}

/// The first 200 tokens of the greedy story.
fn prompt_200(tok: &Tokenizer) -> Vec<u32> {
    let tokens = tok.encode(GREEDY, true, false).unwrap();
    assert!(tokens.len() >= 200);
    tokens[..200].to_vec()
}

#[test]
fn forks_share_the_prompt_pages_and_copy_a_shared_partial_page_once_per_writer() {
    let (model, tok) = require!(setup());
    let prompt = prompt_200(&tok);
    let steps = 24;
    let seeds: Vec<u64> = (0..8).map(|i| 77 + i).collect();
    let sampler = |seed| Sampler::new(1.0, 0.9, seed).unwrap();
    let mut engine = Engine::new(&model, EngineOptions::default().pages(64)).unwrap();
    let parent = engine.add(&prompt).unwrap();
    while engine.pending(parent).unwrap() > 0 {
        engine.step().unwrap();
    }
    let forks: Vec<SeqId> = (0..8).map(|_| engine.fork(parent).unwrap()).collect();
    // 200 positions in pages of 16: 12 full pages and one partial, all
    // held once though nine sequences name them.
    let m = engine.memory();
    assert_eq!((m.pages.held, m.pages.shared), (13, 13), "{m:?}");
    assert_eq!(m.held_bytes, 13 * m.page_bytes);
    let per_sequence = engine.sequence_memory(forks[0]).unwrap();
    assert_eq!((per_sequence.pages, per_sequence.shared), (13, 13));
    let mut samplers: Vec<Sampler> = seeds.iter().map(|&s| sampler(s)).collect();
    let mut runs: Vec<Run> = forks.iter().map(|_| Run::default()).collect();
    // Each fork samples from its logits and appends what it sampled.
    let mut sample_all = |engine: &mut Engine| {
        for (i, &id) in forks.iter().enumerate() {
            let logits = engine.logits(id).unwrap().to_vec();
            let next = samplers[i].sample(&logits);
            runs[i].push(next, logits);
            engine.push(id, next).unwrap();
        }
    };
    // The first tokens come from the prompt's logits.
    sample_all(&mut engine);
    assert_eq!(
        engine.stats().page_copies,
        8,
        "the partial page, once per writer"
    );
    let m = engine.memory();
    assert_eq!((m.pages.held, m.pages.shared), (12 + 1 + 8, 12), "{m:?}");
    for _ in 1..steps {
        assert_eq!(engine.step().unwrap(), forks);
        sample_all(&mut engine);
    }
    assert_eq!(
        engine.stats().page_copies,
        8,
        "later writes go to the forks' own pages"
    );
    assert_eq!(engine.memory().pages.shared, 12);
    for (i, run) in runs.iter().enumerate() {
        let alone = solo(&model, &prompt, steps, sampler(seeds[i]));
        run.check(&alone, &format!("fork {i}"));
    }
    let texts: std::collections::HashSet<&Vec<u32>> = runs.iter().map(|r| &r.tokens).collect();
    assert!(texts.len() > 1, "eight seeds, eight samplings");
}

#[test]
fn a_prefix_the_pool_holds_is_taken_not_run() {
    let (model, tok) = require!(setup());
    let story = tok
        .encode(&format!("{GREEDY}\n{GREEDY}"), true, false)
        .unwrap();
    let prefix = &story[..300];
    let ask = |tail: &str| {
        let mut prompt = prefix.to_vec();
        prompt.extend(tok.encode(tail, false, false).unwrap());
        prompt
    };
    let (first, second) = (ask(" The cat sat down."), ask(" A dog ran to the park."));
    let mut engine = Engine::new(&model, EngineOptions::default()).unwrap();
    let run = |engine: &mut Engine, prompt: &[u32]| {
        let id = engine.add(prompt).unwrap();
        let pending = engine.pending(id).unwrap();
        let start = std::time::Instant::now();
        let ran = engine.stats().tokens;
        let mut out = Run::default();
        loop {
            if engine.step().unwrap().contains(&id) {
                break;
            }
        }
        let first_token = start.elapsed();
        assert_eq!(
            engine.stats().tokens - ran,
            pending as u64,
            "runs what is pending"
        );
        let mut sampler = Sampler::greedy();
        for _ in 0..8 {
            let logits = engine.logits(id).unwrap().to_vec();
            let next = sampler.sample(&logits);
            out.push(next, logits);
            engine.push(id, next).unwrap();
            engine.step().unwrap();
        }
        (id, pending, first_token, out)
    };
    let (a, pending_a, cold, _) = run(&mut engine, &first);
    assert_eq!(pending_a, first.len(), "nothing to reuse yet");
    engine.remove(a).unwrap();
    // The first request's full pages (its prompt and 8 tokens) stay cached.
    assert_eq!(engine.memory().pages.cached, (first.len() + 8) / 16);
    let (_, pending_b, warm, out) = run(&mut engine, &second);
    assert_eq!(pending_b, second.len() - 288, "only the rest is run");
    assert_eq!(engine.stats().reused, 288);
    out.check(
        &solo(&model, &second, 8, Sampler::greedy()),
        "reused prefix",
    );
    println!(
        "time to first token, {} prompt tokens: {cold:?} run whole, {warm:?} with {} reused",
        second.len(),
        288
    );
}

#[test]
fn a_pool_too_small_refuses_and_leaves_every_other_sequence_as_it_was() {
    let (model, tok) = require!(setup());
    let prompt = tok.encode("Once upon a time", true, false).unwrap();
    let alone = solo(&model, &prompt, 40, Sampler::greedy());
    let options = EngineOptions::default().pages(4);
    let mut engine = Engine::new(&model, options).unwrap();
    let a = engine.add(&prompt).unwrap();
    let long = prompt_200(&tok);
    let before = engine.memory();
    assert!(matches!(
        engine.add(&long),
        Err(Error::PoolExhausted {
            needed: 13,
            available: 3
        })
    ));
    assert_eq!(engine.memory(), before, "a refused request changes nothing");
    let mut run = Run::default();
    let mut sampler = Sampler::greedy();
    let mut other: Option<SeqId> = None;
    while run.tokens.len() < 40 {
        engine.step().unwrap();
        let logits = engine.logits(a).unwrap().to_vec();
        let next = sampler.sample(&logits);
        run.push(next, logits);
        // A second sequence takes the pool's last pages; when `a` needs a
        // page there is none: the push is refused, nothing changes, and the
        // other sequence's end frees the page.
        if run.tokens.len() == 4 {
            other = Some(engine.add(&long[..40]).unwrap());
        }
        let tokens = engine.tokens(a).unwrap().to_vec();
        match engine.push(a, next) {
            Ok(()) => {}
            Err(Error::PoolExhausted {
                needed: 1,
                available: 0,
            }) => {
                assert_eq!(engine.tokens(a).unwrap(), &tokens[..]);
                engine
                    .remove(other.take().expect("the other holds the pages"))
                    .unwrap();
                engine.push(a, next).unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(other.is_none(), "the pool ran out once");
    run.check(&alone, "the sequence that kept running");
}

#[test]
fn a_truncated_fork_rewrites_only_its_own_copy() {
    let (model, tok) = require!(setup());
    let prompt = tok.encode(GREEDY, true, false).unwrap()[..40].to_vec();
    let mut engine = Engine::new(&model, EngineOptions::default()).unwrap();
    let a = engine.add(&prompt).unwrap();
    engine.step().unwrap();
    let b = engine.fork(a).unwrap();
    // b goes back into the middle of the second (full, shared) page and
    // continues differently: that page is copied, a's stays.
    engine.truncate(b, 20).unwrap();
    engine.extend(b, &[65, 66, 67]).unwrap();
    assert_eq!(engine.stats().page_copies, 1);
    engine.push(a, 70).unwrap();
    let ready = engine.step().unwrap();
    assert_eq!(ready, [a, b]);
    let mut both = prompt.clone();
    both.push(70);
    let alone_a = solo(&model, &both, 1, Sampler::greedy());
    let mut other = prompt[..20].to_vec();
    other.extend([65, 66, 67]);
    let alone_b = solo(&model, &other, 1, Sampler::greedy());
    let one = |id| {
        let mut run = Run::default();
        let logits = engine.logits(id).unwrap().to_vec();
        run.push(Sampler::greedy().sample(&logits), logits);
        run
    };
    one(a).check(&alone_a, "the parent");
    one(b).check(&alone_b, "the truncated fork");
}

#[test]
fn bad_requests_are_typed_errors_that_change_nothing() {
    let (model, _) = require!(setup());
    let mut engine = Engine::new(&model, EngineOptions::default().context(64)).unwrap();
    let a = engine.add(&[1, 2, 3]).unwrap();
    let before = engine.memory();
    assert!(matches!(
        engine.add(&[1, 9999]),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        engine.push(a, 512),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        engine.extend(a, &[5; 62]),
        Err(Error::PromptTooLong {
            tokens: 62,
            capacity: 61
        })
    ));
    assert_eq!(engine.tokens(a).unwrap(), [1, 2, 3]);
    assert!(matches!(
        engine.truncate(a, 4),
        Err(Error::TruncateBeyondLength { .. })
    ));
    assert_eq!(engine.memory(), before);
    engine.remove(a).unwrap();
    assert!(matches!(
        engine.push(a, 5),
        Err(Error::UnknownSequence { .. })
    ));
    assert!(matches!(engine.fork(a), Err(Error::UnknownSequence { .. })));
    assert!(matches!(
        engine.remove(a),
        Err(Error::UnknownSequence { .. })
    ));
    assert!(engine.step().unwrap().is_empty(), "nothing to run");
    for bad in [
        EngineOptions::default().page_size(0),
        EngineOptions::default().pass_tokens(0),
        EngineOptions::default().pages(0),
        EngineOptions::default().context(513),
    ] {
        assert!(Engine::new(&model, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_quantized_pool_decodes_as_a_quantized_session() {
    let (model, tok) = require!(setup());
    for kv_dtype in [
        kvgpu::KvDtype::F16,
        kvgpu::KvDtype::Q8_0,
        kvgpu::KvDtype::Q4_0,
    ] {
        let options = EngineOptions::default().kv_dtype(kv_dtype).pass_tokens(8);
        let mut engine = Engine::new(&model, options).unwrap();
        let all = requests(&tok, 4);
        let runs = batched(&mut engine, &all);
        for (i, (run, r)) in runs.iter().zip(&all).enumerate() {
            let session = kvgpu::SessionOptions::default().kv_dtype(kv_dtype);
            let mut s = Session::with_options(&model, session).unwrap();
            let mut sampler = r.sampler.clone();
            let mut alone = Run::default();
            let mut logits = s.prefill(&r.prompt).unwrap().to_vec();
            for _ in 0..r.steps {
                let next = sampler.sample(&logits);
                alone.push(next, logits);
                logits = s.forward(next).unwrap().to_vec();
            }
            // A value computed in another order can round to the next f16
            // or quantization step: looser than the f32 pool.
            let tolerance = match kv_dtype {
                kvgpu::KvDtype::F16 => 1e-3,
                _ => 2e-2,
            };
            let what = format!("{kv_dtype:?} pool, sequence {i}");
            let worst = run.check_within(&alone, tolerance, &what);
            println!("{what}: largest relative logit difference {worst:e}");
        }
    }
}
