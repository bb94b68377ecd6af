//! The DOWN and PARTIALS builds against the host: a SwiGLU workgroup's
//! partial sum of W2 h, and those partial sums read back into the residual
//! stream by a NORM projection (staged input) and by a residual add.

use super::*;
use crate::ops::projection::{input_stride, norm_weights, NextNorm};
use crate::ops::rmsnorm;
use crate::ops::testing::*;

/// W2 (rows, hidden) times h with only h's values `64 p .. 64 p + 64` kept.
fn slice_product(w2: &Tensor, h: &[f32], p: usize) -> Vec<f32> {
    let kept: Vec<f32> = (0..h.len())
        .map(|j| if j / 64 == p { h[j] } else { 0.0 })
        .collect();
    let mut out = vec![0.0; w2.rows];
    cpu(&mut out, w2, &kept, CpuMode::Set);
    out
}

#[test]
fn gate_up_takes_its_own_slice_of_h_through_w2() {
    let b = require!(Bench::new());
    // Gate/up type, W2 type, dim, hidden: the grouped block layouts (a
    // Q8_0 slice in a group's second half, and in a row's last, partial
    // group), float rows, and a K-quant (8 values at a time).
    for (dtype, down_dtype, dim, hidden) in [
        (DType::F32, DType::F32, 40, 192),
        (DType::Q4_1, DType::Q4_1, 64, 192),
        (DType::F16, DType::Q8_0, 72, 320),
        (DType::Q8_0, DType::Q4_0, 64, 192),
        (DType::Q4_1, DType::F16, 96, 128),
        (DType::Q4_K, DType::Q6_K, 256, 256),
    ] {
        let (w1, w3) = (
            random_tensor(dtype, hidden, dim, 1),
            random_tensor(dtype, hidden, dim, 2),
        );
        let w2 = random_tensor(down_dtype, dim, hidden, 3);
        let (gw1, gw3) = b
            .gpu
            .scoped("upload", || {
                GpuTensor::upload_pair(&b.gpu.device, &b.gpu.queue, &w1, &w3, 128 << 20, "t")
            })
            .unwrap()
            .unwrap();
        let gw2 = upload(&b, &w2, 128 << 20);
        // The decode step's input: x * g, the product normed by 1 / rms(x).
        let x: Vec<f32> = random(dim, 5).iter().map(|v| v * 20.0).collect();
        let g = random(dim, 6);
        let xg: Vec<f32> = x.iter().zip(&g).map(|(x, g)| x * g).collect();
        let mut normed = vec![0.0; dim];
        rmsnorm::cpu(&mut normed, &x, &g, 1e-5);
        let mut h = vec![0.0; hidden];
        cpu(&mut h, &w1, &normed, CpuMode::SwiGlu { up: &w3 });
        let stride = input_stride(dim);
        for (build, matvec, _) in builds(&b) {
            let parts = hidden / 64;
            let pb = b.buffer(&vec![f32::NAN; parts * stride]);
            let (ob, xb, xgb) = (b.buffer(&vec![0.0; hidden]), b.input(&x), b.input(&xg));
            let d = matvec.bind(
                &b.gpu.device,
                Bindings {
                    out: &ob,
                    w: &gw1,
                    x: &xgb,
                    mode: Mode::SwiGlu { up: &gw3 },
                    norm: Some((&xb, 1e-5)),
                    next_norm: None,
                    down: Some(Down {
                        w: &gw2,
                        partials: &pb,
                        stride,
                    }),
                    pending: None,
                    rope: None,
                },
            );
            b.run(&d, 1);
            let got = b.read(&pb);
            let what =
                format!("{dtype:?} gate/up, {down_dtype:?} W2, {dim}x{hidden} ({build} build)");
            for p in 0..parts {
                let expect = slice_product(&w2, &h, p);
                // h in another summation order, then W2 in another: relative
                // to the sum of |terms|.
                let kept: Vec<f32> = h.iter().map(|v| v.abs() + 1.0).collect();
                let bound = magnitude(&w2, &kept);
                for (o, e) in expect.iter().enumerate() {
                    let v = got[p * stride + o];
                    let tolerance = 1e-4 * (1.0 + bound[o]);
                    assert!(
                        (v - e).abs() <= tolerance,
                        "{what}: partial {p} row {o}: {v} vs {e}"
                    );
                }
                // Past W2's rows, nothing written.
                assert!(got[p * stride + dim..(p + 1) * stride]
                    .iter()
                    .all(|v| v.is_nan()));
            }
            assert!(b.read(&ob).iter().all(|&v| v == 0.0), "{what}: h written");
        }
    }
}

