//! A model's weights on the GPU ([`GpuModel`]): uploaded once, as stored in
//! the file (quantized ones stay quantized; a half-split RoPE model's q and
//! k rows put in adjacent order, see `rope.rs`), after checking that every
//! tensor fits the device's limits; and the kernels compiled for it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Config, Model};
use crate::ops::projection::{self, GpuTensor};
use crate::ops::Kernels;
use crate::rope::Pairing;
use crate::tensor::Tensor;

/// Bytes per f32.
const F32: u64 = 4;

/// One layer's weights on the GPU (shapes as in [`crate::model::LayerWeights`]).
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    pub rms_att: wgpu::Buffer,
    /// (q_dim + 2 kv_dim, dim): wq, wk and wv stacked, one projection,
    /// q and k heads in adjacent RoPE order.
    pub wqkv: GpuTensor,
    /// (q_dim + 2 kv_dim + 2 head_size) f32: the q, k and v biases, then the
    /// norm weights of a q head and of a k head (adjacent order), where the
    /// block prepares q and k ([`Block::prepares_qk`](crate::arch::Block::prepares_qk));
    /// else a 16-byte placeholder, bound unread.
    pub prep: wgpu::Buffer,
    /// (dim, q_dim) attention output.
    pub wo: GpuTensor,
    /// (dim,) f32 each, zero-padded to a 64 KiB uniform: the norms of the
    /// attention and feed-forward outputs, where the block has them.
    pub post_norms: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    pub rms_ffn: wgpu::Buffer,
    /// (hidden_dim, dim) w1 (gate) and w3 (up), chunked alike for the fused
    /// SwiGLU projection.
    pub w1: GpuTensor,
    /// (hidden_dim, dim), chunked as w1.
    pub w3: GpuTensor,
    /// (dim, hidden_dim) down projection.
    pub w2: GpuTensor,
}

/// A model's weights and kernels on one device, uploaded once. Cheap to
/// clone (wgpu handles are reference-counted); many sessions can share it.
#[derive(Clone, Debug)]
pub struct GpuModel {
    pub(crate) gpu: Gpu,
    pub(crate) config: Config,
    pub(crate) kernels: Arc<Kernels>,
    /// (vocab_size, dim); also the classifier when shared.
    pub(crate) token_embedding: GpuTensor,
    pub(crate) layers: Vec<LayerWeights>,
    /// (dim,) f32, zero-padded to a 64 KiB uniform.
    pub(crate) rms_final: wgpu::Buffer,
    /// (vocab_size, dim) when not shared with the embedding.
    pub(crate) wcls: Option<GpuTensor>,
    /// The RoPE tables built so far, for the most positions a session or
    /// engine has asked ([`GpuModel::rope_for`]), not the model's context.
    rope: Arc<Mutex<Option<RopeTables>>>,
    weight_bytes: u64,
    /// [`Weights::fingerprint`](crate::model::Weights::fingerprint) of the model.
    fingerprint: u64,
}

impl GpuModel {
    /// Uploads the weights as stored (quantized ones stay quantized), split
    /// into row-chunks where a tensor exceeds one storage binding, and
    /// compiles the kernels. Checks the device's limits first.
    pub fn new(gpu: &Gpu, model: &Model) -> Result<Self> {
        Self::with_progress(gpu, model, |_, _| {})
    }

