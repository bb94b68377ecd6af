//! Each kernel against its CPU reference on seeded random inputs of odd
//! sizes, including position 0, the last position of the cache and
//! grouped-query heads.
//!
//! Tolerance: 1e-4 absolute + 1e-4 relative (f32 sums in another order);
//! data movement kernels (append, embed, argmax) must be exact. Quantized
//! projections are compared with dequantize-then-multiply on the host.

mod common;

use common::{max_abs_diff, random};
use kvgpu::ops::matvec::GpuTensor;
use kvgpu::ops::rope::Rope;
use kvgpu::ops::{
    self, argmax, attention, embed, kv_append, matvec, rmsnorm, rope, swiglu, Dispatch, Kernels,
};
use kvgpu::tensor::{quantize, DType, Tensor};
use kvgpu::Gpu;
use kvgpu::KvDtype;
use wgpu::util::DeviceExt;

struct Bench {
    gpu: Gpu,
    kernels: Kernels,
}

impl Bench {
    fn new() -> Option<Self> {
        let gpu = common::gpu()?;
        let kernels = gpu
            .scoped("compiling", || Kernels::new(&gpu.device))
            .unwrap();
        Some(Self { gpu, kernels })
    }

    fn buffer(&self, data: &[f32]) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// A projection input: uniform, zero-padded to matvec's 16384 values.
    fn input(&self, data: &[f32]) -> wgpu::Buffer {
        let mut padded = data.to_vec();
        padded.resize(matvec::MAX_COLS, 0.0);
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Row `token` of `table`, decoded by the embed kernel.
    fn embed(&self, table: &GpuTensor, token: u32) -> Vec<f32> {
        let (out, step) = (
            self.buffer(&vec![f32::NAN; table.cols]),
            self.step_token(0, token),
        );
        self.run(&embed::dispatch(
            &self.gpu.device,
            &self.kernels.embed,
            &out,
            table,
            &step,
        ));
        self.read(&out)
    }

    fn step(&self, pos: u32) -> wgpu::Buffer {
        self.step_token(pos, 0)
    }

    fn step_token(&self, pos: u32, token: u32) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[pos, token, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    fn run(&self, d: &Dispatch) {
        self.gpu
            .scoped("test dispatch", || {
                let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    d.record(&mut pass);
                }
                self.gpu.queue.submit([enc.finish()]);
            })
            .unwrap();
    }

    fn read(&self, b: &wgpu::Buffer) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.gpu.read_buffer(b, b.size()).unwrap())
    }
}

fn assert_close(gpu: &[f32], cpu: &[f32], what: &str) {
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= 1e-4 + 1e-4 * c.abs(),
            "{what}: element {i}: gpu {g} vs cpu {c} (max diff {})",
            max_abs_diff(gpu, cpu)
        );
    }
}

/// Random weights of `dtype`: float types and Q8_0 / Q4_0 through the
/// quantizer; K-quant blocks from random bytes with small, finite scales.
fn random_tensor(dtype: DType, rows: usize, cols: usize, seed: u64) -> Tensor {
    let bytes = match dtype {
        DType::Q4_K | DType::Q6_K => {
            let mut rng = kvgpu::sampler::XorShift::new(seed | 1);
            let mut bytes: Vec<u8> = (0..rows * dtype.row_bytes(cols).unwrap())
                .map(|_| rng.next_u32() as u8)
                .collect();
            let scale_at: &[usize] = if dtype == DType::Q4_K {
                &[0, 2]
            } else {
                &[208]
            };
            for block in bytes.chunks_mut(dtype.block_bytes()) {
                for &at in scale_at {
                    let d = half::f16::from_f32(0.001 + rng.next_f32() * 0.01);
                    block[at..at + 2].copy_from_slice(&d.to_le_bytes());
                }
            }
            bytes
        }
        _ => quantize(dtype, &random(rows * cols, seed), cols).unwrap(),
    };
    let n = bytes.len();
    Tensor::from_shared(dtype, rows, cols, std::sync::Arc::new(bytes), 0..n)
}

fn upload(b: &Bench, t: &Tensor, limit: u64) -> GpuTensor {
    b.gpu
        .scoped("upload", || {
            GpuTensor::upload(&b.gpu.device, &b.gpu.queue, t, limit, "test")
        })
        .unwrap()
        .unwrap()
}

