"""The one loader of the compiled module ``scar_kernels._C`` (built from ``csrc/`` by ``setup.py``).

The module provides the fast CPU paths: the packed prefix-tree layout builder and flash-style CPU tree
attention. Everything works without it; :func:`load` then returns ``None`` and warns once, naming the
paths that are slower.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from types import ModuleType

import torch  # noqa: F401  (loads libtorch, which the compiled module links against)

__all__ = ["load", "has_extension", "MODULE_NAME", "SLOWER_WITHOUT_EXTENSION"]

MODULE_NAME = "scar_kernels._C"

SLOWER_WITHOUT_EXTENSION = (
    "building packed coalition layouts (the pure-Python reference builder) and CPU tree attention "
    "(a torch implementation with a dense N x N mask)"
)

_NOT_LOADED = object()
_module: object = _NOT_LOADED
_lock = threading.Lock()


def load() -> ModuleType | None:
    """The compiled module, or None when it is not built (the first call then warns once)."""
    global _module
    if _module is _NOT_LOADED:
        with _lock:
            if _module is _NOT_LOADED:
                try:
                    _module = importlib.import_module(MODULE_NAME)
                except ImportError as exc:
                    _module = None
                    warnings.warn(
                        f"scar: the C++ extension {MODULE_NAME} is not available ({exc}); slower paths are "
                        f"used for {SLOWER_WITHOUT_EXTENSION}. Build it with `python setup.py build_ext "
                        "--inplace` or `pip install --no-build-isolation -e .`.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return _module  # type: ignore[return-value]


def has_extension() -> bool:
    """True when the compiled module ``scar_kernels._C`` is importable."""
    return load() is not None
