"""The kernels' one entry point: ``torch.library`` ops and the place that says which implementation runs.

- ``scar::tree_attention(q, k, v, horizon, scale, prefix_k=None, prefix_v=None, softcap=None, sinks=None) ->
  out``: attention where query ``i`` sees packed key ``j`` iff ``j <= i < horizon[j]``, plus every cached-prefix
  key, with an optional logit soft-cap (``softcap * tanh(score / softcap)``) and optional attention sinks (one
  more softmax logit per head, or per head and query, with a zero value row). CPU: the
  C++ kernel of ``scar_kernels._C`` (else the dense torch reference); CUDA: the Triton kernel. Forward
  only (no autograd formula): it serves reward-model scoring under ``torch.no_grad()``.
- ``scar::build_pack(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len,
  cached_len) -> 10 tensors``: the prefix-tree pack of :mod:`scar_kernels.layout`. The trie (dedupe,
  hashing, preorder) is sequential work, so the op runs on CPU tensors only: the C++ builder, else the
  Python reference. Output sizes depend on the data; the fake implementation allocates them as unbacked
  symbolic sizes.
- ``scar::dense_mask(horizon, prefix_len, dtype) -> mask``: the float additive mask of a pack for
  attention implementations without tree support. CPU: torch; CUDA: the Triton kernel.

Besides the ops, the same tree attention through PyTorch's FlexAttention (:mod:`scar_kernels.flex`):
:func:`flex_block_mask` builds a pack's ``BlockMask`` from ``horizon`` in O(N) and
:func:`flex_tree_attention` runs ``flex_attention`` with it (compiled or eager, see
:data:`~scar_kernels.flex.COMPILE_BY_DEVICE`). It is a plain function, not a ``torch.library`` op.
Which of the two is faster on a device is measured, not assumed: :func:`fastest_tree_attention` times both
on :func:`permutation_pack` (:mod:`scar_kernels.selection` holds the timing and :data:`MEASURE_BY_DEVICE`).

Every op has a fake implementation, so it traces under ``torch.compile(fullgraph=True)`` and passes
``torch.library.opcheck``. The Python functions below are what the library calls; :func:`implementation`
names what each op runs on a device; :class:`~scar_kernels.layout.PackLayout` (what ``build_pack`` returns)
and :func:`~scar_kernels.extension.has_extension` are re-exported, so the library needs no other module of
this package. This module imports without a GPU and without Triton.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from scar_kernels import extension
from scar_kernels.dense_mask import MASK_DTYPES
from scar_kernels.dense_mask import dense_mask as triton_dense_mask
from scar_kernels.extension import has_extension
from scar_kernels.flex import COMPILE_BY_DEVICE, DEFAULT_BLOCK_SIZE, flex_unavailable_reason, tree_block_mask
from scar_kernels.flex import flex_tree_attention as _flex_tree_attention
from scar_kernels.layout import BUILD_PACK_FIELDS, PackLayout, additive_mask, build_pack_reference, check_window
from scar_kernels.selection import (
    AGREEMENT,
    MEASURE_BY_DEVICE,
    AttentionChoice,
    median_ms,
    permutation_prefixes,
    time_candidates,
)
from scar_kernels.tree_attention import check_softcap, tree_attention_reference, validate_tree_attention_inputs
from scar_kernels.tree_attention import tree_attention as triton_tree_attention

__all__ = [
    "MEASURE_BY_DEVICE",
    "OPS",
    "AttentionChoice",
    "PackLayout",
    "build_pack",
    "dense_mask",
    "fastest_tree_attention",
    "flex_block_mask",
    "flex_tree_attention",
    "flex_unavailable_reason",
    "has_extension",
    "implementation",
    "median_ms",
    "permutation_pack",
    "tree_attention",
    "triton_available",
]

OPS = ("tree_attention", "build_pack", "dense_mask")
FLEX = "flex_attention"
"""The name :func:`implementation` takes for the FlexAttention path (not a ``torch.library`` op)."""


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (a compiled GPU backend, or the CPU interpreter)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install without a backend
        return False
    return True


def implementation(op: str, device: str | torch.device = "cpu") -> str:
    """What ``op`` runs on ``device``: ``"c++"``, ``"triton"``, ``"torch"`` (reference) or ``"none"``.

    ``op`` is one of :data:`OPS`, or ``"flex_attention"`` (:data:`FLEX`), which answers
    ``"flex-compiled"``, ``"flex-eager"`` or ``"none"`` (:func:`flex_unavailable_reason` says why).

    Raises:
        ValueError: an unknown op name.
    """
    if op == FLEX:
        kind = torch.device(device).type
        if flex_unavailable_reason(device) is not None:
            return "none"
        return "flex-compiled" if COMPILE_BY_DEVICE[kind] else "flex-eager"
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops: {(*OPS, FLEX)}")
    kind = torch.device(device).type
    if kind == "cpu":
        if op == "dense_mask":
            return "torch"
        module = extension.load()
        return "c++" if module is not None and hasattr(module, op) else "torch"
    if kind == "cuda":
        if op == "build_pack":
            return "none"
        return "triton" if triton_available() else "none"
    return "none"


# --------------------------------------------------------------------------------------------------
# scar::tree_attention
# --------------------------------------------------------------------------------------------------
def _tree_attention_cpu_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    horizon: Tensor,
    scale: float,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    positions: Tensor | None = None,
    window: int | None = None,
) -> Tensor:
    validate_tree_attention_inputs(
        q, k, v, horizon, prefix_k, prefix_v, sinks=sinks, positions=positions, window=window
    )
    cap = check_softcap(softcap)
    if implementation("tree_attention", "cpu") == "c++":
        module = extension.load()
        assert module is not None
        return module.tree_attention(
            q,
            k,
            v,
            horizon,
            float(scale),
            prefix_k,
            prefix_v,
            softcap=cap,
            sinks=sinks,
            positions=positions,
            window=check_window(window, positions, q.shape[1]),
        )
    return tree_attention_reference(q, k, v, horizon, scale, prefix_k, prefix_v, softcap, sinks, positions, window)


_tree_attention_cpu = torch.library.custom_op("scar::tree_attention", mutates_args=(), device_types="cpu")(
    _tree_attention_cpu_kernel
)


@_tree_attention_cpu.register_kernel("cuda")
def _tree_attention_cuda(
    q, k, v, horizon, scale, prefix_k=None, prefix_v=None, softcap=None, sinks=None, positions=None, window=None
):
    return triton_tree_attention(q, k, v, horizon, scale, prefix_k, prefix_v, softcap, sinks, positions, window)


@_tree_attention_cpu.register_fake
def _tree_attention_fake(
    q, k, v, horizon, scale, prefix_k=None, prefix_v=None, softcap=None, sinks=None, positions=None, window=None
):
    validate_tree_attention_inputs(
        q, k, v, horizon, prefix_k, prefix_v, sinks=sinks, positions=positions, window=window, check_values=False
    )
    check_softcap(softcap)
    return torch.empty_like(q)


def tree_attention(
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
) -> Tensor:
    """Tree attention through the ``scar::tree_attention`` op.

    Args:
        q: ``[H, N, D]`` float32/float16/bfloat16 (half types are computed in fp32, returned in their dtype).
        k, v: ``[Hkv, N, D]``, same dtype; ``H`` a multiple of ``Hkv`` (query head ``h`` reads kv head
            ``h // (H // Hkv)``).
        horizon: int32 ``[N]`` with ``j < horizon[j] <= N``.
        scale: score scale, default ``D ** -0.5``.
        prefix_k, prefix_v: optional cached-prefix keys/values ``[Hkv, P, D]`` visible to every query.
        softcap: logit soft-cap: each score becomes ``softcap * tanh(score / softcap)`` before the mask
            (None: scores as they are).
        sinks: attention-sink logits, ``[H]`` (one per query head) or ``[H, N]`` (per head and query), any
            float dtype: each softmax row holds one more logit whose value row is zero, so the sink takes
            probability mass without adding to the output; not scaled, not capped (None: no sinks).
        positions: int32 ``[N]``, each packed token's position in its own sequence (cached prefix key ``j``
            sits at position ``j``); read only with ``window``.
        window: sliding window in tokens: query ``i`` also needs ``positions[i] - position(key) < window``
            (None: no window). Keys are ancestors of their queries, so this is the model's own window on each
            coalition's sequence.

    Returns:
        ``[H, N, D]`` in ``q``'s dtype.

    Raises:
        TypeError / ValueError: inputs that break the layout contract, a soft-cap that is not a finite
            number > 0, or a window without positions (or positions without a window).

    Plain CPU tensors outside autograd and ``torch.compile`` (reward-model scoring) call the op's CPU kernel
    function directly: the same function the dispatcher would run, without the round trip through it.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if sinks is not None and not isinstance(sinks, Tensor):  # the dispatcher would only say it cannot cast it
        raise TypeError(f"tree_attention: sinks must be a torch.Tensor, got {type(sinks).__name__}")
    if positions is not None and not isinstance(positions, Tensor):
        raise TypeError(f"tree_attention: positions must be a torch.Tensor, got {type(positions).__name__}")
    tensors = (q, k, v, horizon) + tuple(t for t in (prefix_k, prefix_v, sinks, positions) if t is not None)
    args = (q, k, v, horizon, float(scale), prefix_k, prefix_v, softcap, sinks, positions, window)
    if (
        all(type(t) is Tensor and t.device.type == "cpu" for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
    ):
        return _tree_attention_cpu_kernel(*args)
    return torch.ops.scar.tree_attention(*args)


# --------------------------------------------------------------------------------------------------
# scar::build_pack
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("scar::build_pack", mutates_args=(), device_types="cpu")
def _build_pack_cpu(
    coalitions: Tensor,
    owner: Tensor,
    seg_offsets: Tensor,
    seg_player: Tensor,
    seg_len: Tensor,
    prompt_len: Tensor,
    suffix_len: Tensor,
    cached_len: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len)
    if implementation("build_pack", "cpu") == "c++":
        module = extension.load()
        assert module is not None
        result = tuple(module.build_pack(*(a.contiguous() for a in args)))
    else:
        result = build_pack_reference(*args).as_tuple()
    # Custom-op outputs must be fresh tensors (never aliases of inputs or of each other).
    return tuple(t.clone() for t in result)


@_build_pack_cpu.register_fake
def _build_pack_fake(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len):
    if coalitions.dim() != 2 or coalitions.dtype != torch.bool:
        raise ValueError(
            f"build_pack: coalitions must be a 2-D bool tensor, got {coalitions.dtype} {tuple(coalitions.shape)}"
        )
    if owner.dim() != 1 or owner.shape[0] != coalitions.shape[0]:
        raise ValueError(f"build_pack: owner must have shape [{coalitions.shape[0]}], got {tuple(owner.shape)}")
    ctx = torch.library.get_ctx()
    n_tokens = ctx.new_dynamic_size()
    n_nodes = ctx.new_dynamic_size()
    c = coalitions.shape[0]

    def vec(n, dtype=torch.int64):
        return coalitions.new_empty((n,), dtype=dtype)

    return (
        vec(n_tokens),
        vec(n_tokens),
        vec(n_tokens, torch.int32),
        vec(c),
        vec(c),
        vec(n_tokens),
        vec(n_nodes),
        vec(n_nodes),
        vec(n_nodes),
        vec(n_nodes),
    )


def build_pack(
    coalitions: Tensor,
    owner: Tensor,
    seg_offsets: Tensor,
    seg_player: Tensor,
    seg_len: Tensor,
    prompt_len: Tensor,
    suffix_len: Tensor,
    cached_len: Tensor,
) -> PackLayout:
    """The prefix-tree pack of a forest of coalitions, through the ``scar::build_pack`` op.

    Arguments as :func:`scar_kernels.layout.build_pack_reference` (CPU tensors; ``coalitions`` bool, the
    rest int64). Returns the :class:`~scar_kernels.layout.PackLayout`.

    Raises:
        TypeError / ValueError: malformed input (shapes, dtypes, ranges), from either implementation.
    """
    if not isinstance(coalitions, Tensor):
        raise TypeError(f"coalitions must be a torch.Tensor, got {type(coalitions).__name__}")
    out = torch.ops.scar.build_pack(
        coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len
    )
    if len(out) != len(BUILD_PACK_FIELDS):
        raise RuntimeError(f"build_pack returned {len(out)} outputs, expected {len(BUILD_PACK_FIELDS)}")
    return PackLayout(*out)


# --------------------------------------------------------------------------------------------------
# scar::dense_mask
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("scar::dense_mask", mutates_args=(), device_types="cpu")
def _dense_mask_cpu(horizon: Tensor, prefix_len: int, dtype: torch.dtype) -> Tensor:
    return additive_mask(horizon, prefix_len, dtype=dtype)


@_dense_mask_cpu.register_kernel("cuda")
def _dense_mask_cuda(horizon, prefix_len, dtype):
    if dtype not in MASK_DTYPES or not triton_available():
        return additive_mask(horizon, prefix_len, dtype=dtype)
    return triton_dense_mask(horizon.to(torch.int32), prefix_len, dtype)


@_dense_mask_cpu.register_fake
def _dense_mask_fake(horizon, prefix_len, dtype):
    n = horizon.shape[0]
    return horizon.new_empty((n, prefix_len + n), dtype=dtype)


def dense_mask(horizon: Tensor, prefix_len: int = 0, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The additive mask ``[n, prefix_len + n]`` of a pack (see :func:`scar_kernels.layout.additive_mask`),
    on ``horizon``'s device, through the ``scar::dense_mask`` op."""
    if not isinstance(horizon, Tensor) or horizon.dim() != 1 or horizon.dtype.is_floating_point:
        raise TypeError("dense_mask: horizon must be a 1-D integer tensor")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"dense_mask: prefix_len must be an int >= 0, got {prefix_len!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dense_mask: dtype must be a floating torch dtype, got {dtype!r}")
    return torch.ops.scar.dense_mask(horizon, prefix_len, dtype)


# --------------------------------------------------------------------------------------------------
# FlexAttention
# --------------------------------------------------------------------------------------------------
def flex_block_mask(
    horizon: Tensor,
    prefix_len: int = 0,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    *,
    positions: Tensor | None = None,
    window: int | None = None,
) -> Any:
    """The FlexAttention ``BlockMask`` of a pack (queries ``N``, keys ``prefix_len + N``), built from ``horizon``
    in O(N) work without an ``N x N`` mask (:func:`scar_kernels.flex.tree_block_mask`); with a sliding
    ``window``, applied by the tokens' ``positions``."""
    return tree_block_mask(horizon, prefix_len, block_size, positions=positions, window=window)


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
) -> Tensor:
    """Tree attention through ``flex_attention``, with the arguments and result of :func:`tree_attention`.

    ``block_mask`` (from :func:`flex_block_mask` for the same ``horizon``, prefix length, ``positions`` and
    ``window``) lets the layers of one forward share one mask; ``compiled`` overrides
    :data:`~scar_kernels.flex.COMPILE_BY_DEVICE`. See :func:`scar_kernels.flex.flex_tree_attention`.
    """
    return _flex_tree_attention(
        q,
        k,
        v,
        horizon,
        scale,
        prefix_k,
        prefix_v,
        softcap,
        sinks,
        positions,
        window,
        block_mask=block_mask,
        compiled=compiled,
    )


