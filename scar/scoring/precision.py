"""The dtype the coalitions are scored in, when it may differ from the reward model's own.

A sampled Shapley estimate is noisy at the level of tens of percent; the rounding of a half-precision forward
is usually a fraction of a percent of a score, with rare large outliers on inputs where the model is
ill-conditioned in that precision. So the coalitions of sampled credit can be scored by a copy of the reward
model in ``bfloat16`` where that is faster (:class:`CastCopy`, which follows the model's weights), while the
sequence reward ``r`` and ``v(∅)`` stay the model's own (see :class:`scar.credit.rewarder.SCAR`). ``"auto"``
takes ``bfloat16`` only when the model is ``float32``, on one device, and a matrix product of the model's width
runs faster in ``bfloat16`` there (CPUs with native bfloat16 instructions, GPUs with bfloat16 tensor cores);
elsewhere it keeps the model's dtype.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from scar._checks import check_choice
from scar.scoring.model import model_device, model_dtype
from scar_kernels.ops import median_ms

__all__ = [
    "SCORE_DTYPES",
    "AUTO_SPEEDUP",
    "resolve_score_dtype",
    "bfloat16_speedup",
    "cast_copy",
    "weights_stamp",
    "CastCopy",
]

SCORE_DTYPES = ("auto", "bfloat16", "float16")
"""Accepted names of a scoring dtype besides None (the model's own)."""

AUTO_SPEEDUP = 1.25
"""``"auto"`` scores in bfloat16 when a matrix product of the model's width runs at least this much faster."""


def resolve_score_dtype(choice: str | None, model: nn.Module) -> torch.dtype | None:
    """The dtype to score ``model``'s coalitions in, or None for the model's own.

    Args:
        choice: None, ``"auto"``, ``"bfloat16"`` or ``"float16"``.

    Raises:
        ValueError: another choice.
    """
    if choice is not None:
        check_choice(choice, "score_dtype", SCORE_DTYPES)
    own = model_dtype(model)
    if choice is None:
        return None
    if choice == "auto":
        # a model dispatched over several devices (accelerate's device_map) is not copied behind the user's back
        placement = getattr(model, "hf_device_map", None)
        if own != torch.float32 or (isinstance(placement, dict) and len(set(placement.values())) > 1):
            return None
        width = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0) or 1024
        return torch.bfloat16 if bfloat16_speedup(model_device(model).type, width) >= AUTO_SPEEDUP else None
    dtype = getattr(torch, choice)
    return None if dtype == own else dtype


@functools.cache
def bfloat16_speedup(device_type: str, width: int) -> float:
    """Time of a ``[rows, width] x [width, 4 width]`` product in float32 over its time in bfloat16 on a
    device of this type (median of 5 after a warm-up; cached per process). ``rows`` gives the product about
    ``2**28`` multiply-adds (16 to 65,536 rows), enough work that the ratio measures throughput, not call
    overhead. 0 where bfloat16 is unavailable."""
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return 0.0
    if device_type not in ("cpu", "cuda"):
        return 0.0
    rows = min(65536, max(16, 2**28 // (4 * width * width)))
    gen = torch.Generator().manual_seed(0)
    device = torch.device(device_type)
    a32 = torch.randn(rows, width, generator=gen).to(device)
    b32 = torch.randn(width, 4 * width, generator=gen).to(device)
    times = [
        median_ms(functools.partial(torch.matmul, a, b), device, warmup=1, repeats=5)
        for a, b in ((a32, b32), (a32.bfloat16(), b32.bfloat16()))
    ]
    return times[0] / times[1] if times[1] > 0 else 0.0


def cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` with its floating parameters and buffers in ``dtype`` (the model is untouched)."""
    return copy.deepcopy(model).to(dtype)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def weights_stamp(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """What changes when ``model``'s weights do: per parameter and buffer name, the tensor's identity, storage and
    version counter (which every in-place write bumps: optimiser steps, ``load_state_dict``, ``copy_``)."""
    return {name: (id(t), t.data_ptr(), t._version) for name, t in _tensors(model).items()}


class CastCopy:
    """A copy of ``source`` in ``dtype`` that follows ``source``'s weights.

    :meth:`sync` compares :func:`weights_stamp` with the one of the last sync and copies the tensors that
    changed into :attr:`model` (cast to ``dtype``), in place while the tensors keep their names, shapes and
    devices, else by casting a new copy. Only what changed is copied, so a buffer that a forward rewrites costs
    that buffer. Call it before each use: a copy that silently kept old weights would score the coalitions
    with another model than ``r``.
    """

    def __init__(self, source: nn.Module, dtype: torch.dtype) -> None:
        self.source, self.dtype = source, dtype
        self.model = cast_copy(source, dtype)
        self._stamp = weights_stamp(source)

    def sync(self) -> bool:
        """Bring :attr:`model` up to date; True when it is a new object (a holder of the old one must switch)."""
        stamp = weights_stamp(self.source)
        if stamp == self._stamp:
            return False
        changed = [name for name, mark in stamp.items() if self._stamp.get(name) != mark]
        src, dst = _tensors(self.source), _tensors(self.model)
        fits = src.keys() == dst.keys() and all(
            src[k].shape == dst[k].shape and src[k].device == dst[k].device for k in changed
        )
        if fits:
            with torch.no_grad():
                for name in changed:
                    dst[name].copy_(src[name])
        else:
            self.model = cast_copy(self.source, self.dtype)
        self._stamp = stamp
        return not fits
