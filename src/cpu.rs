//! The CPU reference: llama2.c's `forward` in plain f32 Rust, built from the
//! ops' host references, with the changes the model's family makes to the
//! Llama block (`arch/`). Written for clarity, not speed; tests check the
//! GPU against it at every position.

use crate::error::Result;
use crate::kv_cache::{KvDtype, Positions};
use crate::model::Model;
use crate::ops::matvec::{self, CpuMode};
use crate::ops::{attention, embed, rmsnorm, rope_append};
use crate::session::SessionOptions;
use crate::tensor::Tensor;

/// A decoding state on the CPU: activations and a KV cache.
#[derive(Clone, Debug)]
pub struct CpuSession<'m> {
    model: &'m Model,
    /// Positions filled in the cache, of its capacity.
    positions: Positions,
    /// How cached values are rounded.
    kv_dtype: KvDtype,
    /// Per layer, the (dim,) attention and feed-forward RMSNorm weights as f32.
    norms: Vec<(Vec<f32>, Vec<f32>)>,
    /// (dim,) final RMSNorm weights as f32.
    final_norm: Vec<f32>,
    /// (dim,) residual stream.
    x: Vec<f32>,
    /// (dim,) normalised input of a block.
    xb: Vec<f32>,
    /// (q_dim,) attention output.
    xb2: Vec<f32>,
    /// (hidden_dim,) gate, (hidden_dim,) up.
    hb: Vec<f32>,
    hb2: Vec<f32>,
    /// (q_dim,) query; (kv_dim,) key and value of this token.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// (n_layers, capacity, kv_dim) key and value caches.
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
    /// (vocab_size,) output.
    logits: Vec<f32>,
}

impl<'m> CpuSession<'m> {
    /// A session with room for `capacity` positions (the model's context
    /// length when `None`).
    pub fn new(model: &'m Model, capacity: Option<usize>) -> Result<Self> {
        let options = SessionOptions {
            capacity,
            ..Default::default()
        };
        Self::with_options(model, options)
    }

