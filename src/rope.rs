//! Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"): each pair of
//! dimensions of a head is rotated by an angle that grows with the position.
//! The GPU reads the (cos, sin) table built here; the host reference rotates
//! with the same f32 angles, as llama2.c computes them.

/// RoPE settings: which dimensions rotate and how fast.
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

    /// Host reference (llama2.c's RoPE loop): rotates q, and k where `i < k.len()`.
    pub fn rotate(&self, q: &mut [f32], k: &mut [f32], pos: usize) {
        for i in (0..q.len()).step_by(2) {
            let Some(angle) = self.angle(pos, (i % self.head_size) / 2) else {
                continue;
            };
            let (sin, cos) = angle.sin_cos();
            for v in [&mut *q, &mut *k] {
                if i < v.len() {
                    let (a, b) = (v[i], v[i + 1]);
                    v[i] = a * cos - b * sin;
                    v[i + 1] = a * sin + b * cos;
                }
            }
        }
    }
}
