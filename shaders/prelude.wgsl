// Declarations shared by the kernels that run the tokens of a pass; kvgpu
// prepends this file to their source (src/ops/mod.rs, `Step` in Rust).

// The pass: its first position and its number of tokens (grid z runs over
// the tokens; a kernel skips z >= n).
struct Step {
    pos: u32,
    n: u32,
}

