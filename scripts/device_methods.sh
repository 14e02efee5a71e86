#!/usr/bin/env bash
# Every method's intervention on a GPU: the tests of tests/test_methods.py with the tiny model on CUDA (batched
# equals one-by-one, teacher-forced logits, Self-CD by hand, SafeDecoding's and DRO's training through a Run).
# Run from the repository root on a machine with a GPU, after `make setup` (or with the packages on PYTHONPATH);
# SCANS_DATA_DIR must hold the prompt sets the disjointness rule reads.
set -euo pipefail
"${PY:-python3}" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name(0))"
SCANS_TEST_DEVICE=cuda "${PY:-python3}" -m pytest -q -p no:cacheprovider tests/test_methods.py \
  -k "not disjoint_from_reported_sets and not unknown_method" "$@"
