//! Tokenizer throughput: both kinds of tokenizer (SentencePiece, as
//! stories260K's tok512, and byte-level BPE, as SmolLM2's) on texts of one
//! letter, of spaces and of words, 10 KB to 1 MB, so that linear growth
//! (or worse) shows in the MB/s column.

use std::error::Error;
use std::time::Instant;

use kvgpu::Tokenizer;

/// The texts of `bytes` bytes: one letter repeated, spaces, words.
fn texts(bytes: usize) -> [(&'static str, String); 3] {
    let words = "the quick brown fox jumps over the lazy dog, then rests a while. ";
    let words = words.repeat(bytes / words.len() + 1);
    [
        ("one letter", "a".repeat(bytes)),
        ("spaces", " ".repeat(bytes)),
        ("words", words[..bytes].to_string()),
    ]
}

/// Prints the median time each tokenizer takes on each text of each size
/// in `sizes_kb`, of `runs` runs.
pub fn measure(sizes_kb: &[usize], runs: usize) -> Result<(), Box<dyn Error>> {
    let sentencepiece = Tokenizer::load(crate::fetch(&kvgpu::files::TOK512)?, 512)?;
    let smollm2 = kvgpu::files::find("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let byte_bpe = Tokenizer::from_gguf(&kvgpu::gguf::Gguf::open(smollm2)?)?;
    println!("| tokenizer | text | KB | tokens | ms (median of {runs}) | MB/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, tokenizer) in [
        ("SentencePiece (tok512)", &sentencepiece),
        ("byte-level BPE (SmolLM2)", &byte_bpe),
    ] {
        for &kb in sizes_kb {
            for (what, text) in texts(kb * 1000) {
                let mut times = Vec::with_capacity(runs);
                let mut tokens = 0;
                for _ in 0..runs.max(1) {
                    let started = Instant::now();
                    tokens = tokenizer.encode(&text, true, false)?.len();
                    times.push(started.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                println!(
                    "| {name} | {what} | {kb} | {tokens} | {:.1} | {:.1} |",
                    median * 1e3,
                    text.len() as f64 / median / 1e6
                );
            }
        }
    }
    println!();
    Ok(())
}
