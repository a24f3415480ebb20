#!/usr/bin/env bash
# Create .venv-verl: this package on the LOWEST transformers it supports, beside verl 0.9.1 and ray (CPU).
#
# Pins (scripts/verl-constraints.txt): torch==2.13.0 (the CPU wheel on this machine's disk), verl==0.9.1,
# ray==2.60.0, trl==1.16.0 and transformers==5.5.3, the lowest release verl 0.9.1 accepts
# (its requirement: transformers!=5.6.0,<5.11,>=5.5.3).
#
# The package's own requirements (project dependencies + the [test] and [trl] extras, read from
# pyproject.toml) are installed under those constraints except its transformers range, which the pin replaces,
# then the package itself editable without build isolation (the C++ extension compiles against the installed
# torch) and without dependencies.
#
# Idempotent: a stamp in the venv records a hash of the inputs (this script, the constraints, pyproject.toml,
# setup.py); when it matches, the installed versions are there and the compiled extension is not older than
# csrc/, the script does nothing (a fraction of a second).
# Environment: PYTHON (default python3) creates the venv; SCAR_VERL_VENV (default .venv-verl) is its folder;
# SCAR_VERL_FORCE=1 reinstalls even when the stamp matches.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SCAR_VERL_VENV:-.venv-verl}
CONSTRAINTS=scripts/verl-constraints.txt
STAMP="$VENV/.scar-setup-stamp"

# Everything that decides what is installed.
HASH=$(cat scripts/setup_verl_env.sh "$CONSTRAINTS" pyproject.toml setup.py | sha256sum | cut -d' ' -f1)

# The compiled extension lives in the source tree (scar_kernels/_C*.so, shared with .venv: same torch, same
# Python); it is rebuilt only when missing or older than a file of csrc/.
extension_fresh() {
    local so
    so=$(ls scar_kernels/_C*.so 2>/dev/null | head -n1)
    [ -n "$so" ] && [ -z "$(find csrc -newer "$so" -type f 2>/dev/null | head -n1)" ]
}

if [ "${SCAR_VERL_FORCE:-0}" != 1 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$HASH" ] && extension_fresh \
    && TF=$("$VENV/bin/python" -c "import importlib.metadata as m; m.version('verl'); m.version('scar-rlhf'); print(m.version('transformers'))" 2>/dev/null); then
    echo "setup_verl_env: $VENV is up to date (transformers $TF)"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$STAMP"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip>=24" "setuptools>=77" wheel "pybind11>=2.12"
# torch first and explicitly: an unpinned torch would make pip fetch a multi-GB CUDA build.
$PIP install -q -c "$CONSTRAINTS" "torch==2.13.0" "numpy>=2.0"

# The package's requirements (dependencies + [test] + [trl]) without its transformers range.
REQS="$VENV/scar-requirements.txt"
"$VENV/bin/python" - "$REQS" <<'PYEOF'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in ("test", "trl"):
    reqs += project["optional-dependencies"][extra]
name = lambda r: re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-")
keep = sorted({r for r in reqs if name(r) not in ("transformers", "torch")})
with open(sys.argv[1], "w") as f:
    f.write("\n".join(keep) + "\n")
PYEOF

# transformers, verl, ray and trl take their versions from the constraints file. cachetools, fastapi and uvicorn
# are imported by verl's trainer module (verl.trainer.ppo.ray_trainer) but are only in verl's [verl-core] extra.
$PIP install -q -c "$CONSTRAINTS" -r "$REQS" "torch==2.13.0" transformers verl "ray[default]" trl \
    cachetools fastapi uvicorn
# A fresh compiled extension in the tree is kept (not rebuilt nor rewritten under a running .venv).
if extension_fresh; then
    SCAR_NO_EXTENSION=1 $PIP install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e .
else
    $PIP install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e .
fi

# Never a CUDA torch, and the pins hold.
"$VENV/bin/python" - "$CONSTRAINTS" <<'PYEOF'
import importlib.metadata as md
import re
import sys

import torch
import transformers

bad = []
if not torch.__version__.startswith("2.13.0") or torch.version.cuda is not None:
    bad.append(f"torch {torch.__version__} (cuda {torch.version.cuda}), expected the CPU build 2.13.0")
nvidia = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if nvidia:
    bad.append(f"CUDA packages installed: {nvidia}")
with open(sys.argv[1]) as f:
    pins = dict(m.groups() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", f.read(), re.M))
for pkg, want in pins.items():
    if md.version(pkg) != want and not md.version(pkg).startswith(want + "+"):
        bad.append(f"{pkg} {md.version(pkg)}, expected {want}")
import scar  # noqa: E402,F401
import verl  # noqa: E402,F401
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase  # noqa: E402,F401
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402,F401
from scar_kernels import extension  # noqa: E402

if bad:
    sys.exit("setup_verl_env: " + "; ".join(bad))
print(f"setup_verl_env: torch {torch.__version__}, transformers {transformers.__version__}, verl {md.version('verl')}, "
      f"ray {md.version('ray')}, trl {md.version('trl')}, C++ extension {'built' if extension.has_extension() else 'NOT built'}")
PYEOF
echo "$HASH" > "$STAMP"
