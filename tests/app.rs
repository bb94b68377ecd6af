//! Decoding inside an application's frame: passes recorded into the app's
//! own encoder beside its own work and polled without blocking, k greedy
//! steps per submit with the tokens staying on the GPU, and sessions
//! decoding on two threads over one model.

mod common;

use common::GREEDY;
use kvgpu::tokenizer::BOS;
use kvgpu::{wgpu, GpuModel, Output, Sampler, Session};

#[test]
fn a_step_recorded_into_the_apps_encoder_is_polled_without_blocking() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut reference = Session::new(&gm, None).unwrap();
    let expect = reference.forward_greedy(BOS).unwrap();
    let expect_logits = reference.forward(expect).unwrap().to_vec();

    // The app's own work: a buffer copy and a render pass clearing a target.
    let device = &gpu.device;
    let buffer = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("app"),
            size: 256,
            usage,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (
        buffer(wgpu::BufferUsages::COPY_SRC),
        buffer(wgpu::BufferUsages::COPY_DST),
    );
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("app frame"),
        size: wgpu::Extent3d {
            width: 64,
            height: 64,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
        view_formats: &[],
    });
    let view = target.create_view(&Default::default());

    let mut session = Session::new(&gm, None).unwrap();
    let submits_before = session.submissions();
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, 256);
    let mut pending = session.encode_greedy(&mut encoder, BOS, 1).unwrap();
    {
        let _frame = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("app frame"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLUE),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
    }
    // Decoding into the app's encoder while another readback is pending is refused.
    let busy = session.encode_logits(&mut encoder, &[3]).unwrap_err();
    assert!(matches!(busy, kvgpu::Error::ReadbackPending), "{busy}");
    gpu.queue.submit([encoder.finish()]);
    assert_eq!(
        session.submissions(),
        submits_before,
        "kvgpu submitted nothing"
    );
    // Each poll returns at once; the result arrives within a bounded number of them.
    let mut polls = 0;
    let token = loop {
        polls += 1;
        let started = std::time::Instant::now();
        let polled = pending.poll();
        assert!(started.elapsed().as_secs_f64() < 0.5, "a poll waited");
        match polled {
            Some(r) => break r.unwrap(),
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
        assert!(polls < 10_000, "no result after {polls} polls");
    };
    assert_eq!(token, Output::Tokens(vec![expect]));
    drop(pending);
    // Logits the same way, for the next position.
    let mut encoder = device.create_command_encoder(&Default::default());
    let mut pending = session.encode_logits(&mut encoder, &[expect]).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let logits = loop {
        if let Some(r) = pending.poll() {
            break r.unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert_eq!(logits, Output::Logits(expect_logits));
    assert_eq!(session.len(), 2);
}

#[test]
fn greedy_blocks_of_1_4_16_steps_give_the_reference_text_with_one_readback_each() {
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    for k in [1, 4, 16] {
        let mut s = Session::new(&gm, None).unwrap();
        let mut tokens = vec![BOS];
        let mut blocks = 0;
        // run.c: 256 positions, or until the model emits BOS.
        loop {
            let steps = k.min(256 - s.len());
            if steps == 0 {
                break;
            }
            let last = *tokens.last().unwrap();
            tokens.extend(s.greedy_block(last, steps, &[BOS]).unwrap());
            blocks += 1;
            if tokens.last() == Some(&BOS) {
                break;
            }
        }
        assert_eq!(
            s.submissions(),
            blocks,
            "one submit (and readback) per block"
        );
        let mut text = String::new();
        let mut stream = kvgpu::tokenizer::TextStream::new();
        for pair in tokens.windows(2) {
            if pair[1] == BOS {
                break;
            }
            text += &stream.push(tok.decode(pair[0], pair[1]).unwrap());
        }
        text += &stream.finish();
        assert_eq!(text.trim_end(), GREEDY, "k = {k}");
    }
}

#[test]
fn a_greedy_block_stops_at_end_of_sequence_and_truncates_the_cache() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, None).unwrap();
    let all = s.greedy_block(BOS, 16, &[]).unwrap();
    assert_eq!(all.len(), 16);
    // Stop at the 6th token: it is kept, the 10 after it are not decoded.
    let stop = all[5];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let mut s = Session::new(&gm, None).unwrap();
    let cut = s.greedy_block(BOS, 16, &[stop]).unwrap();
    assert_eq!(cut, all[..=first]);
    assert_eq!(s.len(), first + 1);
    // And decoding goes on from there as if the block had been that short.
    let next = s.forward_greedy(stop).unwrap();
    assert_eq!(next, all[first + 1]);
}

