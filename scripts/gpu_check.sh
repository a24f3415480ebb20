#!/usr/bin/env bash
# The prepared GPU check (run it on a machine with a CUDA GPU, PyTorch and Triton; under 5 minutes):
# builds the compiled CPU kernels, then runs scripts/gpu_check.py, which checks the Triton kernels against
# their torch references, the trie backend against plain deletion on the GPU, and times tree attention
# against SDPA with a dense mask, printing one summary table. Exit status 1 when a check fails.
#   bash scripts/gpu_check.sh              # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run    # anywhere: CPU, Triton interpreter, toy sizes (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
# The C++ extension serves the CPU paths only; the check runs without it if no compiler is there.
"$PY" setup.py build_ext --inplace > /tmp/scar_gpu_check_build.log 2>&1 \
  || echo "gpu_check: C++ extension not built (see /tmp/scar_gpu_check_build.log); CPU paths use torch"
exec "$PY" scripts/gpu_check.py "$@"
