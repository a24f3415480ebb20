"""What every locally built world shares: where the cache lives, versioned folder names, atomic
installation of a finished build, and pinning torch's thread count while training."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch


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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
