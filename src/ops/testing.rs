//! Shared helpers of the kernel tests: a device with every kernel, buffers
//! from host values, running one dispatch, seeded random data and weights,
//! and the projection harness matvec and matmul are both checked with.
//!
//! Tolerance: 1e-4 absolute + 1e-4 relative (f32 sums in another order);
//! data movement kernels (append, embed, argmax) must be exact. Quantized
//! projections are compared with dequantize-then-multiply on the host.
//!
//! Without an adapter a test prints why it was skipped and passes, except
//! under CI (`CI=true`), where it fails.

use wgpu::util::DeviceExt;

use super::matvec::CpuMode;
use super::projection::{input_stride, GpuTensor, Mode, MAX_COLS};
use super::{matmul, matvec, Dispatch, Kernels};
use crate::arch::Activation;
use crate::gpu::Gpu;
use crate::kv_cache::KvDtype;
use crate::tensor::{DType, Tensor};

thread_local! {
    /// Names of the pipeline variants built on this thread, in order.
    pub static BUILT: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Unwraps an `Option` or returns from the test (which was reported skipped).
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}
pub(crate) use require;

/// A device on the environment's adapter, or `None` (test skipped) when there is none.
pub fn gpu() -> Option<Gpu> {
    match Gpu::new(None) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            let why = format!("no GPU adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true and {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

pub use crate::test_util::{max_abs_diff, random};

pub struct Bench {
    pub gpu: Gpu,
    pub kernels: Kernels,
}

impl Bench {
    pub fn new() -> Option<Self> {
        let gpu = gpu()?;
        let kernels = gpu
            .scoped("compiling", || Kernels::new(&gpu, None))
            .unwrap();
        Some(Self { gpu, kernels })
    }

    pub fn buffer(&self, data: &[f32]) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// A projection input: uniform, zero-padded to at least matvec's 16384 values.
    pub fn input(&self, data: &[f32]) -> wgpu::Buffer {
        let mut padded = data.to_vec();
        padded.resize(data.len().max(MAX_COLS), 0.0);
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            })
    }

    pub fn u32s(&self, data: &[u32]) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// The step uniform of a pass of `n` tokens from position `pos`.
    pub fn step(&self, pos: usize, n: usize) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[pos as u32, n as u32, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// The step uniform of a pass of `n` tokens over a pool of `page`-position pages.
    pub fn paged_step(&self, n: usize, page: usize) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[0, n as u32, page as u32, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Runs `d`'s whole grid for a pass of `n` tokens.
    pub fn run(&self, d: &Dispatch, n: usize) {
        self.run_attending(d, n, super::WHOLE_GRID as usize);
    }

    /// Runs `d` for a pass of `n` tokens that attend to at most `attended`
    /// positions each.
    pub fn run_attending(&self, d: &Dispatch, n: usize, attended: usize) {
        self.gpu
            .scoped("test dispatch", || {
                let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    d.record(&mut pass, n as u32, attended as u32);
                }
                self.gpu.queue.submit([enc.finish()]);
            })
            .unwrap();
    }

    pub fn read(&self, b: &wgpu::Buffer) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.gpu.read_buffer(b, b.size()).unwrap())
    }
}

pub fn assert_close(gpu: &[f32], cpu: &[f32], what: &str) {
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= 1e-4 + 1e-4 * c.abs(),
            "{what}: element {i}: gpu {g} vs cpu {c} (max diff {})",
            max_abs_diff(gpu, cpu)
        );
    }
}

/// Random weights of `dtype` (values of rms 0.5, or random blocks with
/// small, finite scales).
pub fn random_tensor(dtype: DType, rows: usize, cols: usize, seed: u64) -> Tensor {
    Tensor::random(dtype, rows, cols, 0.5, seed).unwrap()
}

pub fn upload(b: &Bench, t: &Tensor, limit: u64) -> GpuTensor {
    b.gpu
        .scoped("upload", || {
            GpuTensor::upload(&b.gpu.device, &b.gpu.queue, t, limit, "test")
        })
        .unwrap()
        .unwrap()
}

/// Weights for a projection test: `w` and, for SwiGLU, `up` (same shape).
pub struct Projection {
    pub w: Tensor,
    pub up: Option<Tensor>,
    /// Upload as several parts of these row counts stacked (mixed types).
    pub what: String,
}

