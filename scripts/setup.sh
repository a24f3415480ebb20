#!/usr/bin/env bash
# Create .venv (if missing) and install SCAR with everything the demo and the tests need.
# torch is installed first and explicitly as the CPU wheel torch==2.13.0: an unpinned torch
# would make pip fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade "pip>=24" "setuptools>=77" wheel "pybind11>=2.12"
$PIP install -q "torch==2.13.0" "numpy>=1.26"
$PIP install -q --no-build-isolation -e ".[triton,trl,data,test,bench,ray]"