#[test]
fn pending_partials_join_the_residual_stream() {
    let b = require!(Bench::new());
    // x (cols,) with 3 partial sums pending: a NORM projection's product
    // is W (rmsnorm(x + partials) * g), a residual add's out = (x +
    // partials) + W a, each with the partials added in order.
    for (dtype, rows, cols) in [
        (DType::F32, 37, 75),
        (DType::Q4_1, 130, 64),
        (DType::F16, 70, 96),
    ] {
        let parts = 3;
        let stride = input_stride(cols);
        let w = random_tensor(dtype, rows, cols, 3);
        let gw = upload(&b, &w, 128 << 20);
        let x: Vec<f32> = random(cols, 5).iter().map(|v| v * 10.0).collect();
        let mut partials = vec![f32::NAN; parts * stride];
        for p in 0..parts {
            let values = random(cols, 10 + p as u64);
            partials[p * stride..][..cols].copy_from_slice(&values);
            // The padding a producer never writes: zero, as a new buffer.
            partials[p * stride + cols..(p + 1) * stride].fill(0.0);
        }
        let summed: Vec<f32> = (0..cols)
            .map(|k| (0..parts).fold(x[k], |v, p| v + partials[p * stride + k]))
            .collect();
        let pb = b.buffer(&partials);
        let pending = Pending {
            partials: &pb,
            parts,
            stride,
        };
        // NORM: x bound as the residual, g as the input.
        let g = random(cols, 6);
        let mut normed = vec![0.0; cols];
        rmsnorm::cpu(&mut normed, &summed, &g, 1e-5);
        let mut expect = vec![0.0; rows];
        cpu(&mut expect, &w, &normed, CpuMode::Set);
        let bound = magnitude(&w, &normed);
        let gb = norm_weights(&b.gpu.device, "g", &g);
        for (build, matvec, _) in builds(&b) {
            let (ob, xb) = (b.buffer(&vec![f32::NAN; rows]), b.input(&x));
            let d = matvec.bind(
                &b.gpu.device,
                Bindings {
                    out: &ob,
                    w: &gw,
                    x: &gb,
                    mode: Mode::Set,
                    norm: Some((&xb, 1e-5)),
                    next_norm: None,
                    down: None,
                    pending: Some(pending),
                    rope: None,
                },
            );
            b.run(&d, 1);
            for (i, (o, e)) in b.read(&ob).iter().zip(&expect).enumerate() {
                let tolerance = 1e-5 * (1.0 + bound[i] + e.abs());
                assert!(
                    (o - e).abs() <= tolerance,
                    "{dtype:?} {rows}x{cols} norm ({build} build): element {i}: {o} vs {e}"
                );
            }
        }
        // The residual add (rows = cols: it adds to the stream), writing the
        // next norm's input too.
        let wo = random_tensor(dtype, cols, cols, 4);
        let gwo = upload(&b, &wo, 128 << 20);
        let a = random(cols, 7);
        let mut expect = summed.clone();
        cpu(&mut expect, &wo, &a, CpuMode::Add);
        let bound = magnitude(&wo, &a);
        for (build, matvec, _) in builds(&b) {
            let (ob, ab) = (b.buffer(&x), b.input(&a));
            let xgb = b.buffer(&vec![f32::NAN; cols]);
            let d = matvec.bind(
                &b.gpu.device,
                Bindings {
                    out: &ob,
                    w: &gwo,
                    x: &ab,
                    mode: Mode::Add,
                    norm: None,
                    next_norm: Some(NextNorm { g: &gb, xg: &xgb }),
                    down: None,
                    pending: Some(pending),
                    rope: None,
                },
            );
            b.run(&d, 1);
            let got = b.read(&ob);
            let what = format!("{dtype:?} {cols}x{cols} residual add ({build} build)");
            for (i, (o, e)) in got.iter().zip(&expect).enumerate() {
                let tolerance = 1e-5 * (1.0 + bound[i] + e.abs());
                assert!(
                    (o - e).abs() <= tolerance,
                    "{what}: element {i}: {o} vs {e}"
                );
            }
            for (i, (s, o)) in b.read(&xgb).iter().zip(&got).enumerate() {
                assert_eq!(s.to_bits(), (o * g[i]).to_bits(), "{what}: xg {i}");
            }
        }
    }
}