/// Every projection shape and type the kernels must handle: each dtype on
/// odd row counts, in chunks; float rows at any byte alignment with tails;
/// a grid that spills into y; SwiGLU pairs; and a stacked matrix mixing types.
pub fn projections() -> Vec<(Projection, u64)> {
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
            // Grouped blocks (projection::grouped_blocks): two whole groups and part of one.
            (3, 19 * n, big),
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
        // And of one type: gate and up rows share their input reads
        // (matvec), in a group's tail only and over whole groups and a
        // tail (float rows: whole texels past the unrolled loop).
        let wide = if dtype.block_len() == 1 {
            19 * n + 24
        } else {
            19 * n
        };
        for cols in [2 * n, wide] {
            let (gate, up) = (
                random_tensor(dtype, 45, cols, 5),
                random_tensor(dtype, 45, cols, 6),
            );
            add(gate, Some(up), big);
        }
    }
    // Odd widths: rows start at any byte alignment and end in a tail; 3001
    // columns leave room for only 5 tokens per 64 KiB matmul input tile;
    // 44 and 56 are rows on a texel boundary whose texels end past the
    // matvec's unrolled loop (F32: 10 texels and 4 values, F16: 7 texels).
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [
            (29, 37),
            (7, 13),
            (3, 1),
            (70, 131),
            (9, 3001),
            (33, 44),
            (33, 56),
        ] {
            add(random_tensor(dtype, rows, cols, 5), None, big);
        }
    }
    add(random_tensor(DType::F32, 1757, 65, 3), None, big);
    out
}

/// The builds of the projection kernels the test device runs: every
/// thread reading its inputs, and (where it has subgroups of at least 8)
/// each read shared across a subgroup.
pub fn builds(b: &Bench) -> Vec<(&'static str, &matvec::Matvec, &matmul::Matmul)> {
    let mut out = vec![("plain", &b.kernels.matvec, &b.kernels.matmul)];
    if super::subgroups_of_8(&b.gpu.device) {
        let subgroup = (&b.kernels.matvec_subgroup, &b.kernels.matmul_subgroup);
        out.push(("subgroup", subgroup.0, subgroup.1));
    }
    out
}

