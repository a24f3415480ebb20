"""The prepared GPU check (scripts/gpu_check.py) stays runnable: its dry run (CPU, Triton interpreter, toy
sizes) runs every part and reports no failure."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| kernels | tree_attention float32" in run.stdout
    assert "| exactness | llama bfloat16 trie/kernel vs loop" in run.stdout
    assert "| exactness | llama bfloat16 trie/flex vs loop" in run.stdout
    assert "| auto | H=32, Hkv=8, D=128, float32" in run.stdout and "-> kernel" in run.stdout
    assert " 0 failed" in run.stdout and "crashed" not in run.stdout