#[test]
fn matvec_matches_cpu_for_every_dtype() {
    let b = require!(Bench::new());
    let big = 128 << 20;
    // GPU `W x` against the host's dequantize-then-multiply, `W` in chunks of at most `limit` bytes.
    let check = |w: &Tensor, limit: u64, what: String| {
        let x = random(w.cols, 7);
        let gw = upload(&b, w, limit);
        if limit < big {
            assert!(gw.chunks.len() > 1, "{what}: should be split");
        }
        let (xb, ob) = (b.input(&x), b.buffer(&vec![f32::NAN; w.rows]));
        b.run(&matvec::dispatch(
            &b.gpu.device,
            &b.kernels.matvec,
            &ob,
            &gw,
            &xb,
        ));
        let mut expect = vec![0.0; w.rows];
        matvec::cpu(&mut expect, w, &x);
        assert_close(&b.read(&ob), &expect, &what);
    };
    for dtype in DType::ALL {
        let n = dtype.block_len().max(32);
        // Odd row counts; columns a whole number of blocks; a limit that splits into chunks.
        for (rows, cols, limit) in [
            (1, n, big),
            (37, 3 * n, big),
            (301, 5 * n, big),
            (67, 2 * n, 999),
        ] {
            let w = random_tensor(dtype, rows, cols, rows as u64);
            check(
                &w,
                limit,
                format!("matvec {dtype:?} {rows}x{cols} limit {limit}"),
            );
        }
    }
    // Float rows of odd length: rows start at any byte alignment and end in a tail.
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(29, 37), (7, 13), (3, 1)] {
            check(
                &random_tensor(dtype, rows, cols, 5),
                big,
                format!("matvec {dtype:?} {rows}x{cols}"),
            );
        }
    }
    // Odd F32 shapes; 4200001 rows (65627 workgroups) spill the grid into its y dimension.
    for (rows, cols) in [(1757, 65), (4_200_001, 1)] {
        check(
            &random_tensor(DType::F32, rows, cols, 3),
            big,
            format!("matvec f32 {rows}x{cols}"),
        );
    }
    // The residual form, out += W x, in place.
    let w = random_tensor(DType::F16, 301, 96, 8);
    let (x, base) = (random(96, 9), random(301, 10));
    let (xb, ob) = (b.input(&x), b.buffer(&base));
    b.run(&matvec::dispatch_add(
        &b.gpu.device,
        &b.kernels.matvec,
        &ob,
        &upload(&b, &w, big),
        &xb,
    ));
    let mut expect = base.clone();
    matvec::cpu_add(&mut expect, &w, &x);
    assert_close(&b.read(&ob), &expect, "matvec += (residual)");
}

#[test]
fn embed_reads_the_token_row_of_a_split_table() {
    let b = require!(Bench::new());
    for dtype in DType::ALL {
        let cols = dtype.block_len().max(32) * 2;
        let rows = 53;
        let table = random_tensor(dtype, rows, cols, 11);
        let gt = upload(&b, &table, 5 * dtype.row_bytes(cols).unwrap() as u64 + 3);
        assert!(gt.chunks.len() > 5);
        for token in [0, 4, 5, 31, 52] {
            let got = b.embed(&gt, token);
            let mut expect = vec![0.0; cols];
            embed::cpu(&mut expect, &table, token);
            assert_eq!(got, expect, "{dtype:?} token {token}");
        }
    }
}

