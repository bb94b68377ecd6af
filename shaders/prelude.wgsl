// Declarations shared by the kernels that run the tokens of a pass; kvgpu
// prepends this file to their source (src/ops/mod.rs, `Step` in Rust).

// The pass: its first position and its number of tokens (grid z runs over
// the tokens; a kernel skips z >= n), and the KV cache's page size: 0 for a
// flat cache (token t at position pos + t, cache row = position), else the
// positions per page of a paged pool, where the kernels that touch the cache
// read each token's position and page table from their `paging` binding:
//   paging[2 t] = token t's position, paging[2 t + 1] = where its sequence's
//   page table starts in `paging`; position p's cache row is
//   paging[table + p / page] * page + p % page.
struct Step {
    pos: u32,
    n: u32,
    page: u32,
}

// Built with the override PAGED = true, the kernels that touch the cache
// (rope_append, attention, attention_combine) read through `paging`; the
// flat build (a `Session`) compiles none of it.
override PAGED: bool = false;