/// GPU result of `p` for `n` tokens of `x` (n, cols) over `base` (n, rows):
/// `build`'s matvec (n = 1) or matmul.
#[allow(clippy::too_many_arguments)]
pub fn project(
    b: &Bench,
    build: (&str, &matvec::Matvec, &matmul::Matmul),
    p: &Projection,
    gw: &GpuTensor,
    gup: Option<&GpuTensor>,
    x: &[f32],
    base: &[f32],
    add: bool,
) -> Vec<f32> {
    let n = x.len() / p.w.cols;
    let ob = b.buffer(base);
    // A gated projection's `add` picks GeGLU over SwiGLU.
    let mode = match (gup, add) {
        (Some(up), false) => Mode::SwiGlu { up },
        (Some(up), true) => Mode::GeGlu { up },
        (None, true) => Mode::Add,
        (None, false) => Mode::Set,
    };
    if n == 1 {
        let xb = b.input(x);
        let d = build.1.bind(
            &b.gpu.device,
            matvec::Bindings {
                out: &ob,
                w: gw,
                x: &xb,
                mode,
                norm: None,
                next_norm: None,
                rope: None,
            },
        );
        b.run(&d, n);
        return b.read(&ob);
    }
    // matmul: input rows `input_stride` apart (padding zero), output rows
    // 5 values wider than the matrix (padding untouched).
    let (cols, rows) = (p.w.cols, p.w.rows);
    let x_stride = input_stride(cols);
    let mut padded = vec![0.0; (n - 1) * x_stride + MAX_COLS];
    for (t, row) in x.chunks(cols).enumerate() {
        padded[t * x_stride..][..cols].copy_from_slice(row);
    }
    let out_stride = rows + 5;
    let mut out = vec![f32::NAN; n * out_stride];
    for (t, row) in base.chunks(rows).enumerate() {
        out[t * out_stride..][..rows].copy_from_slice(row);
    }
    let (xb, ob, step) = (b.input(&padded), b.buffer(&out), b.step(0, n));
    let d = build.2.bind(
        &b.gpu.device,
        matmul::Bindings {
            out: &ob,
            out_stride,
            w: gw,
            x: &xb,
            x_stride,
            step: &step,
            mode,
            tokens: n,
        },
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
pub fn check_projections(tokens: &[usize]) {
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
                let mut expect = base.clone();
                let mode = match (&p.up, add) {
                    (Some(up), false) => CpuMode::Gated {
                        up,
                        activation: Activation::Silu,
                    },
                    (Some(up), true) => CpuMode::Gated {
                        up,
                        activation: Activation::GeluTanh,
                    },
                    (None, true) => CpuMode::Add,
                    (None, false) => CpuMode::Set,
                };
                matmul::cpu(&mut expect, &p.w, &x, mode);
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
                for build in builds(&b) {
                    let got = project(&b, build, &p, &gw, gup.as_ref(), &x, &base, add);
                    let add = if add { " +=" } else { "" };
                    let what = format!("{} tokens {n}{add} ({} build)", p.what, build.0);
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
}

/// Per output (n, rows): the sum of |w x| terms of its dot product.
pub fn magnitude(w: &Tensor, x: &[f32]) -> Vec<f32> {
    let abs: Vec<f32> = w.to_f32().iter().map(|v| v.abs()).collect();
    let abs = Tensor::from_f32(w.rows, w.cols, &abs);
    let xs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let mut out = vec![0.0; x.len() / w.cols * w.rows];
    matmul::cpu(&mut out, &abs, &xs, CpuMode::Set);
    out
}

/// Host values (rows of `kv_dim`) as a cache buffer's contents.
pub fn cache_bytes(values: &[f32], kv_dim: usize, dtype: KvDtype) -> Vec<u8> {
    values
        .chunks(kv_dim)
        .flat_map(|r| dtype.encode_row(r))
        .collect()
}

/// A cache buffer's contents (rows of `kv_dim`) as host values.
pub fn cache_values(bytes: &[u8], kv_dim: usize, dtype: KvDtype) -> Vec<f32> {
    let row = dtype.row_bytes(kv_dim) as usize;
    bytes
        .chunks_exact(row)
        .flat_map(|r| dtype.decode_row(r, kv_dim))
        .collect()
}

impl Bench {
    pub fn cache(&self, values: &[f32], kv_dim: usize, dtype: KvDtype) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &cache_bytes(values, kv_dim, dtype),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    pub fn read_cache(&self, b: &wgpu::Buffer, kv_dim: usize, dtype: KvDtype) -> Vec<f32> {
        cache_values(&self.gpu.read_buffer(b, b.size()).unwrap(), kv_dim, dtype)
    }
}

/// Values as a cache of `dtype` holds them (what uploading them stores).
/// A pool of `page`-row pages holding each sequence's (len, kv_dim)
/// `caches` in scattered pages (sequence s's page i at pool page
/// `pages[s][i]`), and the `paging` words of a pass whose token t is at
/// position `tokens[t].1` of sequence `tokens[t].0`: the pool (rows,
/// kv_dim) as f32 and the paging words.
pub fn paged_pool(
    caches: &[Vec<f32>],
    kv_dim: usize,
    page: usize,
    tokens: &[(usize, usize)],
) -> (Vec<f32>, Vec<u32>, Vec<Vec<u32>>) {
    let tables: Vec<usize> = caches
        .iter()
        .map(|c| (c.len() / kv_dim).div_ceil(page))
        .collect();
    let total: usize = tables.iter().sum();
    // Pages handed out back to front, sequences interleaved.
    let mut pages = vec![Vec::new(); caches.len()];
    let mut next = total as u32;
    for i in 0..tables.iter().max().copied().unwrap_or(0) {
        for (s, &n) in tables.iter().enumerate() {
            if i < n {
                next -= 1;
                pages[s].push(next);
            }
        }
    }
    let mut pool = vec![0.0; total * page * kv_dim];
    for (cache, table) in caches.iter().zip(&pages) {
        for (pos, row) in cache.chunks(kv_dim).enumerate() {
            let at = table[pos / page] as usize * page + pos % page;
            pool[at * kv_dim..][..kv_dim].copy_from_slice(row);
        }
    }
    let mut paging = Vec::new();
    let mut table_at = vec![0; caches.len()];
    let mut words = 2 * tokens.len();
    for (s, table) in pages.iter().enumerate() {
        table_at[s] = words;
        words += table.len();
    }
    for &(s, pos) in tokens {
        paging.extend([pos as u32, table_at[s] as u32]);
    }
    for table in &pages {
        paging.extend(table);
    }
    (pool, paging, pages)
}

pub fn rounded(values: &[f32], kv_dim: usize, dtype: KvDtype) -> Vec<f32> {
    cache_values(&cache_bytes(values, kv_dim, dtype), kv_dim, dtype)
}

/// How far a cached value may be from the host reference's: f32 exact
/// (within f32 rounding), f16 one f16 step, quantized one quantization
/// step of the largest value `scale` (the f16 rounding of a block's scale
/// on the GPU and the host may differ by an ulp).
pub fn cache_tolerance(dtype: KvDtype, value: f32, scale: f32) -> f32 {
    1e-4 + match dtype {
        KvDtype::F32 => 0.0,
        KvDtype::F16 => 2e-3 * value.abs(),
        KvDtype::Q8_0 => scale / 127.0,
        KvDtype::Q4_0 => scale / 7.0,
    }
}
