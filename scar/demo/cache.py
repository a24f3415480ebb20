"""Where locally built worlds live: the cache root, versioned folder names and atomic installation."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_cache_root", "check_size", "versioned_folder", "install"]


def default_cache_root() -> Path:
    """``$SCAR_CACHE`` if set, else ``~/.cache/scar``: the folder that holds every world."""
    env = os.environ.get("SCAR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scar"


def check_size(size: object, sizes: Mapping[str, object]) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``size`` is one of ``sizes``' keys."""
    if not isinstance(size, str):
        raise TypeError(f"size must be a str, got {type(size).__name__}")
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; known sizes: {sorted(sizes)}")


def versioned_folder(fmt: str, size: str, sizes: Mapping[str, object]) -> str:
    """``fmt`` for the "default" size, ``fmt-<size>`` otherwise (``size`` checked against ``sizes``)."""
    check_size(size, sizes)
    return fmt if size == "default" else f"{fmt}-{size}"


def install(tmp: Path, target: Path) -> None:
    """Move the finished build ``tmp`` to ``target``, replacing what is there.

    Another process may build the same world at the same time; if it re-creates ``target`` between
    our removal and our rename, the rename fails and we retry (the last complete build wins).
    """
    for attempt in range(3):
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
            return
        except OSError:
            if attempt == 2:
                raise
