#!/usr/bin/env bash
# The project's tests (what .ci/run and the README's second command run, after scripts/setup.sh):
#   1. the whole suite in .venv (the current transformers): tests/, bench/ at correctness sizes, experiments/;
#   2. the exactness tests and the verl integration on the LOWEST supported transformers, in .venv-verl
#      (created by scripts/setup_verl_env.sh; a no-op when it is up to date).
# Any failure fails the run; pytest's exit code 5 (no test collected) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest tests bench experiments --benchmark-disable -q
bash scripts/test_min_transformers.sh
