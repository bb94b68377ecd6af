//! Helpers shared by the unit tests: seeded random values and the largest
//! difference of two slices (`tests/common` has the same two for the
//! integration tests, which cannot see this module).

/// Seeded uniform values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::XorShift::new(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

/// Largest |a - b| over two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
