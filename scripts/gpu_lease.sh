#!/usr/bin/env bash
# One GPU lease of the device tool, step by step (each step is one `run` call; a warm machine keeps /root/lease).
#   setup                 install the carried wheels (.whl/) into /root/site, check torch, CUDA, TransformerLens
#   piece                 move the carried model piece(s) (.cpart/*) into /root/lease/pieces
#   assemble NAME SHA256  cat the pieces into models/NAME and check its sha256
#   bg NAME CMD...        start CMD in its own session (it outlives the call), logging to /root/lease/NAME.log
#   status                the background jobs' last log lines and the GPU
#   pack DIR...           tar+xz each DIR into $OUT (split in 15 MiB parts: the device returns files < 16 MiB)
set -euo pipefail
LEASE=/root/lease
mkdir -p "$LEASE/pieces"
export PYTHONPATH=/root/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step=${1:?step}; shift
case "$step" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import importlib.metadata, torch, transformers, transformer_lens, gguf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'transformer_lens', importlib.metadata.version('transformer-lens'))"
    ;;
  piece)
    for f in .cpart/*; do mv "$f" "$LEASE/pieces/"; done
    ls "$LEASE/pieces" | wc -l; du -sh "$LEASE/pieces"
    ;;
  assemble)
    name=$1 sha=$2
    mkdir -p models
    cat "$LEASE"/pieces/"$name".part* > "models/$name"
    echo "$sha  models/$name" | sha256sum -c -
    rm -f "$LEASE"/pieces/"$name".part*
    ;;
  bg)
    name=$1; shift
    # a new session: it runs on after this call returns, until the machine is given back
    setsid bash -c "cd '$PWD' && export PYTHONPATH='$PYTHONPATH' HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false && date -u +start=%FT%TZ > '$LEASE/$name.log' && $* >> '$LEASE/$name.log' 2>&1; echo \"rc=\$? \$(date -u +end=%FT%TZ)\" >> '$LEASE/$name.log'" < /dev/null > /dev/null 2>&1 &
    echo "started $name"
    ;;
  status)
    for log in "$LEASE"/*.log; do [ -f "$log" ] || continue; echo "== $log"; grep -v "^\s" "$log" | tr '\r' '\n' | tail -n 4; done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    ;;
  pack)
    for dir in "$@"; do
      base=$(basename "$dir")
      XZ_OPT="-T0 -6" tar -C "$(dirname "$dir")" -cJf - "$base" | split -b 15M -d - "$OUT/$base.tar.xz.part"
    done
    for log in "$LEASE"/*.log; do echo "===== $log"; tail -c 300000 "$log"; done > "$OUT/logs.txt" 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
