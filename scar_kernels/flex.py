"""FlexAttention over a packed prefix tree, with its ``BlockMask`` built from ``horizon`` in O(N).

``torch.nn.attention.flex_attention`` takes a ``BlockMask``: per tile of ``BLOCK_Q`` queries by ``BLOCK_KV``
keys, whether the tile is empty (skipped), full (computed without a mask) or partial (computed, the
``mask_mod`` applied to each element). ``create_block_mask`` finds this by evaluating the ``mask_mod`` on all
``N x (P + N)`` pairs. The layout of :mod:`scar_kernels.layout` makes that unnecessary.

The keys of a pack are the cached prefix (``P`` keys, every query sees them) followed by the ``N`` packed keys.
Each key ``j`` of that sequence is visible to one interval of queries ``[lo[j], hi[j])``: ``[0, N)`` for a
prefix key, ``[t, horizon[t])`` for packed key ``t``. ``lo`` never decreases along the keys. So, for the query
block ``[q0, q1)`` and the key block ``[k0, k1)``:

- the tile is *visible* iff some key of the block with ``lo[j] < q1`` has ``hi[j] > q0``; the keys with
  ``lo[j] < q1`` are a prefix of the block (``lo`` is sorted), so the test is one look-up in the running
  maximum of ``hi`` within each key block;
- the tile is *full* iff ``max(lo) = lo[k1 - 1] <= q0`` and ``min(hi) >= q1`` over the block.

Both are exact, so the tables equal what ``create_block_mask`` finds with ``separate_full_blocks=True``
(padding rows and columns count as masked there too, so a ragged last block is never full), at
``O(P + N)`` work plus one entry per tile. The ``mask_mod`` of the partial tiles is the same rule,
``lo[kv] <= q < hi[kv]``, reading two int32 vectors.

:func:`flex_tree_attention` runs ``flex_attention`` with such a mask: ``q [H, N, D]``, ``k``/``v``
``[Hkv, N, D]`` (grouped-query attention through ``enable_gqa``), optional ``prefix_k``/``prefix_v``
``[Hkv, P, D]``, like :func:`scar_kernels.tree_attention.tree_attention`. Non-finite keys follow the same
contract as the other tree-attention implementations: such a key is zeroed before the call (so it reaches
no query that may not see it) and the queries that may see it are set to NaN afterwards.

``flex_attention`` runs compiled (``torch.compile(flex_attention, dynamic=True)``, one compiled function per
process, cached here) or eager (an unfused reference that materialises the ``N x (P + N)`` scores).
:data:`COMPILE_BY_DEVICE` says which one each device type runs by default; ``bench/RESULTS.md`` has the
measurement behind it.
"""

from __future__ import annotations

import functools
import shutil
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from scar_kernels.layout import check_horizon, check_window
from scar_kernels.tree_attention import check_softcap, sink_logits, validate_tree_attention_inputs

__all__ = [
    "COMPILE_BY_DEVICE",
    "DEFAULT_BLOCK_SIZE",
    "flex_unavailable_reason",
    "key_intervals",
    "key_positions",
    "tree_block_tables",
    "tree_block_mask",
    "flex_tree_attention",
    "flex_attention_function",
]

DEFAULT_BLOCK_SIZE = 128
"""FlexAttention's own default tile (queries and keys)."""

COMPILE_BY_DEVICE: dict[str, bool] = {"cpu": True, "cuda": True}
"""Whether :func:`flex_tree_attention` compiles ``flex_attention`` by default, per device type."""

_COMPILED: dict[str, Callable[..., Any]] = {}
_COMPILE_LOCK = threading.Lock()


def _flex_module() -> Any:
    """``torch.nn.attention.flex_attention``, or None when this torch has none."""
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError:
        return None
    return module if hasattr(module, "BlockMask") and hasattr(module.BlockMask, "from_kv_blocks") else None