    /// [`GpuModel::new`], calling `progress(bytes uploaded, total bytes)` as
    /// each tensor goes up (for a progress bar on big models).
    pub fn with_progress(
        gpu: &Gpu,
        model: &Model,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self> {
        let c = &model.config;
        model.validate()?;
        gpu.check_alive()?;
        let w = &model.weights;
        let limits = gpu.device.limits();
        Kernels::check_limits(&limits)?;
        let chunk_limit = GpuTensor::chunk_limit(&gpu.device);
        for t in w.tensors() {
            let row =
                projection::gpu_row_bytes(t.dtype, t.cols).expect("checked at creation") as u64;
            if row > chunk_limit {
                return Err(Error::ModelTooLarge {
                    what: format!("one row of a {:?}", t),
                    needed: row,
                    limit: chunk_limit,
                });
            }
        }
        // Projection inputs bind as 64 KiB uniform buffers.
        for (what, cols) in [
            ("dim", c.dim),
            ("hidden_dim", c.hidden_dim),
            ("q_dim", c.q_dim()),
        ] {
            if cols > projection::MAX_COLS {
                return Err(Error::ModelTooLarge {
                    what: format!("a projection input ({what} {cols} values)"),
                    needed: cols as u64 * F32,
                    limit: projection::INPUT_BYTES,
                });
            }
        }
        gpu.scoped("uploading the model", || {
            let device = &gpu.device;
            let vector =
                |label: &str, t: &Tensor| projection::norm_weights(device, label, &t.to_f32());
            let total = w.bytes();
            let mut done = 0u64;
            let queue = &gpu.queue;
            let mut uploaded = |parts: &[&Tensor]| {
                done += parts.iter().map(|t| t.bytes().len() as u64).sum::<u64>();
                progress(done, total);
            };
            let block = c.block();
            let (q, kv, hs) = (c.q_dim(), c.kv_dim(), c.head_size);
            // Row r of each q and k head on the GPU is row order[r] of the stored head.
            let order = block.rope_pairing.adjacent_order(hs, c.rope_dim);
            let heads = |n: usize| -> Vec<usize> {
                (0..n)
                    .flat_map(|h| order.iter().map(move |&r| h * hs + r))
                    .collect()
            };
            let (q_rows, k_rows) = (heads(c.n_heads), heads(c.n_kv_heads));
            let pairing = block.rope_pairing;
            fn adjacent<'t>(pairing: Pairing, t: &'t Tensor, rows: &[usize]) -> Cow<'t, Tensor> {
                match pairing {
                    Pairing::Adjacent => Cow::Borrowed(t),
                    Pairing::HalfSplit => Cow::Owned(t.reorder_rows(rows)),
                }
            }
            let placeholder =
                crate::gpu::buffer_init(device, "no prep", &[0; 16], wgpu::BufferUsages::STORAGE);
            let layers = w
                .layers
                .iter()
                .map(|l| {
                    let wq = adjacent(pairing, &l.wq, &q_rows);
                    let wk = adjacent(pairing, &l.wk, &k_rows);
                    let wqkv = GpuTensor::upload_stacked(
                        device,
                        queue,
                        &[&wq, &wk, &l.wv],
                        chunk_limit,
                        "wqkv",
                    )?;
                    let prep = match block.prepares_qk() {
                        false => placeholder.clone(),
                        true => {
                            // No bias adds 0; no norm multiplies by 1 (the
                            // kernel reads neither unless built to).
                            let bias = l.qkv_bias.as_ref().map(Tensor::to_f32);
                            let bias = bias.unwrap_or_else(|| vec![0.0; q + 2 * kv]);
                            let norm = l.qk_norm.as_ref().map(Tensor::to_f32);
                            let norm = norm.unwrap_or_else(|| vec![1.0; 2 * hs]);
                            let values: Vec<f32> = q_rows
                                .iter()
                                .map(|&r| bias[r])
                                .chain(k_rows.iter().map(|&r| bias[q + r]))
                                .chain(bias[q + kv..].iter().copied())
                                .chain(order.iter().map(|&r| norm[r]))
                                .chain(order.iter().map(|&r| norm[hs + r]))
                                .collect();
                            crate::gpu::buffer_init(
                                device,
                                "prep",
                                bytemuck::cast_slice(&values),
                                wgpu::BufferUsages::STORAGE,
                            )
                        }
                    };
                    uploaded(&[&l.wq, &l.wk, &l.wv]);
                    let wo = GpuTensor::upload(device, queue, &l.wo, chunk_limit, "wo")?;
                    let (w1, w3) =
                        GpuTensor::upload_pair(device, queue, &l.w1, &l.w3, chunk_limit, "w1/w3")?;
                    let w2 = GpuTensor::upload(device, queue, &l.w2, chunk_limit, "w2")?;
                    uploaded(&[&l.wo, &l.w1, &l.w3, &l.w2]);
                    Ok(LayerWeights {
                        rms_att: vector("rms_att", &l.rms_att),
                        wqkv,
                        prep,
                        wo,
                        post_norms: l
                            .post_norms
                            .as_ref()
                            .map(|(att, ffn)| (vector("post_att", att), vector("post_ffn", ffn))),
                        rms_ffn: vector("rms_ffn", &l.rms_ffn),
                        w1,
                        w3,
                        w2,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut matrix = |what: &str, t: &Tensor| {
                let g = GpuTensor::upload(device, queue, t, chunk_limit, what);
                uploaded(&[t]);
                g
            };
            Ok(Self {
                gpu: gpu.clone(),
                config: c.clone(),
                kernels: kernels_for(gpu),
                token_embedding: matrix("token_embedding", &w.token_embedding)?,
                layers,
                rms_final: vector("rms_final", &w.rms_final),
                wcls: w.wcls.as_ref().map(|t| matrix("wcls", t)).transpose()?,
                rope: Arc::new(Mutex::new(None)),
                weight_bytes: w.bytes(),
                fingerprint: w.fingerprint(c),
            })
        })?
    }

    /// Makes the RoPE tables cover `positions` (a session's capacity): built
    /// on first need and again for more positions, never for the model's
    /// whole context unasked. Too large for one binding is
    /// [`Error::ModelTooLarge`]. Call inside an error scope.
    pub(crate) fn rope_for(&self, positions: usize) -> Result<()> {
        let mut tables = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if tables.as_ref().is_some_and(|t| t.positions >= positions) {
            return Ok(());
        }
        let c = &self.config;
        let needed = positions as u64 * c.head_size as u64 * F32;
        let limits = self.gpu.device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if needed > limit {
            let what = format!("the RoPE table of {positions} positions");
            return Err(Error::ModelTooLarge {
                what,
                needed,
                limit,
            });
        }
        let upload = |label, rope: crate::rope::Rope| {
            let table = rope.table(positions);
            let bytes = bytemuck::cast_slice(&table);
            crate::gpu::buffer_init(&self.gpu.device, label, bytes, wgpu::BufferUsages::STORAGE)
        };
        let has_windows = (0..c.n_layers).any(|l| c.layer_window(l).is_some());
        let window = (has_windows && c.rope_theta_window != c.rope_theta).then(|| {
            let mut rope = c.rope();
            rope.theta = c.rope_theta_window;
            upload("rope_table_window", rope)
        });
        *tables = Some(RopeTables {
            positions,
            whole: upload("rope_table", c.rope()),
            window,
        });
        Ok(())
    }

    /// The RoPE table of layer `layer` (window layers may have their own
    /// base), covering the positions [`GpuModel::rope_for`] asked.
    pub(crate) fn rope_table(&self, layer: usize) -> wgpu::Buffer {
        let tables = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        let t = tables.as_ref().expect("rope_for before rope_table");
        match (&t.window, self.config.layer_window(layer)) {
            (Some(w), Some(_)) => w.clone(),
            _ => t.whole.clone(),
        }
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The model's fingerprint (its shape and tensor table), as saved KV caches carry it.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The device the model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights as stored (on the GPU, plus up to 3 bytes of padding per chunk).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// The kernels compiled for `gpu`'s device: built by the first model
/// uploaded there, shared by every later one. Call inside an error scope.
fn kernels_for(gpu: &Gpu) -> Arc<Kernels> {
    let slot = gpu.kernels.get_or_init(|| {
        let cache = gpu.pipeline_cache(crate::ops::sources_hash());
        Arc::new(Kernels::new(gpu, cache)) as Arc<dyn std::any::Any + Send + Sync>
    });
    slot.clone()
        .downcast::<Kernels>()
        .expect("the kernel slot holds Kernels")
}

/// RoPE cos/sin tables of (positions, head_size / 2, 2) values, see
/// [`Rope::table`](crate::rope::Rope::table).
#[derive(Debug)]
struct RopeTables {
    /// Positions they cover.
    positions: usize,
    /// The whole-context layers'.
    whole: wgpu::Buffer,
    /// The sliding-window layers', where their RoPE base differs.
    window: Option<wgpu::Buffer>,
}
