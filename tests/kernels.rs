//! Each kernel against its CPU reference on seeded random inputs of odd
//! sizes, including position 0, the last position of the cache,
//! grouped-query heads, and passes of several tokens.
//!
//! Tolerance: 1e-4 absolute + 1e-4 relative (f32 sums in another order);
//! data movement kernels (append, embed, argmax) must be exact. Quantized
//! projections are compared with dequantize-then-multiply on the host.

mod common;

use common::{max_abs_diff, random};
use kvgpu::ops::matvec::{CpuMode, GpuTensor, Mode};
use kvgpu::ops::rmsnorm::Rows;
use kvgpu::ops::rope_append::{self, Rope};
use kvgpu::ops::{
    self, argmax, attention, attention_combine, embed, matmul, matvec, rmsnorm, Dispatch, Kernels,
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

    /// A projection input: uniform, zero-padded to at least matvec's 16384 values.
    fn input(&self, data: &[f32]) -> wgpu::Buffer {
        let mut padded = data.to_vec();
        padded.resize(data.len().max(matvec::MAX_COLS), 0.0);
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Rows `tokens` of `table`, decoded by the embed kernel in one pass
    /// into rows 3 values wider (the padding must stay untouched).
    fn embed(&self, table: &GpuTensor, tokens: &[u32]) -> Vec<f32> {
        let stride = table.cols + 3;
        let out = self.buffer(&vec![f32::NAN; tokens.len() * stride]);
        let tb = self.u32s(tokens);
        let d = embed::dispatch(
            &self.gpu.device,
            &self.kernels.embed,
            &out,
            stride,
            table,
            &tb,
        );
        self.run(&d, tokens.len());
        let rows = self.read(&out);
        assert!(rows
            .chunks(stride)
            .all(|r| r[table.cols..].iter().all(|v| v.is_nan())));
        rows.chunks(stride)
            .flat_map(|r| &r[..table.cols])
            .copied()
            .collect()
    }

    fn u32s(&self, data: &[u32]) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// The step uniform of a pass of `n` tokens from position `pos`.
    fn step(&self, pos: usize, n: usize) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[pos as u32, n as u32, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Runs `d` for a pass of `n` tokens.
    fn run(&self, d: &Dispatch, n: usize) {
        self.gpu
            .scoped("test dispatch", || {
                let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    d.record(&mut pass, n as u32);
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

/// Weights for a projection test: `w` and, for SwiGLU, `up` (same shape).
struct Projection {
    w: Tensor,
    up: Option<Tensor>,
    /// Upload as several parts of these row counts stacked (mixed types).
    what: String,
}

/// Every projection shape and type the kernels must handle: each dtype on
/// odd row counts, in chunks; float rows at any byte alignment with tails;
/// a grid that spills into y; SwiGLU pairs; and a stacked matrix mixing types.
fn projections() -> Vec<(Projection, u64)> {
    let big = 128 << 20;
    let mut out = Vec::new();
    let mut add = |w: Tensor, up: Option<Tensor>, limit: u64| {
        let what = format!(
            "{:?} {}x{} limit {limit}{}",
            w.dtype,
            w.rows,
            w.cols,
            if up.is_some() { " swiglu" } else { "" }
        );
        out.push((Projection { w, up, what }, limit));
    };
    for dtype in DType::ALL {
        let n = dtype.block_len().max(32);
        for (rows, cols, limit) in [
            (1, n, big),
            (37, 3 * n, big),
            (301, 5 * n, big),
            // Four rows per thread (matmul), the last workgroup partly filled.
            (1000, n, big),
            (67, 2 * n, 999),
        ] {
            add(random_tensor(dtype, rows, cols, rows as u64), None, limit);
        }
        // SwiGLU: gate of this type, up of another, chunked alike.
        let up_type = if dtype == DType::F16 {
            DType::Q8_0
        } else {
            DType::F16
        };
        let (gate, up) = (
            random_tensor(dtype, 45, 2 * n, 3),
            random_tensor(up_type, 45, 2 * n, 4),
        );
        let limit = 7 * gate.row_bytes().max(up.row_bytes()) as u64 + 5;
        add(gate, Some(up), limit);
    }
    // Odd widths: rows start at any byte alignment and end in a tail; 3001
    // columns leave room for only 5 tokens per 64 KiB matmul input tile.
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(29, 37), (7, 13), (3, 1), (70, 131), (9, 3001)] {
            add(random_tensor(dtype, rows, cols, 5), None, big);
        }
    }
    add(random_tensor(DType::F32, 1757, 65, 3), None, big);
    out
}

/// GPU result of `p` for `n` tokens of `x` (n, cols) over `base` (n, rows):
/// matvec (n = 1) or matmul.
fn project(
    b: &Bench,
    p: &Projection,
    gw: &GpuTensor,
    gup: Option<&GpuTensor>,
    x: &[f32],
    base: &[f32],
    add: bool,
) -> Vec<f32> {
    let n = x.len() / p.w.cols;
    let ob = b.buffer(base);
    let mode = match (gup, add) {
        (Some(up), _) => Mode::SwiGlu { up },
        (None, true) => Mode::Add,
        (None, false) => Mode::Set,
    };
    if n == 1 {
        let d = matvec::dispatch(
            &b.gpu.device,
            &b.kernels.matvec,
            &ob,
            gw,
            &b.input(x),
            mode,
            None,
        );
        b.run(&d, n);
        return b.read(&ob);
    }
    // matmul: input rows `input_stride` apart (padding zero), output rows
    // 5 values wider than the matrix (padding untouched).
    let (cols, rows) = (p.w.cols, p.w.rows);
    let x_stride = matvec::input_stride(cols);
    let mut padded = vec![0.0; (n - 1) * x_stride + matvec::MAX_COLS];
    for (t, row) in x.chunks(cols).enumerate() {
        padded[t * x_stride..][..cols].copy_from_slice(row);
    }
    let out_stride = rows + 5;
    let mut out = vec![f32::NAN; n * out_stride];
    for (t, row) in base.chunks(rows).enumerate() {
        out[t * out_stride..][..rows].copy_from_slice(row);
    }
    let (xb, ob, step) = (b.input(&padded), b.buffer(&out), b.step(0, n));
    let k = &b.kernels.matmul;
    let d = matmul::dispatch(
        &b.gpu.device,
        k,
        &ob,
        out_stride,
        gw,
        &xb,
        x_stride,
        &step,
        mode,
        n,
    );
    b.run(&d, n);
    let got = b.read(&ob);
    assert!(got
        .chunks(out_stride)
        .all(|r| r[rows..].iter().all(|v| v.is_nan())));
    got.chunks(out_stride)
        .flat_map(|r| &r[..rows])
        .copied()
        .collect()
}

/// Checks matvec (1 token) and matmul (`tokens`) against the host
/// reference for every projection: `out = W x`, `out += W x`, SwiGLU.
fn check_projections(tokens: &[usize]) {
    let b = require!(Bench::new());
    for (p, limit) in projections() {
        let (gw, gup) = match &p.up {
            Some(up) => {
                let (g, u) = b
                    .gpu
                    .scoped("upload", || {
                        GpuTensor::upload_pair(&b.gpu.device, &b.gpu.queue, &p.w, up, limit, "t")
                    })
                    .unwrap()
                    .unwrap();
                (g, Some(u))
            }
            None => (upload(&b, &p.w, limit), None),
        };
        if limit < 1 << 20 {
            assert!(gw.chunks.len() > 1, "{}: should be split", p.what);
        }
        for &n in tokens {
            let x = random(n * p.w.cols, 7 + n as u64);
            let base = random(n * p.w.rows, 8);
            for add in [false, true] {
                if add && p.up.is_some() {
                    continue;
                }
                let got = project(&b, &p, &gw, gup.as_ref(), &x, &base, add);
                let mut expect = base.clone();
                let mode = match (&p.up, add) {
                    (Some(up), _) => CpuMode::SwiGlu { up },
                    (None, true) => CpuMode::Add,
                    (None, false) => CpuMode::Set,
                };
                matmul::cpu(&mut expect, &p.w, &x, mode);
                let what = format!("{} tokens {n}{}", p.what, if add { " +=" } else { "" });
                // f32 sums in another order: error relative to the sum of |terms|.
                let mut bound = magnitude(&p.w, &x);
                if let Some(up) = &p.up {
                    let a = &mut vec![0.0; base.len()];
                    let b = &mut vec![0.0; base.len()];
                    matmul::cpu(a, &p.w, &x, CpuMode::Set);
                    matmul::cpu(b, up, &x, CpuMode::Set);
                    let mb = magnitude(up, &x);
                    for i in 0..bound.len() {
                        bound[i] = (1.0 + bound[i] + a[i].abs()) * (1.0 + mb[i] + b[i].abs());
                    }
                }
                for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                    let tolerance = 1e-5 * (1.0 + bound[i] + base[i].abs());
                    assert!(
                        (g - e).abs() <= tolerance,
                        "{what}: element {i}: gpu {g} vs cpu {e} (tolerance {tolerance})"
                    );
                }
            }
        }
    }
}

/// Per output (n, rows): the sum of |w x| terms of its dot product.
fn magnitude(w: &Tensor, x: &[f32]) -> Vec<f32> {
    let abs: Vec<f32> = w.to_f32().iter().map(|v| v.abs()).collect();
    let abs = Tensor::from_f32(w.rows, w.cols, &abs);
    let xs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let mut out = vec![0.0; x.len() / w.cols * w.rows];
    matmul::cpu(&mut out, &abs, &xs, CpuMode::Set);
    out
}

#[test]
fn matvec_matches_cpu_for_every_dtype() {
    check_projections(&[1]);
    // 4200001 rows (65627 workgroups) spill the grid into its y dimension.
    let b = require!(Bench::new());
    let w = random_tensor(DType::F32, 4_200_001, 1, 3);
    let p = Projection {
        w,
        up: None,
        what: "f32 4200001x1".into(),
    };
    let gw = upload(&b, &p.w, 128 << 20);
    let x = random(1, 4);
    let got = project(&b, &p, &gw, None, &x, &vec![f32::NAN; p.w.rows], false);
    let mut expect = vec![0.0; p.w.rows];
    matvec::cpu(&mut expect, &p.w, &x, CpuMode::Set);
    assert_close(&got, &expect, &p.what);
}

#[test]
fn matvec_with_rmsnorm_matches_norm_then_matvec() {
    let b = require!(Bench::new());
    // The NORM pipeline: out = W (rmsnorm(x) * g), for the set and SwiGLU
    // modes, float and block types, odd widths.
    for (dtype, rows, cols) in [
        (DType::F32, 37, 75),
        (DType::F16, 130, 64),
        (DType::Q8_0, 70, 96),
        (DType::Q4_K, 9, 256),
    ] {
        let w = random_tensor(dtype, rows, cols, 3);
        let up = random_tensor(DType::F16, rows, cols, 4);
        let x: Vec<f32> = random(cols, 5).iter().map(|v| v * 20.0).collect();
        let g = random(cols, 6);
        let mut normed = vec![0.0; cols];
        rmsnorm::cpu(&mut normed, &x, &g, 1e-5);
        let (gw, gup) = b
            .gpu
            .scoped("upload", || {
                GpuTensor::upload_pair(&b.gpu.device, &b.gpu.queue, &w, &up, 128 << 20, "t")
            })
            .unwrap()
            .unwrap();
        let gb = matvec::norm_weights(&b.gpu.device, "g", &g);
        for swiglu in [false, true] {
            let (mode, cpu_mode) = match swiglu {
                true => (Mode::SwiGlu { up: &gup }, CpuMode::SwiGlu { up: &up }),
                false => (Mode::Set, CpuMode::Set),
            };
            let ob = b.buffer(&vec![f32::NAN; rows]);
            let d = matvec::dispatch(
                &b.gpu.device,
                &b.kernels.matvec_norm,
                &ob,
                &gw,
                &b.input(&x),
                mode,
                Some((&gb, 1e-5)),
            );
            b.run(&d, 1);
            let mut expect = vec![0.0; rows];
            matvec::cpu(&mut expect, &w, &normed, cpu_mode);
            // f32 sums in another order: relative to the sum of |terms| (for
            // SwiGLU, of both projections).
            let mut bound = magnitude(&w, &normed);
            if swiglu {
                let mu = magnitude(&up, &normed);
                bound = bound
                    .iter()
                    .zip(mu)
                    .map(|(m, u)| (1.0 + m) * (1.0 + u))
                    .collect();
            }
            for (i, (g, e)) in b.read(&ob).iter().zip(&expect).enumerate() {
                let tolerance = 1e-5 * (1.0 + bound[i] + e.abs());
                assert!(
                    (g - e).abs() <= tolerance,
                    "{dtype:?} {rows}x{cols} swiglu {swiglu}: element {i}: {g} vs {e}"
                );
            }
        }
    }
}

#[test]
fn matmul_matches_cpu_for_every_dtype() {
    // Four rows per thread where two would not leave less work in vain.
    let per_thread = [64, 172, 301, 768, 1000, 2048].map(matmul::rows_per_thread);
    assert_eq!(per_thread, [2, 2, 2, 4, 4, 4]);
    // Partial and whole tiles of 8 tokens.
    check_projections(&[2, 8, 13]);
}

#[test]
fn stacked_projection_mixes_storage_types() {
    let b = require!(Bench::new());
    // Q, K, V as one matrix where each part has its own type (as in
    // llama.cpp's Q4_K_M files): each part keeps its chunk(s).
    let parts = [
        random_tensor(DType::Q4_K, 37, 256, 1),
        random_tensor(DType::Q8_0, 11, 256, 2),
        random_tensor(DType::F16, 11, 256, 3),
    ];
    let refs: Vec<&Tensor> = parts.iter().collect();
    let gw = b
        .gpu
        .scoped("upload", || {
            GpuTensor::upload_stacked(&b.gpu.device, &b.gpu.queue, &refs, 128 << 20, "qkv")
        })
        .unwrap()
        .unwrap();
    assert_eq!((gw.rows, gw.chunks.len()), (59, 3));
    // Same types stack into one texture.
    let same = [&parts[1], &parts[1]];
    let one = b
        .gpu
        .scoped("upload", || {
            GpuTensor::upload_stacked(&b.gpu.device, &b.gpu.queue, &same, 128 << 20, "qkv")
        })
        .unwrap()
        .unwrap();
    assert_eq!((one.rows, one.chunks.len()), (22, 1));
    let whole: Vec<f32> = parts.iter().flat_map(|t| t.to_f32()).collect();
    let whole = Tensor::from_f32(59, 256, &whole);
    let p = Projection {
        w: whole,
        up: None,
        what: "stacked q4_k/q8_0/f16".into(),
    };
    for n in [1, 9] {
        let x = random(n * 256, 5);
        let got = project(&b, &p, &gw, None, &x, &vec![f32::NAN; n * 59], false);
        let mut expect = vec![0.0; n * 59];
        matmul::cpu(&mut expect, &p.w, &x, CpuMode::Set);
        assert_close(&got, &expect, &format!("{} tokens {n}", p.what));
    }
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
        // One pass of several tokens, from different chunks, one repeated.
        let tokens = [0, 4, 5, 31, 52, 4];
        let got = b.embed(&gt, &tokens);
        for (i, &token) in tokens.iter().enumerate() {
            let mut expect = vec![0.0; cols];
            embed::cpu(&mut expect, &table, token);
            assert_eq!(
                got[i * cols..(i + 1) * cols],
                expect,
                "{dtype:?} token {token}"
            );
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
    for (n, tokens, seed) in [(1, 1, 1), (255, 3, 2), (1001, 2, 3)] {
        // Rows 7 values wider than the vector: the padding is neither read nor written.
        let stride = n + 7;
        let x: Vec<f32> = random(tokens * stride, seed)
            .iter()
            .map(|v| v * 30.0)
            .collect();
        let w = random(n, seed + 1);
        let mut expect = vec![0.0; tokens * n];
        for (o, x) in expect.chunks_mut(n).zip(x.chunks(stride)) {
            rmsnorm::cpu(o, &x[..n], &w, 1e-5);
        }
        let (xb, wb, step) = (b.buffer(&x), b.buffer(&w), b.step(0, tokens));
        for rows in [Rows::All, Rows::Last] {
            let ob = b.buffer(&vec![f32::NAN; tokens * stride]);
            let d = rmsnorm::dispatch(
                &b.gpu.device,
                &b.kernels.rmsnorm,
                &ob,
                &xb,
                &wb,
                &step,
                n,
                stride,
                1e-5,
                rows,
            );
            b.run(&d, tokens);
            let got = b.read(&ob);
            let written = match rows {
                Rows::All => tokens,
                // Only the last token's row, into row 0.
                Rows::Last => 1,
            };
            let values: Vec<f32> = got
                .chunks(stride)
                .take(written)
                .flat_map(|r| &r[..n])
                .copied()
                .collect();
            let want = &expect[(tokens - written) * n..];
            assert_close(&values, want, &format!("rmsnorm {n} x {tokens} {rows:?}"));
            let untouched = got.chunks(stride).enumerate().all(|(t, r)| {
                let from = if t < written { n } else { 0 };
                r[from..].iter().all(|v| v.is_nan())
            });
            assert!(untouched, "rmsnorm {n} {rows:?} wrote outside its rows");
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
fn rope_append_matches_cpu_and_writes_only_its_slots() {
    let b = require!(Bench::new());
    // Grouped-query: 6 query heads over 2 KV heads of size 10; full, partial
    // (first 6 dimensions) and Llama-3-style scaled rotations.
    let (head_size, n_heads, n_kv_heads, capacity) = (10, 6, 2, 37);
    let (q_dim, kv_dim) = (n_heads * head_size, n_kv_heads * head_size);
    let width = q_dim + 2 * kv_dim;
    let rope = |rope_dim, theta, freq_factors| Rope {
        head_size,
        rope_dim,
        theta,
        freq_factors,
    };
    let ropes = [
        rope(10, 10000.0, None),
        rope(6, 500000.0, None),
        rope(10, 500000.0, Some(vec![1.0, 1.5, 2.0, 8.0, 32.0])),
    ];
    for rope in ropes {
        let table = b.buffer(&rope.table(capacity));
        for kv_dtype in [KvDtype::F32, KvDtype::F16] {
            let shape = rope_append::Shape {
                q_dim,
                kv_dim,
                head_size,
                capacity,
                kv_dtype,
            };
            let run = |qkv: &[f32], kc: &[f32], vc: &[f32], pos: usize, n: usize| {
                let (kcb, vcb) = (b.cache(kc, kv_dtype), b.cache(vc, kv_dtype));
                let (qkvb, qb) = (b.buffer(qkv), b.buffer(&vec![f32::NAN; n * q_dim]));
                let d = rope_append::dispatch(
                    &b.gpu.device,
                    &b.kernels.rope_append,
                    &qb,
                    &kcb,
                    &vcb,
                    &qkvb,
                    &b.step(pos, n),
                    &table,
                    shape,
                );
                b.run(&d, n);
                (
                    b.read(&qb),
                    b.read_cache(&kcb, kv_dtype),
                    b.read_cache(&vcb, kv_dtype),
                )
            };
            // (first position, tokens): one token at the first and last slots, passes of several.
            for (pos, n) in [(0, 1), (capacity - 1, 1), (0, 5), (17, 11)] {
                let qkv = random(n * width, pos as u64 + 50);
                let kc0 = rounded(&random(capacity * kv_dim, 1), kv_dtype);
                let vc0 = rounded(&random(capacity * kv_dim, 2), kv_dtype);
                let (q, k, v) = run(&qkv, &kc0, &vc0, pos, n);
                let (mut eq, mut ek, mut ev) = (vec![0.0; n * q_dim], kc0.clone(), vc0.clone());
                for (t, row) in qkv.chunks(width).enumerate() {
                    let q = &mut eq[t * q_dim..(t + 1) * q_dim];
                    rope_append::cpu(q, &mut ek, &mut ev, row, pos + t, &rope, kv_dtype);
                }
                let what = format!("{kv_dtype:?} pos {pos} tokens {n} {rope:?}");
                assert_close(&q, &eq, &format!("q {what}"));
                // The pass's slots within f32 rounding (f16: one f16 step); the others untouched.
                let step = if kv_dtype == KvDtype::F16 { 2e-3 } else { 0.0 };
                for (name, got, expect, before) in [("k", k, &ek, &kc0), ("v", v, &ev, &vc0)] {
                    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
                        let slot = i / kv_dim;
                        if (pos..pos + n).contains(&slot) {
                            assert!(
                                (g - e).abs() <= 1e-4 + step * e.abs(),
                                "{name} {what}: element {i}: {g} vs {e}"
                            );
                        } else {
                            assert_eq!(g, &before[i], "{name} {what}: slot {slot} touched");
                        }
                    }
                }
            }
            // Positions past capacity write nothing (the host never asks for them).
            let kc0 = rounded(&random(capacity * kv_dim, 5), kv_dtype);
            let (_, k, v) = run(&random(3 * width, 6), &kc0, &kc0, capacity, 3);
            assert!(k == kc0 && v == kc0, "write past capacity must be dropped");
        }
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
            // (first position, tokens): single queries at the first, middle and
            // last positions; a pass of several causal queries.
            let passes = [
                (0, 1),
                (capacity / 2, 1),
                (capacity - 1, 1),
                (capacity / 3, capacity - capacity / 3),
            ];
            // Split-K: one split holding every position (no merge), and
            // splits of 4 positions merged by attention_combine.
            for ((pos, n), split) in passes.into_iter().flat_map(|p| [(p, capacity), (p, 4)]) {
                let q: Vec<f32> = random(n * n_heads * head_size, seed + pos as u64)
                    .iter()
                    .map(|v| v * 8.0)
                    .collect();
                // Output rows 3 values wider than the heads.
                let q_dim = n_heads * head_size;
                let out_stride = q_dim + 3;
                let (qb, ob) = (b.buffer(&q), b.buffer(&vec![f32::NAN; n * out_stride]));
                let scores = b.buffer(&vec![0.0; n * n_heads * capacity]);
                let splits = capacity.div_ceil(split);
                let partials = b.buffer(&vec![f32::NAN; n * n_heads * splits * (head_size + 2)]);
                let step = b.step(pos, n);
                let d = attention::dispatch(
                    &b.gpu.device,
                    &b.kernels.attention,
                    &ob,
                    out_stride,
                    &qb,
                    &kcb,
                    &vcb,
                    &scores,
                    &partials,
                    &step,
                    shape,
                    split,
                );
                b.run(&d, n);
                let combine = attention_combine::dispatch(
                    &b.gpu.device,
                    &b.kernels.attention_combine,
                    &ob,
                    out_stride,
                    &partials,
                    &step,
                    n_heads,
                    head_size,
                    capacity,
                    split,
                );
                b.run(&combine, n);
                let mut expect = vec![0.0; n * q_dim];
                for t in 0..n {
                    let (o, q) = (
                        &mut expect[t * q_dim..(t + 1) * q_dim],
                        &q[t * q_dim..(t + 1) * q_dim],
                    );
                    attention::cpu(o, q, &kc, &vc, pos + t, shape);
                }
                let got = b.read(&ob);
                assert!(got
                    .chunks(out_stride)
                    .all(|r| r[q_dim..].iter().all(|v| v.is_nan())));
                let got: Vec<f32> = got
                    .chunks(out_stride)
                    .flat_map(|r| &r[..q_dim])
                    .copied()
                    .collect();
                assert_close(
                    &got,
                    &expect,
                    &format!("attention {shape:?} at pos {pos}, {n} tokens, split {split}"),
                );
            }
        }
    }
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
        b.run(
            &argmax::dispatch(&b.gpu.device, &b.kernels.argmax, &out, &xb, n),
            1,
        );
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
                let got = b.embed(&gt, &[token]);
                let row = &values[token as usize * dtype.block_len()..][..dtype.block_len()];
                assert_eq!(got, row, "{dtype:?} block {token} on the GPU");
            }
        }
        seen.push(dtype);
    }
    assert_eq!(seen, [DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_0]);
}