/// Installs an uncaptured-error handler, as an app would, that counts what reaches it.
fn count_uncaptured(device: &wgpu::Device) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    device.on_uncaptured_error(std::sync::Arc::new(move |_: wgpu::Error| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    count
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

#[test]
fn two_threads_decode_two_sessions_over_one_model_as_alone() {
    assert_send_sync::<GpuModel>();
    assert_send::<Session>();
    let (model, tok) = require!(common::stories());
    let gpu = require!(common::gpu());
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let run = |prompt: &str, seed: u64| {
        let mut s = Session::new(&gm, None).unwrap();
        let mut sampler = Sampler::new(1.0, 0.9, seed).unwrap();
        kvgpu::generate(&mut s, &tok, &mut sampler, prompt, 128, |_| {})
            .unwrap()
            .text
    };
    let alone = [run("Zoo", 7), run("Once", 8)];
    let together = std::thread::scope(|scope| {
        let a = scope.spawn(|| run("Zoo", 7));
        let b = scope.spawn(|| run("Once", 8));
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(together, alone);
}

#[test]
fn kernels_are_compiled_once_per_device_for_every_model() {
    let gpu = require!(common::own_gpu());
    let pipelines = || {
        gpu.device
            .get_internal_counters()
            .hal
            .compute_pipelines
            .read()
    };
    let before = pipelines();
    let first = GpuModel::new(&gpu, &common::tiny_model(16)).unwrap();
    assert_eq!(
        pipelines() - before,
        2,
        "argmax, attention_combine: the kernels with one build each"
    );
    // The first session binds rmsnorm's plain build (the prefill norms; a
    // block with post-norms would add its RESIDUAL build) and the weight
    // kernels for F32, its only type:
    // embed (writing x * g beside x), matvec plain (the classifier after a
    // pass's final norm), normed (the decode step's classifier), normed
    // SwiGLU (gate/up), normed with RoPE + append (QKV), and residual adds
    // writing the next norm's x * g, matmul (two rows a thread); and those
    // for its flat F32 cache: rope_append, attention with a workgroup and
    // with a thread per token.
    let mut s = Session::new(&first, None).unwrap();
    s.forward_greedy(1).unwrap();
    let compiled = pipelines() - before;
    assert_eq!(compiled, 13, "every variant it uses, once");
    // Another model, through a clone of the Gpu: nothing compiled again.
    let second = GpuModel::new(&gpu.clone(), &common::tiny_model(32)).unwrap();
    let mut s = Session::new(&second, None).unwrap();
    s.forward_greedy(1).unwrap();
    assert_eq!(pipelines() - before, compiled);
}

#[test]
fn after_the_device_is_destroyed_every_call_says_device_lost_without_panicking() {
    let (model, _) = require!(common::stories());
    let gpu = require!(common::own_gpu());
    // The app's own handler: kvgpu's calls must never reach it.
    let uncaptured = count_uncaptured(&gpu.device);
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let mut s = Session::new(&gm, None).unwrap();
    let first = s.forward_greedy(BOS).unwrap();
    gpu.device.destroy();
    let lost = |r: kvgpu::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert!(matches!(e, kvgpu::Error::DeviceLost), "{what}: {e}");
    };
    lost(s.forward_greedy(first).map(|_| ()), "forward_greedy");
    lost(s.forward(first).map(|_| ()), "forward");
    lost(s.prefill(&[1, 2, 3]).map(|_| ()), "prefill");
    lost(s.greedy_block(first, 4, &[]).map(|_| ()), "greedy_block");
    lost(s.read_cache(0).map(|_| ()), "read_cache");
    lost(Session::new(&gm, None).map(|_| ()), "Session::new");
    lost(GpuModel::new(&gpu, &model).map(|_| ()), "GpuModel::new");
    lost(gpu.check_alive(), "check_alive");
    assert_eq!(uncaptured.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn a_cache_too_big_for_the_device_is_out_of_memory_before_anything_is_allocated() {
    let gpu = require!(common::own_gpu());
    let uncaptured = count_uncaptured(&gpu.device);
    // A million positions of 8 KV heads of 8: 256 MB per layer's K.
    let mut config = common::tiny_model(16).config;
    config.dim = 64;
    config.n_heads = 8;
    config.n_kv_heads = 8;
    config.rope_dim = 8;
    config.seq_len = 1_000_000;
    let model = kvgpu::Model::random(config, 3).unwrap();
    let gm = GpuModel::new(&gpu, &model).unwrap();
    let limit = gpu
        .device
        .limits()
        .max_storage_buffer_binding_size
        .min(gpu.device.limits().max_buffer_size);
    let err = Session::new(&gm, None).unwrap_err();
    match &err {
        kvgpu::Error::OutOfMemory {
            requested,
            limit: Some(l),
            ..
        } => {
            assert_eq!(*requested, 1_000_000 * 64 * 4);
            assert_eq!(*l, limit);
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    // A capacity that fits works on the same model.
    Session::new(&gm, Some(1000))
        .unwrap()
        .forward_greedy(1)
        .unwrap();
    assert_eq!(uncaptured.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn the_kernel_cache_is_written_read_back_and_never_trusted_damaged_or_foreign() {
    let dir = common::scratch("kernel_cache");
    let model = common::tiny_model(16);
    // A device of its own (the kernels compile on it), keeping its kernels in `dir`.
    let open = || {
        let gpu = common::own_gpu()?;
        assert!(gpu.keep_kernels_in(&dir));
        let gm = GpuModel::new(&gpu, &model).unwrap();
        Session::new(&gm, None).unwrap().forward_greedy(1).unwrap();
        assert!(
            !gpu.keep_kernels_in("elsewhere"),
            "set once, before compiling"
        );
        let compiled = gpu.compiled();
        assert!(compiled.pipelines >= 13, "{compiled:?}");
        Some(gpu)
    };
    let gpu = require!(open());
    let path = match gpu.kernel_cache().cloned() {
        Some(kvgpu::KernelCache::Empty { path, why }) => {
            assert_eq!(why, "no file yet");
            path
        }
        Some(kvgpu::KernelCache::Unsupported) => {
            common::skip("the adapter keeps no pipeline cache".into());
            return;
        }
        other => panic!("{other:?}"),
    };
    assert!(path.starts_with(&dir), "{}", path.display());
    let written = gpu.save_kernels().unwrap().expect("a new file");
    assert_eq!(gpu.save_kernels().unwrap(), None, "nothing new to write");
    drop(gpu);

    // Read back: the same data, nothing new to write.
    let gpu = open().unwrap();
    let loaded = kvgpu::KernelCache::Loaded {
        path: path.clone(),
        bytes: written,
    };
    assert_eq!(gpu.kernel_cache(), Some(&loaded));
    assert_eq!(gpu.save_kernels().unwrap(), None);
    drop(gpu);

    // Damaged (a flipped byte of the data, a cut) or another build's
    // (a changed key): ignored, said why, and replaced.
    let good = std::fs::read(&path).unwrap();
    let key_at = good.windows(6).position(|w| w == b"kvgpu ").unwrap();
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let mut foreign = good.clone();
    foreign[key_at + 4] = b'X';
    for (bytes, why) in [
        (flipped, "damaged (checksum mismatch)"),
        (
            good[..good.len() - 1].to_vec(),
            "damaged (cut short or not a kvgpu kernel cache)",
        ),
        (foreign, "written for another build or adapter: kvgpX "),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let gpu = open().unwrap();
        match gpu.kernel_cache() {
            Some(kvgpu::KernelCache::Empty { why: found, .. }) => {
                assert!(found.starts_with(why), "{found}")
            }
            other => panic!("{other:?}"),
        }
        assert!(gpu.save_kernels().unwrap().is_some(), "replaced");
        drop(gpu);
        let gpu = open().unwrap();
        let read = matches!(gpu.kernel_cache(), Some(kvgpu::KernelCache::Loaded { .. }));
        assert!(read, "{:?}", gpu.kernel_cache());
    }
    // An unwritable folder: a typed error that says "write".
    let gpu = common::own_gpu().unwrap();
    let file = dir.join("a file");
    std::fs::write(&file, b"").unwrap();
    gpu.keep_kernels_in(file.join("kernels"));
    GpuModel::new(&gpu, &model).unwrap();
    let err = gpu.save_kernels().unwrap_err();
    assert!(matches!(err, kvgpu::Error::Write { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot write"), "{err}");
}
