#!/usr/bin/env bash
# One call on a machine with a real GPU (issue 15): build, run the test
# suite on the hardware adapter (not lavapipe), and bench every model as
# JSON rows, all within about 8 minutes. Results go to $OUT (default
# target/gpu-check): adapter.txt, tests.log, bench.json, bench.md (with
# per-kernel profiles at positions 16 and 500).
#
#   KVGPU_MODELS=../shared/models scripts/gpu-check.sh
#
# It refuses a software adapter (llvmpipe, SwiftShader, WARP) unless
# ALLOW_SOFTWARE=1, which is how it is tried on a machine without a GPU;
# GPU_CHECK_TESTS and GPU_CHECK_MODELS narrow what runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
export KVGPU_MODELS=${KVGPU_MODELS:-../shared/models}
export CI=true # tests without an adapter fail instead of skipping
models=${GPU_CHECK_MODELS:-stories260K,15M,110M,smollm2,smollm2-f16}
started=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - started)) s)"; }

step "build"
cargo build --release --features cli --tests --quiet

step "adapter"
./target/release/kvgpu run -n 1 --temp 0 2>&1 >/dev/null | grep '^adapter:' | tee "$OUT/adapter.txt"
if grep -qiE 'llvmpipe|swiftshader|warp|software' "$OUT/adapter.txt" && [ "${ALLOW_SOFTWARE:-0}" != 1 ]; then
    echo "a software adapter: set WGPU_ADAPTER_NAME to the GPU's name (or ALLOW_SOFTWARE=1 to try the script)" >&2
    exit 1
fi

step "tests"
# shellcheck disable=SC2086
cargo test --release --features cli ${GPU_CHECK_TESTS:-} 2>&1 | tee "$OUT/tests.log" | grep -E '^test result|FAILED|panicked' || true
if grep -qE 'FAILED|test result: FAILED|error: test failed' "$OUT/tests.log"; then
    echo "tests failed: $OUT/tests.log" >&2
    exit 1
fi

step "bench"
./target/release/kvgpu bench --models "$models" --runs 3 --json > "$OUT/bench.json"
# Markdown, with each model's decode step kernel by kernel at positions 16
# and 500 (the model's whole context as cache, as kvgpu run has it).
./target/release/kvgpu bench --models "$models" --runs 3 --no-cache-lengths "" --profile-at 16,500 > "$OUT/bench.md"
cat "$OUT/bench.md"
step "done"
