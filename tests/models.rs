//! The sentinel: model tests print `SKIPPED` and pass when their files are
//! missing, so this test fails instead, naming the files and how to get
//! them, unless `KVGPU_SKIP_MODEL_TESTS=1` says the skips are meant. Under
//! `CI=true` the model tests fail themselves.

mod common;

#[test]
fn model_files_are_present_or_their_tests_are_skipped_on_purpose() {
    let missing: Vec<String> = [
        "stories260K.bin",
        "tok512.bin",
        "stories260K.gguf",
        "stories260K-f16.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "stories260K-as-qwen2.gguf",
        "stories260K-as-qwen3.gguf",
        "stories260K-as-phi3.gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma-3-270m-f16.gguf",
    ]
    .into_iter()
    .filter_map(|name| match kvgpu::files::find(name) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "  {e}\n    to get it: {}",
            common::how_to_get(name)
        )),
    })
    .collect();
    if missing.is_empty() {
        return;
    }
    let report = missing.join("\n");
    if std::env::var("KVGPU_SKIP_MODEL_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED on purpose (KVGPU_SKIP_MODEL_TESTS=1): the tests that need\n{report}");
        return;
    }
    panic!(
        "the tests that need these files passed without running:\n{report}\n\
         (set KVGPU_SKIP_MODEL_TESTS=1 to skip them on purpose)"
    );
}
