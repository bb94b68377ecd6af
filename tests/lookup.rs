//! Prompt-lookup speculative decoding (`kvgpu::Lookup`) on stories260K: the
//! greedy text equals plain greedy decoding's over the whole context, with
//! drafts accepted, whether every draft is checked or only while checking
//! pays; sampling runs plain steps; an input other than the one it decided
//! drops the decided tokens and their cache positions.

mod common;

use kvgpu::{generate, Decoder, GpuModel, Length, Lookup, Sampler, Session};

#[test]
fn lookup_gives_the_plain_greedy_text_in_fewer_passes() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let plain = |prompt: &str| {
        let mut s = Session::new(&gm, None).unwrap();
        generate(
            &mut s,
            &tok,
            &mut Sampler::greedy(),
            prompt,
            Length::Steps(0),
            |_| {},
        )
        .unwrap()
    };
    for (prompt, always) in [("", true), ("Lily and Ben", true), ("", false)] {
        let expect = plain(prompt);
        let lookup = Lookup::new(Session::new(&gm, None).unwrap(), 8);
        let mut lookup = match always {
            true => lookup.draft_always(),
            false => lookup,
        };
        let mut sampler = Sampler::greedy();
        let run = generate(
            &mut lookup,
            &tok,
            &mut sampler,
            prompt,
            Length::Steps(0),
            |_| {},
        );
        let run = run.unwrap();
        assert_eq!(run.text, expect.text, "prompt {prompt:?}");
        assert_eq!(run.positions, expect.positions);
        let s = lookup.stats();
        let passes = s.verify_passes + s.plain_steps;
        match always {
            // Every draft checked: some kept, so fewer passes than positions.
            true => {
                assert!(s.accepted > 0 && passes < run.positions as u64, "{s:?}");
                assert_eq!(s.passed_up, 0);
                // 8 asked for, 7 at most: a pass fills one matmul tile.
                assert!(
                    s.drafted <= s.verify_passes * Lookup::MAX_DRAFT as u64,
                    "{s:?}"
                );
            }
            // Checked while it pays (timing decides which): one pass per
            // position at most, every found draft checked or passed up.
            false => assert!(passes <= run.positions as u64, "{s:?}"),
        }
        println!(
            "prompt {prompt:?}, every draft checked: {always}: {} positions in {passes} passes, \
             {} of {} drafts accepted, {} passed up",
            run.positions, s.accepted, s.drafted, s.passed_up
        );
        // The session comes back cut to the positions the caller saw.
        assert_eq!(lookup.into_session().unwrap().len(), run.positions);
    }
}

#[test]
fn sampling_runs_plain_steps_and_other_inputs_drop_what_was_decided() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut plain = Session::new(&gm, None).unwrap();
    let expect = generate(
        &mut plain,
        &tok,
        &mut Sampler::new(1.0, 0.9, 7).unwrap(),
        "",
        200,
        |_| {},
    );
    let mut lookup = Lookup::new(Session::new(&gm, None).unwrap(), 8);
    let mut sampler = Sampler::new(1.0, 0.9, 7).unwrap();
    let run = generate(&mut lookup, &tok, &mut sampler, "", 200, |_| {}).unwrap();
    assert_eq!(run.text, expect.unwrap().text);
    assert_eq!(lookup.stats().verify_passes, 0);
    // Greedy until a verified pass decided tokens ahead, then another input.
    let mut lookup = Lookup::new(Session::new(&gm, None).unwrap(), 8).draft_always();
    let mut history = vec![1];
    let mut token = 1;
    while lookup.stats().accepted == 0 {
        token = lookup.next_token(token, &mut Sampler::greedy()).unwrap();
        history.push(token);
    }
    let other = (token + 1) % 512;
    history.pop();
    history.push(other);
    let got = lookup.next_token(other, &mut Sampler::greedy()).unwrap();
    let mut plain = Session::new(&gm, None).unwrap();
    plain.feed(&history[..history.len() - 1]).unwrap();
    assert_eq!(got, plain.forward_greedy(other).unwrap());
    assert_eq!(lookup.positions().len(), history.len());
}
