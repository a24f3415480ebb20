"""Loader and checked wrappers for the optional compiled extension ``scar._C``.

The extension (``csrc/``, built by ``setup.py``) provides the fast CPU paths: the packed prefix-tree
layout builder (``build_pack``) and flash-style CPU tree attention (``tree_attention``). Everything
works without it; :func:`load` then returns ``None`` and warns once which paths are slower.
"""
from __future__ import annotations

import warnings
from types import ModuleType

import torch

__all__ = ["load", "has_extension", "build_pack", "tree_attention", "SLOWER_WITHOUT_EXTENSION"]

SLOWER_WITHOUT_EXTENSION = (
    "building packed coalition layouts (scar.trie.build_pack falls back to the pure-Python "
    "build_pack_reference) and CPU tree attention (falls back to a torch implementation with a dense "
    "N x N mask)"
)

_NOT_LOADED = object()
_module: object = _NOT_LOADED
_warned = False


def load() -> ModuleType | None:
    """Return the compiled module ``scar._C``, or None when it is not built (warns once, naming what is slower)."""
    global _module, _warned
    if _module is _NOT_LOADED:
        try:
            from scar import _C  # type: ignore[attr-defined]

            _module = _C
        except ImportError as exc:
            _module = None
            if not _warned:
                _warned = True
                warnings.warn(
                    f"scar: the C++ extension scar._C is not available ({exc}); slower paths are used for "
                    f"{SLOWER_WITHOUT_EXTENSION}. Build it with `python setup.py build_ext --inplace` or "
                    "`pip install --no-build-isolation -e .`.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _module  # type: ignore[return-value]


def has_extension() -> bool:
    """True when the compiled extension ``scar._C`` is importable."""
    return load() is not None


def _require() -> ModuleType:
    module = load()
    if module is None:
        raise RuntimeError(
            f"the C++ extension scar._C is not built; it is needed for {SLOWER_WITHOUT_EXTENSION}"
        )
    return module


def _check_tensor(name: str, t: object, dtypes: tuple[torch.dtype, ...], dim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")
    return t


def build_pack(
    coalitions: torch.Tensor,
    owner: torch.Tensor,
    seg_offsets: torch.Tensor,
    seg_player: torch.Tensor,
    seg_len: torch.Tensor,
    prompt_len: torch.Tensor,
    suffix_len: torch.Tensor,
    cached_len: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The packed prefix-tree layout, computed by the C++ builder (same contract as ``scar.trie.build_pack_reference``).

    Args:
        coalitions: bool[C, n_max]; owner: int64[C]; seg_offsets: int64[R+1]; seg_player, seg_len: int64[S];
            prompt_len, suffix_len, cached_len: int64[R]. All CPU and contiguous.

    Returns:
        (gather, position_ids, horizon (int32), readout, inverse, tree, node_start, node_len, node_parent,
        node_segment).

    Raises:
        TypeError / ValueError: malformed input (shapes, dtypes, ranges); RuntimeError: extension not built.
    """
    _check_tensor("coalitions", coalitions, (torch.bool,), 2)
    names = ("owner", "seg_offsets", "seg_player", "seg_len", "prompt_len", "suffix_len", "cached_len")
    vectors = (owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len)
    for name, t in zip(names, vectors):
        _check_tensor(name, t, (torch.int64,), 1)
    return tuple(_require().build_pack(coalitions, *vectors))


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    horizon: torch.Tensor,
    scale: float | None = None,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    *,
    block_q: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """CPU tree attention: ``softmax(q k^T * scale + mask) v``; query i sees key j iff ``j <= i < horizon[j]``.

    Args:
        q: [H, N, D] float32/float16/bfloat16 (half types are computed in fp32, returned in their dtype).
        k, v: [Hkv, N, D], same dtype; H must be a multiple of Hkv (query head h uses kv head h // (H // Hkv)).
        horizon: int32[N] with j < horizon[j] <= N (``scar.trie`` layouts provide it).
        scale: score scale, default ``D ** -0.5``.
        prefix_k, prefix_v: optional [Hkv, P, D] cached prefix keys/values visible to every query.
        block_q, block_k: query / key block sizes of the flash-style loop (tuning only).

    Returns:
        [H, N, D] tensor of q's dtype.

    Raises:
        TypeError / ValueError: malformed input; RuntimeError: extension not built.
    """
    floats = (torch.float32, torch.float16, torch.bfloat16)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, floats, 3)
    _check_tensor("horizon", horizon, (torch.int32,), 1)
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("give both prefix_k and prefix_v or neither")
    if prefix_k is not None:
        _check_tensor("prefix_k", prefix_k, floats, 3)
        _check_tensor("prefix_v", prefix_v, floats, 3)
    if k.shape != v.shape or k.shape[1:] != q.shape[1:]:
        raise ValueError(
            f"k and v must be [Hkv, N, D] matching q {tuple(q.shape)}, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if horizon.numel() != q.shape[1]:
        raise ValueError(f"horizon must have {q.shape[1]} entries (one per token), got {horizon.numel()}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _require().tree_attention(
        q, k, v, horizon, float(scale), prefix_k, prefix_v, block_q=block_q, block_k=block_k
    )