# --------------------------------------------------------------------------------------------------
# The faster tree attention, measured
# --------------------------------------------------------------------------------------------------
def permutation_pack(
    n_players: int = 16,
    n_pairs: int = 16,
    prompt: int = 257,
    response: int = 64,
    suffix: int = 1,
    cached: bool = True,
    seed: int = 0,
) -> PackLayout:
    """The pack of one response's antithetic permutation prefixes (:func:`.selection.permutation_prefixes`).

    The response's ``response`` tokens are split evenly into ``n_players`` contiguous players; every
    coalition sequence is ``prompt ⊕ kept players ⊕ suffix``. With ``cached`` the prompt's first
    ``prompt - 1`` tokens are not packed (the attention sees them as cached keys, as the scorer runs a
    prompt cache) and its last token is the trie's root; otherwise the whole prompt is the root.
    """
    if response < n_players:
        raise ValueError(f"response ({response} tokens) must hold at least one token per player ({n_players})")
    coalitions = permutation_prefixes(n_players, n_pairs, seed)
    seg_len = torch.full((n_players,), response // n_players, dtype=torch.long)
    seg_len[: response % n_players] += 1
    c = coalitions.shape[0]
    return build_pack(
        coalitions,
        torch.zeros(c, dtype=torch.long),
        torch.tensor([0, n_players]),
        torch.arange(n_players),
        seg_len,
        torch.tensor([prompt]),
        torch.tensor([suffix]),
        torch.tensor([prompt - 1 if cached else 0]),
    )


_CHOICES: dict[tuple, AttentionChoice] = {}
_CHOICES_LOCK = threading.Lock()


def fastest_tree_attention(
    device: str | torch.device,
    dtype: torch.dtype,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    horizon: Tensor | None = None,
    prefix_len: int = 256,
    warmup: int = 2,
    repeats: int = 5,
    timer: Callable[[str, Callable[[], Tensor]], float] | None = None,
    remeasure: bool = False,
) -> AttentionChoice:
    """Time :func:`tree_attention` and :func:`flex_tree_attention` on a scoring-shaped pack; the faster one.

    Args:
        device: where to measure (the model's device).
        dtype: the attention's dtype (float32, float16 or bfloat16).
        num_heads, num_kv_heads, head_dim: the model's attention layout (``num_heads % num_kv_heads == 0``).
        horizon: the pack to time (default: :func:`permutation_pack`'s, 16 players, 16 antithetic pairs,
            response 64 tokens, prompt ``prefix_len + 1`` tokens of which ``prefix_len`` cached).
        prefix_len: cached keys every query sees (random like ``q``/``k``/``v``).
        warmup, repeats: untimed calls first (compilation happens there), then the timed ones (median).
        timer: ``timer(name, fn) -> milliseconds`` replacing the wall-clock timing (tests, or a caller's own
            profiler); it is given each candidate's zero-argument call.
        remeasure: measure again even when an answer is cached.

    Returns:
        The :class:`~scar_kernels.selection.AttentionChoice`; answers for the default ``horizon`` and
        ``timer`` are cached per process by ``(device, dtype, heads, kv heads, head_dim, prefix_len)``.

    Raises:
        ValueError: a head layout, prefix length or dtype the kernels do not take.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if dtype not in AGREEMENT:
        raise ValueError(f"tree attention runs in float32, float16 or bfloat16, not {dtype}")
    if min(num_heads, num_kv_heads, head_dim) < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"need num_heads % num_kv_heads == 0 and positive sizes, got heads={num_heads}, "
            f"kv heads={num_kv_heads}, head_dim={head_dim}"
        )
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    key = (str(device), dtype, num_heads, num_kv_heads, head_dim, prefix_len)
    cacheable = horizon is None and timer is None
    if cacheable and not remeasure:
        with _CHOICES_LOCK:
            if key in _CHOICES:
                return _CHOICES[key]
    if horizon is None:
        horizon = permutation_pack(prompt=prefix_len + 1, cached=True).horizon
    horizon = horizon.to(device=device, dtype=torch.int32)
    n = int(horizon.numel())
    gen = torch.Generator(device="cpu").manual_seed(n)

    def rand(heads: int, length: int) -> Tensor:
        return torch.randn(heads, length, head_dim, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rand(num_heads, n), rand(num_kv_heads, n), rand(num_kv_heads, n)
    pk, pv = (rand(num_kv_heads, prefix_len), rand(num_kv_heads, prefix_len)) if prefix_len else (None, None)
    scale = head_dim**-0.5
    answer = time_candidates(
        lambda: tree_attention(q, k, v, horizon, scale, pk, pv),
        lambda: flex_tree_attention(q, k, v, horizon, scale, pk, pv, block_mask=flex_block_mask(horizon, prefix_len)),
        device,
        dtype,
        n_tokens=n,
        prefix_len=prefix_len,
        flex_reason=flex_unavailable_reason(device),
        warmup=warmup,
        repeats=repeats,
        timer=timer,
    )
    if cacheable:
        with _CHOICES_LOCK:
            _CHOICES[key] = answer
    return answer
