//! llama2.c's xorshift64* random number generator (`random_u32` /
//! `random_f32` in run.c): seeded sampling, and seeded random weights for
//! tests and benchmarks.

/// llama2.c's xorshift64* generator.
#[derive(Clone, Debug)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// Seeds the generator. run.c passes the seed straight in as the state.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator's state (seeding a new one with it continues the sequence).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// run.c's `random_u32`.
    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545F4914F6CDD1D) >> 32) as u32
    }

    /// run.c's `random_f32`: uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16777216.0
    }
}
