//! Each kernel against its CPU reference on seeded random inputs of odd
//! sizes, including position 0, the last position of the cache and
//! grouped-query heads.
//!
//! Tolerance: 1e-4 absolute + 1e-4 relative (f32 sums in another order);
//! data movement kernels (append, argmax) must be exact.

mod common;

use common::{max_abs_diff, random};
use kvgpu::ops::{
    self, add, argmax, attention, kv_append, matvec, rmsnorm, rope, swiglu, Dispatch, Kernels,
};
use kvgpu::Gpu;
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

    fn step(&self, pos: u32) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[pos, 0, 0, 0]),
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

#[test]
fn matvec_matches_cpu() {
    let b = require!(Bench::new());
    let dev = &b.gpu.device;
    // Odd shapes; 4200001 rows (65627 workgroups) spill the grid into its y dimension.
    for (rows, cols, seed) in [(1, 1, 1), (37, 333, 2), (1757, 65, 3), (4_200_001, 1, 4)] {
        let w = random(rows * cols, seed);
        let x = random(cols, seed + 100);
        let (wb, xb, ob) = (b.buffer(&w), b.buffer(&x), b.buffer(&vec![f32::NAN; rows]));
        b.run(&matvec::dispatch(
            dev,
            &b.kernels.matvec,
            &ob,
            &wb,
            &xb,
            rows,
            cols,
        ));
        let mut expect = vec![0.0; rows];
        matvec::cpu(&mut expect, &w, &x);
        assert_close(&b.read(&ob), &expect, &format!("matvec {rows}x{cols}"));
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
    // Grouped-query: 6 query heads over 2 KV heads of size 10.
    let (head_size, n_heads, n_kv_heads, capacity) = (10, 6, 2, 37);
    let (q_dim, kv_dim) = (n_heads * head_size, n_kv_heads * head_size);
    let table = b.buffer(&rope::table(capacity, head_size, 10000.0));
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
        rope::cpu(&mut eq, &mut ek, pos, head_size, 10000.0);
        assert_close(&b.read(&qb), &eq, &format!("rope q at pos {pos}"));
        assert_close(&b.read(&kb), &ek, &format!("rope k at pos {pos}"));
    }
}

#[test]
fn kv_append_writes_exactly_one_slot() {
    let b = require!(Bench::new());
    let (kv_dim, capacity) = (77, 41);
    for pos in [0, 13, capacity - 1] {
        let kc0 = random(capacity * kv_dim, 1);
        let vc0 = random(capacity * kv_dim, 2);
        let (k, v) = (
            random(kv_dim, 3 + pos as u64),
            random(kv_dim, 4 + pos as u64),
        );
        let (kcb, vcb, kb, vb) = (b.buffer(&kc0), b.buffer(&vc0), b.buffer(&k), b.buffer(&v));
        let step = b.step(pos as u32);
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
        ));
        let (mut ek, mut ev) = (kc0.clone(), vc0.clone());
        kv_append::cpu(&mut ek, &mut ev, &k, &v, pos);
        assert_eq!(b.read(&kcb), ek, "k cache at pos {pos}");
        assert_eq!(b.read(&vcb), ev, "v cache at pos {pos}");
    }
    // A position past capacity writes nothing (the host never asks for one).
    let kc0 = random(capacity * kv_dim, 5);
    let (kcb, vcb) = (b.buffer(&kc0), b.buffer(&kc0));
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
    ));
    assert_eq!(b.read(&kcb), kc0, "write past capacity must be dropped");
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
    for (i, &(n_heads, n_kv_heads, head_size, capacity)) in shapes.iter().enumerate() {
        let shape = attention::Shape {
            n_heads,
            n_kv_heads,
            head_size,
            capacity,
        };
        let kv_dim = n_kv_heads * head_size;
        let seed = 10 * i as u64;
        // Large keys make large scores: the softmax must subtract the max.
        let kc: Vec<f32> = random(capacity * kv_dim, seed)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        let vc = random(capacity * kv_dim, seed + 1);
        let (kcb, vcb) = (b.buffer(&kc), b.buffer(&vc));
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
fn add_matches_cpu() {
    let b = require!(Bench::new());
    let n = 1001;
    let (x, y) = (random(n, 1), random(n, 2));
    let (xb, yb) = (b.buffer(&x), b.buffer(&y));
    b.run(&add::dispatch(&b.gpu.device, &b.kernels.add, &xb, &yb, n));
    let mut expect = x.clone();
    add::cpu(&mut expect, &y);
    assert_close(&b.read(&xb), &expect, "add");
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
