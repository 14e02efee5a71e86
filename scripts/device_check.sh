#!/usr/bin/env bash
# The GPU check (issue 13): the organism through extract, classify, steer, judge, capability and cost on one GPU at
# the paper's sizes where they fit in about 8 minutes (all 450 XSTest prompts, 256 new tokens, 2048-token perplexity
# windows, an MMLU slice), failing if anything ran on the CPU or in another dtype than the config's; then the
# method tests on CUDA (scripts/device_methods.sh). Run from the repository root after `make setup`, with
# SCANS_DATA_DIR set; extra arguments are Hydra overrides (e.g. model.dtype=bfloat16).
set -euo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "device_check: no CUDA device; build and test on the CPU (make test) instead" >&2
  exit 2
fi
"$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.version.cuda)"
time "$PY" scripts/device_check.py "$@"
PY="$PY" bash scripts/device_methods.sh
