//! kvgpu on devices with less than the adapter offers: WebGPU's default
//! limits (what a browser or a careful app requests) must decode the
//! reference texts and prefill; below them, a kernel's shortfall is a typed
//! error that names the kernel and the limit, before anything is compiled.

mod common;

use common::{max_abs_diff, GREEDY, ZOO};
use kvgpu::cpu::CpuSession;
use kvgpu::{generate, wgpu, Error, GpuModel, Sampler, Session};

#[test]
fn webgpu_default_limits_decode_the_reference_texts_and_prefill() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu_with_limits(wgpu::Limits::default()));
    let gm = GpuModel::new(&gpu, &model).unwrap();
    for (prompt, steps, expect) in [("", 256, GREEDY), ("Zoo", 60, ZOO)] {
        let mut s = Session::new(&gm, None).unwrap();
        let run = generate(&mut s, &tok, &mut Sampler::greedy(), prompt, steps, |_| {}).unwrap();
        assert_eq!(run.text.trim_end(), expect);
    }
    // Two prefill passes (64 + 36 tokens) against the CPU reference.
    let tokens: Vec<u32> = (0..100).map(|i| (i * 37 + 1) % 512).collect();
    let mut s = Session::new(&gm, None).unwrap();
    let got = s.prefill(&tokens).unwrap().to_vec();
    let mut cpu = CpuSession::new(&model, None).unwrap();
    let mut expect = Vec::new();
    for &t in &tokens {
        expect = cpu.forward(t).unwrap().to_vec();
    }
    // As decode.rs's prefill test: f32 sums in another order.
    assert!(max_abs_diff(&got, &expect) <= 1e-3);
}

#[test]
fn downlevel_limits_name_the_kernel_that_does_not_fit() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu_with_limits(wgpu::Limits::downlevel_defaults()));
    let err = GpuModel::new(&gpu, &model).unwrap_err();
    // WebGL-class devices bind 16 KiB uniforms and 4 storage buffers per
    // stage: the projections bind 64 KiB inputs.
    match &err {
        Error::DeviceLimit {
            kernel,
            what,
            needs,
            allows,
        } => {
            assert!(needs > allows, "{err}");
            let message = err.to_string();
            assert!(
                message.contains(kernel) && message.contains(what),
                "{message}"
            );
            eprintln!("downlevel defaults: {message}");
        }
        other => panic!("expected DeviceLimit, got {other:?}"),
    }
}
