#!/bin/bash
# Bring up a one-node Slurm cluster here (Debian's slurm-wlm + munge, as root), mine a small problem set as a job
# array of 2 shards on the embedded model through scripts/slurm-submit.sh, merge, validate, replay every attempt,
# and compare with one process mining the same problems. Exits non-zero on any failure; stops the daemons it started.
#   scripts/slurm-check.sh [WORKDIR]      (needs: apt-get install slurm-wlm munge; cot-patching installed)
set -euo pipefail
for tool in slurmctld slurmd sbatch munged cot-patching; do
  command -v "$tool" >/dev/null || { echo "slurm-check: $tool not found (apt-get install slurm-wlm munge)"; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "slurm-check: run as root (it starts slurmctld, slurmd and munged)"; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(realpath -m "${1:-$(mktemp -d /tmp/cotp-slurm.XXXX)}")"
mkdir -p "$work"/{state,spool,log}
node="$(hostname -s)"
cpus="$(nproc)"
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
export SLURM_CONF="$work/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=cotp
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
MpiDefault=none
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
started=()
cleanup() { for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
if ! pgrep -x munged >/dev/null; then
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  munged --force
fi
slurmctld -D -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 & started+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/log/slurmd.out" 2>&1 & started+=($!)
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o "%P %D %T %C" | tee "$work/sinfo.txt"
grep -q idle "$work/sinfo.txt" || { echo "slurm-check: the node never became idle; logs in $work/log"; exit 1; }

# 4 GSM8K problems, a short schedule: enough for 2 shards to each mine something
python3 - "$here/data/problems.sample.json" "$work/problems.json" <<'PY'
import json, sys
problems = json.load(open(sys.argv[1]))[:4]
json.dump(problems, open(sys.argv[2], "w"), indent=1)
PY
flags=(--problems "$work/problems.json" --device cpu --max-tries 2 --max-new-tokens 24 --min-pairs 20)
cd "$work"
"$here/scripts/slurm-submit.sh" 2 "$work/run" embedded "${flags[@]}" | tee "$work/submitted.txt"
merge_job=$(awk '{print $NF}' FS='merge ' "$work/submitted.txt" | cut -d';' -f1)
for _ in $(seq 900); do
  state=$(sacct -n -X -j "$merge_job" -o State 2>/dev/null | head -1 | tr -d ' ' || true)
  [ -z "$state" ] && state=$(squeue -h -j "$merge_job" -o %T 2>/dev/null || true)
  [ -z "$state" ] && [ -f "$work/run/merged/summary.json" ] && state=DONE
  case "$state" in COMPLETED|DONE) break ;; FAILED|CANCELLED*|TIMEOUT|OUT_OF_ME*) echo "merge job $state"; exit 1 ;; esac
  sleep 2
done
[ -f "$work/run/merged/summary.json" ] || { echo "slurm-check: no merged run; see $work/run/*.out"; exit 1; }
cat "$work"/run/merge-*.out
echo "--- replay every merged attempt in a fresh process"
cot-patching reproduce --outdir "$work/run/merged" --all-runs --device cpu | tail -2
echo "--- one process mining the same problems"
cot-patching mine --model embedded "${flags[@]}" --outdir "$work/single" --no-progress >/dev/null
for f in runs.jsonl pairs.jsonl pairs_summary.csv summary.json; do
  cmp "$work/single/$f" "$work/run/merged/$f" && echo "$f: merged == single process"
done
echo "slurm-check: OK ($work)"