def flex_unavailable_reason(device: str | torch.device = "cpu", compiled: bool | None = None) -> str | None:
    """Why FlexAttention cannot run on ``device`` (compiled or eager; None: the device's default), or None.

    Checks what can be checked without compiling: the module exists in this torch, the device type is CPU or
    CUDA, and a compiled run has its code generator's tools (a C++ compiler on CPU, Triton on CUDA).
    """
    if _flex_module() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention with BlockMask.from_kv_blocks"
    kind = torch.device(device).type
    if kind not in COMPILE_BY_DEVICE:
        return f"FlexAttention runs on CPU or CUDA, not on {kind!r}"
    if compiled is None:
        compiled = COMPILE_BY_DEVICE[kind]
    if compiled and kind == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "compiled FlexAttention on CPU needs a C++ compiler (none of c++, g++, clang++ is on PATH)"
    if compiled and kind == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "compiled FlexAttention on CUDA needs Triton, which is not importable"
    return None


# --------------------------------------------------------------------------------------------------
# The block mask
# --------------------------------------------------------------------------------------------------
def _block_sizes(block_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        block_q = block_kv = block_size
    elif (
        isinstance(block_size, tuple)
        and len(block_size) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in block_size)
    ):
        block_q, block_kv = block_size
    else:
        raise TypeError(f"block_size must be an int or a pair of ints, got {block_size!r}")
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be >= 1, got {block_size!r}")
    return block_q, block_kv


def key_intervals(horizon: Tensor, prefix_len: int = 0, padded_len: int | None = None) -> tuple[Tensor, Tensor]:
    """The query interval ``[lo[j], hi[j])`` that sees key ``j`` of ``prefix ⊕ pack``, as int32 vectors.

    Prefix keys: ``[0, N)``; packed key ``t``: ``[t, horizon[t])``. Keys past ``prefix_len + N`` (up to
    ``padded_len``) get the empty interval ``[N, 0)``, so a ``mask_mod`` may read them.
    """
    n = horizon.shape[0]
    total = prefix_len + n
    padded_len = total if padded_len is None else padded_len
    if padded_len < total:
        raise ValueError(f"padded_len {padded_len} < prefix_len + N = {total}")
    device = horizon.device
    lo = torch.full((padded_len,), n, dtype=torch.int32, device=device)
    hi = torch.zeros(padded_len, dtype=torch.int32, device=device)
    lo[:prefix_len] = 0
    hi[:prefix_len] = n
    lo[prefix_len:total] = torch.arange(n, dtype=torch.int32, device=device)
    hi[prefix_len:total] = horizon.to(torch.int32)
    return lo, hi


def key_positions(positions: Tensor, prefix_len: int = 0, padded_len: int | None = None) -> Tensor:
    """The position of each key of ``prefix ⊕ pack`` (int32): ``j`` for prefix key ``j``, ``positions[t]`` for
    packed key ``t``; keys past ``prefix_len + N`` (up to ``padded_len``) get the largest int32, so that no
    window reaches them."""
    n = positions.shape[0]
    total = prefix_len + n
    padded_len = total if padded_len is None else padded_len
    out = torch.full((padded_len,), torch.iinfo(torch.int32).max, dtype=torch.int32, device=positions.device)
    out[:prefix_len] = torch.arange(prefix_len, dtype=torch.int32, device=positions.device)
    out[prefix_len:total] = positions.to(torch.int32)
    return out


def _block_range(values: Tensor, block: int, n_blocks: int, fill: int) -> tuple[Tensor, Tensor]:
    """Per block of ``block`` entries, the (min, max) of ``values`` (int64), padding with ``fill`` ignored."""
    padded = torch.full((n_blocks * block,), fill, dtype=torch.int64, device=values.device)
    padded[: values.shape[0]] = values.to(torch.int64)
    blocks = padded.view(n_blocks, block)
    real = blocks != fill
    big = torch.iinfo(torch.int64).max
    lo = blocks.masked_fill(~real, big).amin(dim=1)
    hi = blocks.masked_fill(~real, -big).amax(dim=1)
    return lo, hi


