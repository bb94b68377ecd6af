//! The benchmarked models: stories260K from `$KVGPU_MODELS`, or Llama shapes
//! with seeded random weights.

use kvgpu::{Config, DType, Model, Tensor};

/// A synthetic shape from `dim,hidden,layers,heads,kv_heads,vocab,context,dtype`.
fn synthetic(name: &str, spec: &str) -> Result<(Config, DType), String> {
    let f: Vec<&str> = spec.split(',').collect();
    if f.len() != 8 {
        return Err(format!("--shape {name}: need 8 fields, got {}", f.len()));
    }
    let n = |i: usize| {
        f[i].parse::<usize>()
            .map_err(|e| format!("--shape {name}: field {i}: {e}"))
    };
    let dtype = match f[7].to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        "q4_k" => DType::Q4_K,
        other => return Err(format!("--shape {name}: unknown dtype {other}")),
    };
    let (dim, heads) = (n(0)?, n(3)?);
    let config = Config {
        dim,
        hidden_dim: n(1)?,
        n_layers: n(2)?,
        n_heads: heads,
        n_kv_heads: n(4)?,
        vocab_size: n(5)?,
        seq_len: n(6)?,
        shared_classifier: true,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_dim: dim / heads.max(1),
        rope_freq_factors: None,
    };
    Ok((config, dtype))
}

/// The model called `name`: stories260K, 15M, 110M or one of `shapes`.
pub fn load(name: &str, shapes: &[(String, String)]) -> Result<Model, Box<dyn std::error::Error>> {
    let spec = match name {
        "stories260K" => {
            let path = crate::fetch(&kvgpu::files::STORIES260K)?;
            return Ok(Model::load_llama2c(path)?);
        }
        "15M" => "288,768,6,6,6,32000,256,f32".to_string(),
        "110M" => "768,2048,12,12,12,32000,1024,f16".to_string(),
        other => shapes
            .iter()
            .find(|(n, _)| n == other)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| format!("unknown model {other}"))?,
    };
    let (config, dtype) = synthetic(name, &spec)?;
    let model = Model::random(config, 2024)?;
    if dtype != DType::Q4_K {
        return Ok(Model {
            weights: model.weights.convert(dtype),
            config: model.config,
        });
    }
    // No K-quant quantizer: random Q4_K blocks with small scales (the
    // kernels' speed does not depend on the values), F16 elsewhere.
    let mut weights = model.weights.convert(DType::F16);
    let mut rng = kvgpu::rng::XorShift::new(7);
    for l in &mut weights.layers {
        for t in [
            &mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w1, &mut l.w2, &mut l.w3,
        ] {
            let row_bytes = DType::Q4_K.row_bytes(t.cols).ok_or(format!(
                "{name}: {} columns are not whole Q4_K blocks",
                t.cols
            ))?;
            let mut bytes: Vec<u8> = (0..t.rows * row_bytes)
                .map(|_| rng.next_u32() as u8)
                .collect();
            for block in bytes.chunks_mut(DType::Q4_K.block_bytes()) {
                block[..4].copy_from_slice(&[0x00, 0x14, 0x00, 0x10]); // d, dmin ~ 1e-3
            }
            let n = bytes.len();
            *t = Tensor::from_shared(
                DType::Q4_K,
                t.rows,
                t.cols,
                std::sync::Arc::new(bytes),
                0..n,
            );
        }
    }
    Ok(Model {
        weights,
        config: model.config,
    })
}
