"""Lint, format and type checks with the pinned tools of the ``test`` extra (``pyproject.toml``): ruff's lint
over the whole repository, ruff's format and mypy over the installed packages, clang-format over the C++ sources
(``csrc/.clang-format``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["scar", "scar_kernels"]


def tool(name: str) -> str:
    """The tool installed next to this Python (the project's venv), else on PATH; fails when missing."""
    local = Path(sys.executable).with_name(name)
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; it comes with the test extra: pip install -e '.[test]'")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    # the whole repository: the packages, the tests, the benchmarks, the scripts and the examples
    out = run(tool("ruff"), "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = run(tool("ruff"), "format", "--check", *PACKAGES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy():
    out = run(tool("mypy"))  # files and settings: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr


def test_clang_format():
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".h"))
    assert sources
    out = run(tool("clang-format"), "--dry-run", "--Werror", *sources)
    assert out.returncode == 0, out.stdout + out.stderr