#[test]
fn dequantize_matches_known_values() {
    // One Q8_0 block: scale 0.5, values -128..120 in steps of 8.
    let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
    let mut out = vec![0.0; 32];
    kvgpu::tensor::dequantize(DType::Q8_0, &block, &mut out);
    let expect: Vec<f32> = (0..32).map(|i: i32| (i * 8 - 128) as f32 * 0.5).collect();
    assert_eq!(out, expect);
    // One Q4_0 block: scale 2, low nibbles 0..15, high nibbles 15..0.
    let mut block = half::f16::from_f32(2.0).to_le_bytes().to_vec();
    block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    kvgpu::tensor::dequantize(DType::Q4_0, &block, &mut out);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(out[j + 16], (7.0 - j as f32) * 2.0);
    }
    // Quantizers round-trip within half a step.
    let x = random(64, 5);
    for (dtype, step) in [
        (DType::Q8_0, 1.0 / 127.0),
        (DType::Q4_0, 1.0 / 8.0),
        (DType::F16, 1e-3),
    ] {
        let q = quantize(dtype, &x, 64).unwrap();
        let mut back = vec![0.0; 64];
        kvgpu::tensor::dequantize(dtype, &q, &mut back);
        assert!(
            max_abs_diff(&back, &x) <= step,
            "{dtype:?}: {}",
            max_abs_diff(&back, &x)
        );
    }
}

#[test]
fn rmsnorm_matches_cpu() {
    let b = require!(Bench::new());
    for (n, seed) in [(1, 1), (255, 2), (1001, 3)] {
        let x: Vec<f32> = random(n, seed).iter().map(|v| v * 30.0).collect();
        let w = random(n, seed + 1);
        let (xb, wb, ob) = (b.buffer(&x), b.buffer(&w), b.buffer(&vec![0.0; n]));
        b.run(&rmsnorm::dispatch(
            &b.gpu.device,
            &b.kernels.rmsnorm,
            &ob,
            &xb,
            &wb,
            n,
            1e-5,
        ));
        let mut expect = vec![0.0; n];
        rmsnorm::cpu(&mut expect, &x, &w, 1e-5);
        assert_close(&b.read(&ob), &expect, &format!("rmsnorm {n}"));
    }
}

#[test]
fn rope_matches_cpu_at_first_and_last_position() {
    let b = require!(Bench::new());
    // Grouped-query: 6 query heads over 2 KV heads of size 10; full, partial
    // (first 6 dimensions) and Llama-3-style scaled rotations.
    let (head_size, n_heads, n_kv_heads, capacity) = (10, 6, 2, 37);
    let (q_dim, kv_dim) = (n_heads * head_size, n_kv_heads * head_size);
    let ropes = [
        Rope {
            head_size,
            rope_dim: 10,
            theta: 10000.0,
            freq_factors: None,
        },
        Rope {
            head_size,
            rope_dim: 6,
            theta: 500000.0,
            freq_factors: None,
        },
        Rope {
            head_size,
            rope_dim: 10,
            theta: 500000.0,
            freq_factors: Some(vec![1.0, 1.5, 2.0, 8.0, 32.0]),
        },
    ];
    for rope in ropes {
        let table = b.buffer(&rope.table(capacity));
        for pos in [0, 1, 17, capacity - 1] {
            let q = random(q_dim, pos as u64);
            let k = random(kv_dim, pos as u64 + 50);
            let (qb, kb, step) = (b.buffer(&q), b.buffer(&k), b.step(pos as u32));
            b.run(&rope::dispatch(
                &b.gpu.device,
                &b.kernels.rope,
                &qb,
                &kb,
                &step,
                &table,
                q_dim,
                kv_dim,
                head_size,
            ));
            let (mut eq, mut ek) = (q.clone(), k.clone());
            rope::cpu(&mut eq, &mut ek, pos, &rope);
            assert_close(&b.read(&qb), &eq, &format!("rope q at pos {pos} {rope:?}"));
            assert_close(&b.read(&kb), &ek, &format!("rope k at pos {pos} {rope:?}"));
        }
    }
}

/// Host values as a cache buffer's contents: f32 bits, or f16 pairs.
fn cache_bytes(values: &[f32], dtype: KvDtype) -> Vec<u8> {
    match dtype {
        KvDtype::F32 => bytemuck::cast_slice(values).to_vec(),
        KvDtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// A cache buffer's contents as host values.
fn cache_values(bytes: &[u8], dtype: KvDtype) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        KvDtype::F16 => bytes
            .chunks_exact(2)
            .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
            .collect(),
    }
}

impl Bench {
    fn cache(&self, values: &[f32], dtype: KvDtype) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &cache_bytes(values, dtype),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    fn read_cache(&self, b: &wgpu::Buffer, dtype: KvDtype) -> Vec<f32> {
        cache_values(&self.gpu.read_buffer(b, b.size()).unwrap(), dtype)
    }
}

