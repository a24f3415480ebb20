"""The pieces of a small training loop shared by the locally trained worlds: pinning torch's thread count,
the learning-rate schedule and one optimiser step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

__all__ = ["torch_threads", "warmup_cosine_lr", "optimizer_step"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
