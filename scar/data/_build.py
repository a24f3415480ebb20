"""What every locally built world shares: where the cache lives, versioned folder names, atomic
installation of a finished build, pinning torch's thread count, and the pieces of a training loop
(padding, the learning-rate schedule, one optimiser step)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
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


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def warmup_cosine_lr(step: int, total: int, peak: float, *, warmup_fraction: float, floor: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the ``total`` steps, then cosine decay to ``floor`` x
    ``peak``."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One training step at learning rate ``lr``, gradients clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
