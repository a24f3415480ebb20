"""Marks for tests that need the compiled CPU extension ``scar_kernels._C`` (the C++ tree-attention kernel and
pack builder): without it they are skipped with one reason, not failed."""

from __future__ import annotations

import pytest

from scar_kernels.extension import has_extension

needs_extension = pytest.mark.skipif(not has_extension(), reason="the compiled scar_kernels._C is not built")
"""Skip the test where the extension is not built."""

KERNEL = pytest.param("kernel", marks=needs_extension)
"""The ``attention="kernel"`` parameter of a test parametrised over the trie's attention paths."""
