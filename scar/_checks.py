"""Argument checks shared by every layer: one message per kind of mistake, raised where the value enters."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_int",
    "check_positive_int",
    "check_choice",
    "check_unit_interval",
    "check_seed",
    "check_finite",
    "check_batch",
    "as_real",
    "check_tolerance",
]


def as_int(value: Any, name: str) -> int:
    """``operator.index(value)`` with a TypeError naming the argument; bools are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1; TypeError for a non-int, ValueError for a non-positive one."""
    out = as_int(value, name)
    if out < 1:
        raise ValueError(f"{name} must be a positive int, got {out}")
    return out


def check_choice(value: Any, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(choices)}")
    return value


def check_unit_interval(value: Any, name: str) -> float:
    """``float(value)`` if it lies in ``[0, 1]``, else ValueError (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    out = float(value)
    if not 0.0 <= out <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {out}")
    return out


SEED_BITS = 63


def check_seed(value: Any, name: str = "seed") -> int | None:
    """A seed: None, or an int in ``[0, 2**63)`` (what a torch generator accepts)."""
    if value is None:
        return None
    out = as_int(value, name)
    if not 0 <= out < 2**SEED_BITS:
        raise ValueError(f"{name} must be in [0, 2**{SEED_BITS}), got {out}")
    return out


def as_real(value: Any, name: str) -> float:
    """``float(value)`` for a real number: a Python or numpy int or float, a 0-d numpy array or a one-element
    real tensor. TypeError for anything else (strings, bools, None, sequences), ValueError for an int too
    large for a float. NaN and infinities pass; callers that need a finite value check it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a number, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r:.60})")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an int too large for a float") from None


def check_finite(value: Any, what: str) -> float:
    """``float(value)``, or ValueError when it is NaN or infinite (never turned into a silent zero)."""
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"the reward model returned {out} for {what}")
    return out


def check_batch(prompts: Any, responses: Any, completion_ids: Any) -> None:
    """The batch checks every credit provider makes: lists of equal length."""
    for name, seq in (("prompts", prompts), ("responses", responses)):
        if isinstance(seq, (str, bytes, torch.Tensor)) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list (one entry per response), got {type(seq).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if completion_ids is not None and len(completion_ids) != len(responses):
        raise ValueError(f"got {len(completion_ids)} completion_ids but {len(responses)} responses")


def check_tolerance(value: Any, name: str = "tol") -> float:
    """A tolerance: a finite real number > 0, as a float. TypeError for a non-number (bools included),
    ValueError for zero, a negative number, NaN or an infinity."""
    out = as_real(value, name)
    if not math.isfinite(out) or out <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {out}")
    return out