/// Values as an f16 cache holds them.
fn rounded(values: &[f32], dtype: KvDtype) -> Vec<f32> {
    cache_values(&cache_bytes(values, dtype), dtype)
}

#[test]
fn kv_append_writes_exactly_one_slot() {
    let b = require!(Bench::new());
    let (kv_dim, capacity) = (78, 41);
    for dtype in [KvDtype::F32, KvDtype::F16] {
        for pos in [0, 13, capacity - 1] {
            let kc0 = rounded(&random(capacity * kv_dim, 1), dtype);
            let vc0 = rounded(&random(capacity * kv_dim, 2), dtype);
            let (k, v) = (
                random(kv_dim, 3 + pos as u64),
                random(kv_dim, 4 + pos as u64),
            );
            let (kcb, vcb) = (b.cache(&kc0, dtype), b.cache(&vc0, dtype));
            let (kb, vb, step) = (b.buffer(&k), b.buffer(&v), b.step(pos as u32));
            b.run(&kv_append::dispatch(
                &b.gpu.device,
                &b.kernels.kv_append,
                &kcb,
                &vcb,
                &kb,
                &vb,
                &step,
                kv_dim,
                capacity,
                dtype,
            ));
            let (mut ek, mut ev) = (kc0.clone(), vc0.clone());
            kv_append::cpu(&mut ek, &mut ev, &k, &v, pos, dtype);
            assert_eq!(
                b.read_cache(&kcb, dtype),
                ek,
                "{dtype:?} k cache at pos {pos}"
            );
            assert_eq!(
                b.read_cache(&vcb, dtype),
                ev,
                "{dtype:?} v cache at pos {pos}"
            );
        }
        // A position past capacity writes nothing (the host never asks for one).
        let kc0 = rounded(&random(capacity * kv_dim, 5), dtype);
        let (kcb, vcb) = (b.cache(&kc0, dtype), b.cache(&kc0, dtype));
        let (kb, step) = (b.buffer(&random(kv_dim, 6)), b.step(capacity as u32));
        b.run(&kv_append::dispatch(
            &b.gpu.device,
            &b.kernels.kv_append,
            &kcb,
            &vcb,
            &kb,
            &kb,
            &step,
            kv_dim,
            capacity,
            dtype,
        ));
        assert_eq!(
            b.read_cache(&kcb, dtype),
            kc0,
            "write past capacity must be dropped"
        );
    }
}

#[test]
fn attention_matches_cpu_with_grouped_query_heads() {
    let b = require!(Bench::new());
    let shapes = [
        // (n_heads, n_kv_heads, head_size, capacity): grouped-query, multi-head,
        // a head wider than the workgroup, more positions than threads.
        (6, 2, 10, 37),
        (4, 4, 8, 131),
        (3, 1, 70, 9),
        (1, 1, 2, 1),
    ];
    for kv_dtype in [KvDtype::F32, KvDtype::F16] {
        for (i, &(n_heads, n_kv_heads, head_size, capacity)) in shapes.iter().enumerate() {
            let shape = attention::Shape {
                n_heads,
                n_kv_heads,
                head_size,
                capacity,
                kv_dtype,
            };
            let kv_dim = n_kv_heads * head_size;
            let seed = 10 * i as u64;
            // Large keys make large scores: the softmax must subtract the max.
            let kc: Vec<f32> = random(capacity * kv_dim, seed)
                .iter()
                .map(|v| v * 8.0)
                .collect();
            let (kc, vc) = (
                rounded(&kc, kv_dtype),
                rounded(&random(capacity * kv_dim, seed + 1), kv_dtype),
            );
            let (kcb, vcb) = (b.cache(&kc, kv_dtype), b.cache(&vc, kv_dtype));
            let scores = b.buffer(&vec![0.0; n_heads * capacity]);
            for pos in [0, capacity / 2, capacity - 1] {
                let q: Vec<f32> = random(n_heads * head_size, seed + pos as u64)
                    .iter()
                    .map(|v| v * 8.0)
                    .collect();
                let (qb, ob, step) = (
                    b.buffer(&q),
                    b.buffer(&vec![0.0; n_heads * head_size]),
                    b.step(pos as u32),
                );
                b.run(&attention::dispatch(
                    &b.gpu.device,
                    &b.kernels.attention,
                    &ob,
                    &qb,
                    &kcb,
                    &vcb,
                    &scores,
                    &step,
                    shape,
                ));
                let mut expect = vec![0.0; n_heads * head_size];
                attention::cpu(&mut expect, &q, &kc, &vc, pos, shape);
                assert_close(
                    &b.read(&ob),
                    &expect,
                    &format!("attention {shape:?} at pos {pos}"),
                );
            }
        }
    }
}

