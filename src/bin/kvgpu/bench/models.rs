//! The benchmarked models: stories260K from `$KVGPU_MODELS`, or Llama shapes
//! with seeded random weights.

use kvgpu::{Config, DType, Model};

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
    let dtype =
        DType::from_name(f[7]).ok_or_else(|| format!("--shape {name}: unknown dtype {}", f[7]))?;
    let (dim, heads) = (n(0)?, n(3)?);
    let config = Config {
        dim,
        hidden_dim: n(1)?,
        n_layers: n(2)?,
        n_heads: heads,
        n_kv_heads: n(4)?,
        head_size: dim / heads.max(1),
        vocab_size: n(5)?,
        seq_len: n(6)?,
        shared_classifier: true,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_theta_window: 10000.0,
        sliding_window: 0,
        rope_dim: dim / heads.max(1),
        rope_freq_factors: None,
        family: kvgpu::arch::Family::llama(),
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
        "smollm2" => return smollm2(),
        // Gemma 3 270M as published (scripts/fetch-gemma3.sh), and its F16 conversion.
        "gemma3" | "gemma3-f16" => {
            let file = match name {
                "gemma3" => "gemma-3-270m-q4_k_m.gguf",
                _ => "gemma-3-270m-f16.gguf",
            };
            return Ok(Model::load(kvgpu::files::find(file)?)?.0);
        }
        other if other.starts_with("smollm2-") => {
            let dtype = DType::from_name(&other["smollm2-".len()..])
                .filter(|t| kvgpu::tensor::QUANTIZERS.contains(t))
                .ok_or_else(|| {
                    format!("{other}: smollm2-<f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1>")
                })?;
            let model = smollm2()?;
            return Ok(Model {
                weights: model.weights.convert(dtype),
                config: model.config,
            });
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
    Ok(Model::random_with(config, dtype, 2024)?)
}

/// SmolLM2-135M-Instruct as published (Q4_1 weights, Q8_0 embedding), from
/// `$KVGPU_MODELS` or the user cache folder.
fn smollm2() -> Result<Model, Box<dyn std::error::Error>> {
    let path = kvgpu::files::find("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Ok(Model::load(path)?.0)
}
