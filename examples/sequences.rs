//! Several sequences decoded together by one `Engine` over a paged KV pool:
//! three prompts joining at different steps, a fork of the first (sharing
//! its full pages), greedy and sampled, then each text and the pool's
//! memory report.
//!
//! ```text
//! cargo run --release --example sequences -- stories260K.bin tok512.bin
//! cargo run --release --example sequences -- model.gguf
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_path) = args.first() else {
        return Err("usage: sequences MODEL [TOKENIZER]".into());
    };
    let (model, gguf_tokenizer) = kvgpu::Model::load(model_path)?;
    let tokenizer = match gguf_tokenizer {
        Some(t) => t,
        None => {
            let path = args
                .get(1)
                .ok_or("a llama2.c checkpoint needs its tokenizer")?;
            kvgpu::Tokenizer::load(path, model.config.vocab_size)?
        }
    };
    let gpu = kvgpu::Gpu::new(None)?;
    let model = kvgpu::GpuModel::new(&gpu, &model)?;
    let options = kvgpu::EngineOptions::default().context(256).pages(64);
    let mut engine = kvgpu::Engine::new(&model, options)?;
    let prompts = ["Once upon a time", "The little dog", "Tom had a red ball"];
    let mut samplers = Vec::new();
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for step in 0..48 {
        // A new prompt every 8 steps; the first one forked at step 20.
        if step % 8 == 0 && step / 8 < prompts.len() {
            let tokens = tokenizer.encode(prompts[step / 8], tokenizer.add_bos(), false)?;
            ids.push(engine.add(&tokens)?);
            samplers.push(kvgpu::Sampler::greedy());
            texts.push(prompts[step / 8].to_string());
        }
        if step == 20 {
            ids.push(engine.fork(ids[0])?);
            samplers.push(kvgpu::Sampler::new(1.0, 0.9, 7)?);
            texts.push(texts[0].clone());
        }
        for id in engine.step()? {
            let i = ids.iter().position(|&x| x == id).expect("ours");
            let logits = engine.logits(id)?;
            let next = samplers[i].sample(logits);
            let prev = *engine.tokens(id)?.last().expect("not empty");
            texts[i].push_str(&String::from_utf8_lossy(tokenizer.decode(prev, next)?));
            engine.push(id, next)?;
        }
    }
    for (id, text) in ids.iter().zip(&texts) {
        println!("{id}: {text}\n");
    }
    let m = engine.memory();
    println!(
        "pool: {} pages of {} positions ({} bytes each, {} bytes in all): {} held ({} shared), {} cached, {} free; {} bytes held",
        m.pages.total,
        m.page_size,
        m.page_bytes,
        m.capacity_bytes,
        m.pages.held,
        m.pages.shared,
        m.pages.cached,
        m.pages.free,
        m.held_bytes
    );
    for &id in &ids {
        let s = engine.sequence_memory(id)?;
        println!(
            "{id}: {} pages ({} shared), {} bytes",
            s.pages, s.shared, s.bytes
        );
    }
    Ok(())
}
