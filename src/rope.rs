//! Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"): each pair of
//! dimensions of a head is rotated by an angle that grows with the position.
//! The GPU reads the (cos, sin) table built here; the host reference rotates
//! with the same f32 angles, as llama2.c computes them.
//!
//! Families pair a head's dimensions in one of two ways ([`Pairing`]). The
//! kernels rotate adjacent pairs only: a half-split model's q and k rows are
//! put in adjacent order once, when its weights go to the GPU
//! ([`Pairing::adjacent_order`]). Attention reads only q . k, which the
//! same reordering of both leaves unchanged; the host reference rotates the
//! halves as stored, so the tests check the reordering too.

/// How RoPE pairs the rotated dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// Pair i is dimensions (2i, 2i + 1): llama2.c, and GGUF's `llama`
    /// (llama.cpp's "normal" RoPE; its converter interleaves the halves).
    Adjacent,
    /// Pair i is dimensions (i, i + rope_dim / 2): Hugging Face's
    /// `rotate_half`, llama.cpp's NEOX RoPE (Qwen, Phi-3, Gemma).
    HalfSplit,
}

impl Pairing {
    /// The order that puts a half-split head's rows in adjacent order:
    /// row r of the reordered head is row `order[r]` of the stored one
    /// (rows past `rope_dim` stay where they are). Identity for `Adjacent`.
    pub fn adjacent_order(self, head_size: usize, rope_dim: usize) -> Vec<usize> {
        let half = rope_dim / 2;
        (0..head_size)
            .map(|r| match self {
                Pairing::HalfSplit if r < rope_dim => r / 2 + (r % 2) * half,
                _ => r,
            })
            .collect()
    }
}

/// RoPE settings: which dimensions rotate, how fast, and how they pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Size of one head.
    pub head_size: usize,
    /// Leading dimensions of each head that rotate (even, at most head_size).
    pub rope_dim: usize,
    /// Base frequency.
    pub theta: f32,
    /// Llama-3-style divisors of each pair's frequency ((rope_dim / 2,)).
    pub freq_factors: Option<Vec<f32>>,
    /// Which dimensions form pair i.
    pub pairing: Pairing,
}

impl Rope {
    /// Rotation angle of pair `pair` (dimensions 2 pair, 2 pair + 1) of a head
    /// at `pos`, as llama2.c computes it in f32: `pos / theta^(2 pair / rope_dim)`
    /// (divided by the pair's frequency factor); `None` past `rope_dim`.
    fn angle(&self, pos: usize, pair: usize) -> Option<f32> {
        if 2 * pair >= self.rope_dim {
            return None;
        }
        let mut freq = 1.0 / self.theta.powf((2 * pair) as f32 / self.rope_dim as f32);
        if let Some(f) = &self.freq_factors {
            freq /= f[pair];
        }
        Some(pos as f32 * freq)
    }

    /// The (cos, sin) of every (position, pair) angle: (positions, head_size / 2, 2)
    /// values; pairs past `rope_dim` get (1, 0), no rotation.
    pub fn table(&self, positions: usize) -> Vec<f32> {
        let mut t = Vec::with_capacity(positions * self.head_size);
        for pos in 0..positions {
            for pair in 0..self.head_size / 2 {
                let (sin, cos) = self.angle(pos, pair).map_or((0.0, 1.0), f32::sin_cos);
                t.extend([cos, sin]);
            }
        }
        t
    }

    /// Host reference (llama2.c's RoPE loop, over pairs as `pairing`
    /// makes them): rotates q, and k where `i < k.len()`.
    pub fn rotate(&self, q: &mut [f32], k: &mut [f32], pos: usize) {
        let hs = self.head_size;
        for i in (0..q.len()).step_by(2) {
            let (head, pair) = (i / hs * hs, (i % hs) / 2);
            let Some(angle) = self.angle(pos, pair) else {
                continue;
            };
            // The pair's two dimensions within the head.
            let (x, y) = match self.pairing {
                Pairing::Adjacent => (2 * pair, 2 * pair + 1),
                Pairing::HalfSplit => (pair, pair + self.rope_dim / 2),
            };
            let (sin, cos) = angle.sin_cos();
            for v in [&mut *q, &mut *k] {
                if i < v.len() {
                    let (a, b) = (v[head + x], v[head + y]);
                    v[head + x] = a * cos - b * sin;
                    v[head + y] = a * sin + b * cos;
                }
            }
        }
    }
}