#[test]
fn swiglu_matches_cpu() {
    let b = require!(Bench::new());
    let n = 1001;
    let gate: Vec<f32> = random(n, 1).iter().map(|v| v * 10.0).collect();
    let up = random(n, 2);
    let (gb, ub) = (b.buffer(&gate), b.buffer(&up));
    b.run(&swiglu::dispatch(
        &b.gpu.device,
        &b.kernels.swiglu,
        &gb,
        &ub,
        n,
    ));
    let mut expect = gate.clone();
    swiglu::cpu(&mut expect, &up);
    assert_close(&b.read(&gb), &expect, "swiglu");
}

#[test]
fn argmax_matches_cpu_and_takes_the_first_of_ties() {
    let b = require!(Bench::new());
    for (n, seed) in [(1, 1), (257, 2), (32000, 3), (70001, 4)] {
        let mut x = random(n, seed);
        if n > 10 {
            // Two equal maxima: the lower index wins.
            x[n - 3] = 5.0;
            x[n / 3] = 5.0;
        }
        let xb = b.buffer(&x);
        let out = b.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        b.run(&argmax::dispatch(
            &b.gpu.device,
            &b.kernels.argmax,
            &out,
            &xb,
            n,
        ));
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&b.gpu.read_buffer(&out, 4).unwrap());
        assert_eq!(got[0], argmax::cpu(&x), "argmax of {n}");
    }
}

#[test]
fn every_kernel_has_a_test_here() {
    let source = include_str!("kernels.rs");
    for s in ops::SHADERS {
        assert!(
            source.contains(&format!("{}::dispatch(", s.name)),
            "kernel {} has no test in tests/kernels.rs",
            s.name
        );
    }
}

/// `tests/fixtures/ggml_blocks.dat`: random Q4_K, Q6_K, Q8_0 and Q4_0 blocks
/// and their values as dequantized by llama.cpp's gguf-py (`gguf.dequantize`),
/// an independent reference for the block layouts. Records: u32 GGML type id,
/// u32 block count, the blocks, then f32 values.
#[test]
fn dequantize_matches_llama_cpp_gguf_py() {
    let data = include_bytes!("fixtures/ggml_blocks.dat");
    let mut at = 0;
    let mut seen = Vec::new();
    while at < data.len() {
        let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
        let (id, n) = (word(at), word(at + 4) as usize);
        let dtype = match id {
            12 => DType::Q4_K,
            14 => DType::Q6_K,
            8 => DType::Q8_0,
            2 => DType::Q4_0,
            other => panic!("type {other}"),
        };
        at += 8;
        let blocks = &data[at..at + n * dtype.block_bytes()];
        at += blocks.len();
        let values: Vec<f32> = data[at..at + n * dtype.block_len() * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += values.len() * 4;
        let mut ours = vec![0.0; values.len()];
        kvgpu::tensor::dequantize(dtype, blocks, &mut ours);
        assert_eq!(ours, values, "{dtype:?}");
        // And the GPU decodes the same blocks to the same values.
        if let Some(b) = Bench::new() {
            let t = Tensor::from_shared(
                dtype,
                n,
                dtype.block_len(),
                std::sync::Arc::new(blocks.to_vec()),
                0..blocks.len(),
            );
            let gt = upload(&b, &t, 128 << 20);
            for token in 0..n as u32 {
                let got = b.embed(&gt, token);
                let row = &values[token as usize * dtype.block_len()..][..dtype.block_len()];
                assert_eq!(got, row, "{dtype:?} block {token} on the GPU");
            }
        }
        seen.push(dtype);
    }
    assert_eq!(seen, [DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_0]);
}
