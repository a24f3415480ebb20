"""The dense additive attention mask of a pack, written by a Triton kernel on the GPU.

An attention implementation without tree support takes the pack's mask as a float additive
``[n, prefix_len + n]`` matrix: 0 where query row ``q`` may attend key column ``prefix_len + k``
(``k <= q < horizon[k]``), ``finfo(dtype).min`` elsewhere, the cached-prefix columns always 0. The torch
reference is :func:`scar_kernels.layout.additive_mask`; :func:`scar_kernels.ops.dense_mask` dispatches.

Triton is imported on first launch, so this module imports without it. On CPU the kernel runs only under
``TRITON_INTERPRET=1`` (set before Triton is imported).
"""

from __future__ import annotations

import os

import torch

__all__ = ["dense_mask", "MASK_DTYPES"]

MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Mask dtypes the kernel writes."""

_KERNEL = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def _dense_mask(HOR, OUT, n, P, neg, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
            # One (query block, key block) tile of the [n, P + n] mask; prefix columns are always visible.
            qb = tl.program_id(0)
            kb = tl.program_id(1)
            qi = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
            col = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            ki = col - P
            hor = tl.load(HOR + ki, mask=(ki >= 0) & (ki < n), other=0)
            vis = (ki[None, :] < 0) | ((ki[None, :] <= qi[:, None]) & (qi[:, None] < hor[None, :]))
            val = tl.where(vis, 0.0, neg)
            ok = (qi[:, None] < n) & (col[None, :] < P + n)
            tl.store(OUT + qi[:, None].to(tl.int64) * (P + n) + col[None, :], val.to(OUT.dtype.element_ty), mask=ok)

        _KERNEL = _dense_mask
    return _KERNEL


def dense_mask(horizon: torch.Tensor, prefix_len: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive mask ``[n, prefix_len + n]`` of ``horizon`` (int32 ``[n]``), written by the Triton kernel.

    Same values as :func:`scar_kernels.layout.additive_mask`. The tensor must be on CUDA, or on the CPU
    under ``TRITON_INTERPRET=1``.

    Raises:
        TypeError / ValueError: a malformed horizon, prefix length or dtype, or a device Triton cannot use.
    """
    if not isinstance(horizon, torch.Tensor) or horizon.dtype != torch.int32 or horizon.dim() != 1:
        raise TypeError("dense_mask: horizon must be a 1-D int32 tensor")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"dense_mask: prefix_len must be an int >= 0, got {prefix_len!r}")
    if dtype not in MASK_DTYPES:
        raise TypeError(f"dense_mask (Triton): dtype must be one of {MASK_DTYPES}, got {dtype}")
    if horizon.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"dense_mask (Triton): horizon is on {horizon.device}; the kernel needs CUDA "
            "(or TRITON_INTERPRET=1 set before importing triton)"
        )
    n = horizon.shape[0]
    out = torch.empty(n, prefix_len + n, dtype=dtype, device=horizon.device)
    if n == 0:
        return out
    block_q, block_k = 32, 64
    grid = (-(-n // block_q), -(-(prefix_len + n) // block_k))
    _kernel()[grid](horizon.contiguous(), out, n, prefix_len, torch.finfo(dtype).min, BLOCK_Q=block_q, BLOCK_K=block_k)
    return out
