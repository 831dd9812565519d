#!/bin/bash
# Submit a sharded mining run to Slurm: warm-up -> array of N shards -> merge (each after the previous succeeded).
#   scripts/slurm-submit.sh N OUT MODEL [mine flags...]
# e.g. scripts/slurm-submit.sh 16 results/gsm8k-llama --model meta-llama/Llama-3.1-8B-Instruct --config configs/llama31-8b-gpu.yaml
# Extra sbatch options for every job (partition, account, --gres=gpu:1 for the array): SBATCH_ARGS="...".
set -euo pipefail
N="$1"; OUT="$2"; MODEL="$3"; shift 3
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
export COTP_OUT="$OUT" COTP_MODEL="$MODEL" COTP_SHARDS="$N" COTP_ARGS="--model $MODEL $*"
warm=$(sbatch --parsable ${SBATCH_ARGS:-} --chdir "$PWD" --export=ALL --output "$OUT/warmup-%j.out" "$here/configs/slurm/warmup.sbatch")
array=$(sbatch --parsable ${SBATCH_ARGS:-} ${SBATCH_ARRAY_ARGS:-} --chdir "$PWD" --export=ALL --dependency="afterok:$warm" \
  --array="0-$((N - 1))" --output "$OUT/shard-%a.out" "$here/configs/slurm/mine-shard.sbatch")
merge=$(sbatch --parsable ${SBATCH_ARGS:-} --chdir "$PWD" --export=ALL --dependency="afterok:$array" \
  --output "$OUT/merge-%j.out" "$here/configs/slurm/merge.sbatch")
echo "warm-up $warm, array $array (0-$((N - 1))), merge $merge; outputs in $OUT"