    /// A session with the given cache capacity and value type (an f16 cache
    /// rounds values to f16 as they are appended).
    pub fn with_options(model: &'m Model, options: SessionOptions) -> Result<Self> {
        let c = &model.config;
        model.validate()?;
        let capacity = options.capacity_for(c)?;
        options.kv_dtype.check(c.kv_dim())?;
        let cache = c.n_layers * capacity * c.kv_dim();
        Ok(Self {
            model,
            positions: Positions::new(capacity),
            kv_dtype: options.kv_dtype,
            norms: model
                .weights
                .layers
                .iter()
                .map(|l| (l.rms_att.to_f32(), l.rms_ffn.to_f32()))
                .collect(),
            final_norm: model.weights.rms_final.to_f32(),
            x: vec![0.0; c.dim],
            xb: vec![0.0; c.dim],
            xb2: vec![0.0; c.q_dim()],
            hb: vec![0.0; c.hidden_dim],
            hb2: vec![0.0; c.hidden_dim],
            q: vec![0.0; c.q_dim()],
            k: vec![0.0; c.kv_dim()],
            v: vec![0.0; c.kv_dim()],
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
            logits: vec![0.0; c.vocab_size],
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Which positions are filled, of how many.
    pub fn positions(&self) -> Positions {
        self.positions
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.positions.capacity()
    }

    /// How cached values are rounded.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Layer `layer`'s K and V rows `0..len`, each (len, kv_dim), as
    /// stored (rounded as the cache type stores them). Panics past the last layer.
    pub fn read_cache(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let c = &self.model.config;
        let (kv, len) = (c.kv_dim(), self.len());
        let at = layer * self.capacity() * kv;
        (
            self.key_cache[at..at + len * kv].to_vec(),
            self.value_cache[at..at + len * kv].to_vec(),
        )
    }

    /// The (n_layers, capacity, kv_dim) key and value caches, for the shift.
    pub(crate) fn caches(&mut self) -> (&mut [f32], &mut [f32]) {
        (&mut self.key_cache, &mut self.value_cache)
    }

    /// Forgets positions `len..`.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.positions.truncate(len)
    }

    /// x += W out, or with a post-norm's weights g, x += rmsnorm(W out) g,
    /// `out` the attention output or the feed-forward hidden state.
    fn residual(&mut self, w: &Tensor, of: Output, post_norm: Option<&[f32]>) {
        let out = match of {
            Attention => &self.xb2,
            FeedForward => &self.hb,
        };
        match post_norm {
            None => matvec::cpu(&mut self.x, w, out, CpuMode::Add),
            Some(g) => {
                let mut y = vec![0.0; self.x.len()];
                matvec::cpu(&mut y, w, out, CpuMode::Set);
                rmsnorm::cpu(&mut self.xb, &y, g, self.model.config.norm_eps);
                self.x.iter_mut().zip(&self.xb).for_each(|(x, n)| *x += n);
            }
        }
    }

    /// Runs `token` at the next position and returns the logits (vocab_size,).
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        let m = self.model;
        let c = &m.config;
        let w = &m.weights;
        let positions = self.positions.reserve(&[token], c.vocab_size)?;
        let pos = positions.start;
        let capacity = self.positions.capacity();
        let kv = c.kv_dim();
        let block = c.block();
        // Token embedding (scaled by sqrt(dim) where the block says so).
        embed::cpu(&mut self.x, &w.token_embedding, token);
        if block.embed_scale {
            let scale = (c.dim as f32).sqrt();
            self.x.iter_mut().for_each(|x| *x *= scale);
        }
        for (l, lw) in w.layers.iter().enumerate() {
            let cache = l * capacity * kv..(l + 1) * capacity * kv;
            // A window layer attends to its last `window` positions only
            // (the host cache keeps them all).
            let shape = attention::Shape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_size: c.head_size,
                capacity,
                kv_dtype: self.kv_dtype,
                window: c.layer_window(l).unwrap_or(0),
                rows: capacity,
            };
            let rope = c.layer_rope(l);
            // Attention: rmsnorm, q/k/v projections (+ biases), q/k norms,
            // RoPE, append, attend, output projection.
            rmsnorm::cpu(&mut self.xb, &self.x, &self.norms[l].0, c.norm_eps);
            lw.wq.matvec(&self.xb, &mut self.q);
            lw.wk.matvec(&self.xb, &mut self.k);
            lw.wv.matvec(&self.xb, &mut self.v);
            let (bias, norm) = (lw.qkv_bias.as_ref(), lw.qk_norm.as_ref());
            let (bias, norm) = (bias.map(Tensor::to_f32), norm.map(Tensor::to_f32));
            rope_append::prepare(
                &mut self.q,
                &mut self.k,
                &mut self.v,
                bias.as_deref(),
                norm.as_deref(),
                c.norm_eps,
            );
            rope.rotate(&mut self.q, &mut self.k, pos);
            rope_append::append(
                &mut self.key_cache[cache.clone()],
                &mut self.value_cache[cache.clone()],
                &self.k,
                &self.v,
                pos,
                self.kv_dtype,
            );
            attention::cpu(
                &mut self.xb2,
                &self.q,
                &self.key_cache[cache.clone()],
                &self.value_cache[cache],
                pos,
                shape,
            );
            let post = lw
                .post_norms
                .as_ref()
                .map(|(a, f)| (a.to_f32(), f.to_f32()));
            self.residual(&lw.wo, Attention, post.as_ref().map(|p| &p.0[..]));
            // Feed-forward: rmsnorm, gate and up projections, the gate's
            // activation, down projection.
            rmsnorm::cpu(&mut self.xb, &self.x, &self.norms[l].1, c.norm_eps);
            lw.w1.matvec(&self.xb, &mut self.hb);
            lw.w3.matvec(&self.xb, &mut self.hb2);
            for (g, u) in self.hb.iter_mut().zip(&self.hb2) {
                *g = block.activation.apply(*g) * u;
            }
            self.residual(&lw.w2, FeedForward, post.as_ref().map(|p| &p.1[..]));
        }
        // Final norm and classifier.
        rmsnorm::cpu(&mut self.xb, &self.x, &self.final_norm, c.norm_eps);
        w.classifier().matvec(&self.xb, &mut self.logits);
        crate::sampler::check_finite(&self.logits, pos)?;
        self.positions.commit(positions);
        Ok(&self.logits)
    }
}

/// Which output of a block joins the residual stream.
#[derive(Clone, Copy)]
enum Output {
    Attention,
    FeedForward,
}
use Output::{Attention, FeedForward};
