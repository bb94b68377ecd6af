//! llama2.c checkpoint reader from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = kvgpu::Model::from_llama2c_bytes(data.to_vec()) {
        // A model that loads has consistent shapes.
        assert_eq!(m.weights.layers.len(), m.config.n_layers);
        assert_eq!(m.weights.token_embedding.rows, m.config.vocab_size);
    }
});
