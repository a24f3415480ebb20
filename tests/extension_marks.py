"""Marks for tests that need the compiled CPU extension ``scar_kernels._C`` (the C++ tree-attention kernel and
pack builder): without it they are skipped with one reason, not failed; and which of its vector builds this CPU
runs."""

from __future__ import annotations

import pytest
import torch

from scar_kernels.extension import has_extension, load

needs_extension = pytest.mark.skipif(not has_extension(), reason="the compiled scar_kernels._C is not built")
"""Skip the test where the extension is not built."""

KERNEL = pytest.param("kernel", marks=needs_extension)
"""The ``attention="kernel"`` parameter of a test parametrised over the trie's attention paths."""


def isa_supported(isa: str) -> bool:
    """Whether this CPU runs the C++ tree-attention kernel's ``isa`` build (``"baseline"``, ``"avx2"``,
    ``"avx512"``); the kernel refuses a build the CPU cannot run, and nothing else."""
    x = torch.zeros(1, 1, 1)
    try:
        load().tree_attention(x, x, x, torch.ones(1, dtype=torch.int32), 1.0, isa=isa)
    except ValueError as exc:
        assert "not supported by this CPU" in str(exc)
        return False
    return True