def tree_block_tables(
    horizon: Tensor,
    prefix_len: int = 0,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    *,
    positions: Tensor | None = None,
    window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Which tiles of a pack's attention are partial and which are full, without an ``N x N`` mask.

    Args:
        horizon: int ``[N]``, the pack's horizons (``k < horizon[k] <= N``).
        prefix_len: cached-prefix keys ``P`` placed before the packed keys, visible to every query.
        block_size: tile size, or ``(BLOCK_Q, BLOCK_KV)``.
        positions, window: a sliding window (tokens) and each packed token's position (prefix key ``j`` at
            position ``j``): a pair is visible only if the query's position minus the key's is below the
            window. A tile is then kept when the window may reach it (from its blocks' position ranges), so
            with a window ``partial`` can hold tiles whose pairs are all masked; ``full`` stays exact.

    Returns:
        ``(partial, full)``, bool ``[ceil(N / BLOCK_Q), ceil((P + N) / BLOCK_KV)]``: ``full`` where every
        query of the tile sees every key of it, ``partial`` where some but not all pairs are visible; a tile
        in neither is empty. A tile holding padding (past ``N`` queries or ``P + N`` keys) is never full.
    """
    check_horizon(horizon, prefix_len, values=True)
    n_window = check_window(window, positions, horizon.shape[0])
    block_q, block_kv = _block_sizes(block_size)
    n = horizon.shape[0]
    total = prefix_len + n
    n_qb = -(-n // block_q)
    n_kb = -(-total // block_kv)
    device = horizon.device
    lo, hi = key_intervals(horizon, prefix_len, n_kb * block_kv)
    lo64, hi_blocks = lo.to(torch.int64), hi.to(torch.int64).view(n_kb, block_kv)
    running_max = hi_blocks.cummax(dim=1).values  # [n_kb, block_kv]
    block_min_hi = hi_blocks.amin(dim=1)  # [n_kb]
    block_max_lo = lo64.view(n_kb, block_kv)[:, -1]  # lo never decreases (padding holds N)

    q0 = torch.arange(n_qb, device=device, dtype=torch.int64) * block_q
    q1 = torch.clamp(q0 + block_q, max=n)  # the block's real queries
    k0 = torch.arange(n_kb, device=device, dtype=torch.int64) * block_kv
    # Keys with lo < q1 form a prefix of the sorted lo; how many of them fall in each key block.
    below = torch.searchsorted(lo64, q1, right=False)  # [n_qb]
    count = (below[:, None] - k0[None, :]).clamp(min=0, max=block_kv)  # [n_qb, n_kb]
    last = (count - 1).clamp(min=0)
    reach = running_max.gather(1, last.t().contiguous()).t()  # max hi over those keys: [n_qb, n_kb]
    visible = (count > 0) & (reach > q0[:, None])
    # Full: every key sees the whole (padded) query block. hi <= N, so a ragged last block is never full.
    full = visible & (block_max_lo[None, :] <= q0[:, None]) & (block_min_hi[None, :] >= (q0 + block_q)[:, None])
    if n_window:
        assert positions is not None
        pad = torch.iinfo(torch.int32).max
        q_min, q_max = _block_range(positions, block_q, n_qb, pad)
        k_min, k_max = _block_range(key_positions(positions, prefix_len), block_kv, n_kb, pad)
        visible &= (q_min[:, None] - k_max[None, :]) < n_window
        full &= visible & ((q_max[:, None] - k_min[None, :]) < n_window)
    return visible & ~full, full


def _tree_mask_mod(lo: Tensor, hi: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """FlexAttention ``mask_mod`` of a pack: key ``kv_idx`` is visible to ``q_idx`` iff ``lo <= q < hi``."""
    return (lo[kv_idx] <= q_idx) & (q_idx < hi[kv_idx])


def _windowed_tree_mask_mod(
    lo: Tensor,
    hi: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    window: Tensor,
    b: Tensor,
    h: Tensor,
    q_idx: Tensor,
    kv_idx: Tensor,
) -> Tensor:
    """:func:`_tree_mask_mod` within a sliding window: also ``q_pos[q] - k_pos[kv] < window``."""
    return (lo[kv_idx] <= q_idx) & (q_idx < hi[kv_idx]) & (q_pos[q_idx] - k_pos[kv_idx] < window)


def _ordered(table: Tensor) -> tuple[Tensor, Tensor]:
    """Row counts and column indices (visible ones first, ascending) of a bool tile table, batched [1, 1]."""
    as_int = table.to(torch.int32)
    counts = as_int.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(as_int, dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None].contiguous(), indices[None, None].contiguous()


def tree_block_mask(
    horizon: Tensor,
    prefix_len: int = 0,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    *,
    positions: Tensor | None = None,
    window: int | None = None,
) -> Any:
    """The FlexAttention ``BlockMask`` of a pack (queries ``N``, keys ``prefix_len + N``), built in O(N).

    Same arguments as :func:`tree_block_tables` (with ``window``, the ``mask_mod`` also applies the sliding
    window by position); the mask lives on ``horizon``'s device.

    Raises:
        RuntimeError: this torch has no FlexAttention.
        TypeError / ValueError: a malformed horizon, prefix length or block size.
    """
    module = _flex_module()
    if module is None:
        raise RuntimeError(flex_unavailable_reason("cpu"))
    partial, full = tree_block_tables(horizon, prefix_len, block_size, positions=positions, window=window)
    block_q, block_kv = _block_sizes(block_size)
    n = horizon.shape[0]
    lo, hi = key_intervals(horizon, prefix_len, partial.shape[1] * block_kv)
    mask_mod: Callable[..., Tensor] = functools.partial(_tree_mask_mod, lo, hi)
    if window is not None:
        assert positions is not None
        q_pos = torch.zeros(partial.shape[0] * block_q, dtype=torch.int32, device=horizon.device)
        q_pos[:n] = positions.to(torch.int32)
        k_pos = key_positions(positions, prefix_len, partial.shape[1] * block_kv)
        limit = torch.tensor(check_window(window, positions, n), dtype=torch.int32, device=horizon.device)
        mask_mod = functools.partial(_windowed_tree_mask_mod, lo, hi, q_pos, k_pos, limit)
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return module.BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(block_q, block_kv),
        mask_mod=mask_mod,
        seq_lengths=(n, prefix_len + n),
    )


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
def flex_attention_function(compiled: bool) -> Callable[..., Any]:
    """``flex_attention`` itself, or compiled once per process (``dynamic=True``: one graph for every pack
    length); every compiled call of this module goes through the one cached compiled function."""
    module = _flex_module()
    if module is None:
        raise RuntimeError(flex_unavailable_reason("cpu"))
    if not compiled:
        return module.flex_attention
    with _COMPILE_LOCK:
        fn = _COMPILED.get("flex")
        if fn is None:
            fn = torch.compile(module.flex_attention, dynamic=True)
            _COMPILED["flex"] = fn
    return fn


def _poisoned_queries(
    bad: Tensor, horizon: Tensor, prefix_len: int, positions: Tensor | None = None, window: int | None = None
) -> Tensor:
    """bool ``[Hkv, N]``: the queries that see a bad key (``bad [Hkv, P + N]``), by difference arrays; with a
    sliding window, from the visibility of the bad keys' columns only."""
    n = horizon.shape[0]
    if window is not None:
        assert positions is not None
        columns = bad.any(dim=0).nonzero()[:, 0]  # keys bad in some head
        query = torch.arange(n, device=bad.device)[:, None]
        lo, hi = (ends.to(torch.int64)[columns] for ends in key_intervals(horizon, prefix_len))
        k_pos = key_positions(positions, prefix_len).to(torch.int64)[columns]
        sees = (lo <= query) & (query < hi) & (positions.to(torch.int64)[:, None] - k_pos < window)  # [N, cols]
        return (sees[None].float() @ bad[:, columns, None].float())[..., 0] > 0  # counts, exact in fp32
    prefix_bad = bad[:, :prefix_len].any(dim=1, keepdim=True)  # [Hkv, 1]
    tree_bad = bad[:, prefix_len:].to(torch.int32)  # [Hkv, N]
    delta = torch.zeros(bad.shape[0], n + 1, dtype=torch.int32, device=bad.device)
    delta[:, :n] += tree_bad
    delta.scatter_add_(1, horizon.to(torch.int64).expand(bad.shape[0], n), -tree_bad)
    return (delta[:, :n].cumsum(dim=1) > 0) | prefix_bad


def _softcap_mod(softcap: float, device: torch.device) -> Callable[..., Tensor]:
    """The ``score_mod`` of a logit soft-cap (``flex_attention`` applies the scale before it).

    The cap is captured as a tensor: the compiled ``flex_attention`` (``dynamic=True``) would turn a captured
    Python float into a symbolic scalar that its lowering does not take.
    """
    cap = torch.tensor(softcap, dtype=torch.float32, device=device)

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return torch.tanh(score / cap) * cap

    return score_mod


def _lse_request() -> dict[str, Any]:
    """The ``flex_attention`` keyword that makes it also return the log-sum-exp of each query's scores."""
    module = _flex_module()
    aux = getattr(module, "AuxRequest", None)
    return {"return_aux": aux(lse=True)} if aux is not None else {"return_lse": True}


def _with_sinks(out: Tensor, lse: Tensor, sinks: Tensor) -> Tensor:
    """``out`` (``[H, N, D]``, normalised over the keys) renormalised with one more softmax logit per row, the
    sink (``[H, N]``), whose value row is zero: ``out * exp(lse) / (exp(lse) + exp(sink))``."""
    return out * torch.sigmoid(lse.float() - sinks)[..., None]


def flex_tree_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    horizon: Tensor,
    scale: float | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    positions: Tensor | None = None,
    window: int | None = None,
    *,
    block_mask: Any = None,
    compiled: bool | None = None,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
) -> Tensor:
    """Tree attention through ``flex_attention``: query ``i`` sees packed key ``j`` iff ``j <= i < horizon[j]``.

    Args:
        q: ``[H, N, D]``; ``k``, ``v``: ``[Hkv, N, D]`` (``H % Hkv == 0``), float32/float16/bfloat16.
        horizon: int32 ``[N]``.
        scale: score scale, default ``D ** -0.5``.
        prefix_k, prefix_v: optional cached-prefix keys/values ``[Hkv, P, D]`` visible to every query.
        softcap: logit soft-cap, ``softcap * tanh(score / softcap)`` as a ``score_mod`` (None: none).
        sinks: attention-sink logits ``[H]`` or ``[H, N]`` (None: none). A ``score_mod`` cannot add a softmax
            term, so ``flex_attention`` also returns each row's log-sum-exp and the output is renormalised
            with the sink afterwards.
        positions, window: a sliding window (tokens) and each packed token's position in its own sequence
            (prefix key ``j`` at position ``j``), as in :func:`scar_kernels.ops.tree_attention`.
        block_mask: the pack's mask from :func:`tree_block_mask` (same ``horizon``, ``P``, ``positions`` and
            ``window``), so that the layers of one forward share it; built here when None.
        compiled: run the compiled ``flex_attention`` (None: :data:`COMPILE_BY_DEVICE` of ``q``'s device).
        block_size: the tile size when the block mask is built here.

    Returns:
        ``[H, N, D]`` in ``q``'s dtype.

    Raises:
        RuntimeError: FlexAttention is unavailable (:func:`flex_unavailable_reason`) or failed to compile.
        TypeError / ValueError: inputs that break the layout contract, or a block mask of another shape.
    """
    validate_tree_attention_inputs(
        q,
        k,
        v,
        horizon,
        prefix_k,
        prefix_v,
        sinks=sinks,
        positions=positions,
        window=window,
        check_values=block_mask is None,
    )
    cap = check_softcap(softcap)
    kind = q.device.type
    if compiled is None:
        compiled = COMPILE_BY_DEVICE.get(kind, False)
    reason = flex_unavailable_reason(q.device, compiled)
    if reason is not None:
        raise RuntimeError(f"flex_tree_attention: {reason}")
    if sinks is not None and compiled and kind == "cpu":
        raise RuntimeError(
            "flex_tree_attention: attention sinks need flex_attention's log-sum-exp, which the compiled "
            "flex_attention on CPU does not return; run it eager (compiled=False) or use the tree-attention kernel"
        )
    if window is not None and compiled and kind == "cpu":
        raise RuntimeError(
            "flex_tree_attention: a sliding window reads each query's position in the mask_mod, which the "
            "compiled flex_attention on CPU fails to generate code for; run it eager (compiled=False) or use the "
            "tree-attention kernel"
        )
    heads, n, dim = q.shape
    kv_heads = k.shape[0]
    prefix_len = prefix_k.shape[1] if prefix_k is not None else 0
    if block_mask is None:
        block_mask = tree_block_mask(horizon, prefix_len, block_size, positions=positions, window=window)
    elif tuple(block_mask.seq_lengths) != (n, prefix_len + n):
        raise ValueError(
            f"flex_tree_attention: block_mask is for {tuple(block_mask.seq_lengths)} (queries, keys), the inputs "
            f"have {n} queries and {prefix_len + n} keys"
        )
    if n == 0:
        return torch.empty_like(q)
    keys, values = k, v
    if prefix_k is not None and prefix_v is not None and prefix_len:
        keys, values = torch.cat([prefix_k, k], dim=1), torch.cat([prefix_v, v], dim=1)
    # One cheap reduction first: a sum is finite unless some element is not (or the sum overflows, which only
    # sends this call down the exact per-key check below).
    total = keys.sum(dtype=torch.float32) + values.sum(dtype=torch.float32)
    has_bad = not bool(torch.isfinite(total))
    bad = torch.zeros(0, dtype=torch.bool)
    if has_bad:
        bad = ~(torch.isfinite(keys).all(dim=-1) & torch.isfinite(values).all(dim=-1))  # [Hkv, P + N]
        has_bad = bool(bad.any())
    if has_bad:
        keys = keys.masked_fill(bad[..., None], 0.0)
        values = values.masked_fill(bad[..., None], 0.0)
    fn = flex_attention_function(compiled)
    try:
        with warnings.catch_warnings():
            # The eager run is chosen on purpose here; torch warns that it is unfused.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            result = fn(
                q[None],
                keys[None],
                values[None],
                block_mask=block_mask,
                score_mod=_softcap_mod(cap, q.device) if cap else None,
                scale=dim**-0.5 if scale is None else float(scale),
                enable_gqa=heads != kv_heads,
                **(_lse_request() if sinks is not None else {}),
            )
    except Exception as exc:
        if not compiled:
            raise
        raise RuntimeError(
            f"flex_tree_attention: compiled flex_attention failed on {kind} ({type(exc).__name__}: {exc}); "
            "run it eager (compiled=False) or use the tree-attention kernel"
        ) from exc
    if sinks is None:
        out = result[0]
    else:
        out, aux = result
        lse = aux.lse if hasattr(aux, "lse") else aux
        sink = sink_logits(sinks, heads, n)
        assert sink is not None
        out = _with_sinks(out[0], lse[0], sink)
    if has_bad:
        poisoned = _poisoned_queries(bad, horizon, prefix_len, positions, window).repeat_interleave(
            heads // kv_heads, dim=0
        )
        out = out.masked_fill(poisoned[..., None], float("nan"))
    return out.to(q.dtype)
