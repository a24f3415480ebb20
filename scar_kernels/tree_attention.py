"""Tree (horizon-masked) flash attention: Triton kernel, launcher and torch reference.

The packed prefix-tree layout (:mod:`scar_kernels.layout`) describes its attention mask with one
integer per token: query ``q`` may attend key ``k`` iff ``k <= q < horizon[k]``, where ``horizon[k]``
is the packed index one past the end of the subtree holding ``k``. Optionally a cached prompt prefix
(``prefix_k``/``prefix_v``, ``[Hkv, P, D]``) is visible to every query, so a prompt whose KV was
computed once is attended without being copied into the packed keys.

Layout: ``q [H, N, D]``, ``k``/``v`` ``[Hkv, N, D]`` (grouped-query attention: query head ``h`` reads
kv head ``h // (H // Hkv)``), ``horizon int32 [N]``; output ``[H, N, D]`` in the dtype of ``q``.

With a logit soft-cap (``softcap``, as Gemma 2 uses), each score becomes ``softcap * tanh(score / softcap)``
before the mask; every implementation applies it the same way. With attention sinks (``sinks``, as gpt-oss
uses), the softmax of query head ``h`` holds one more logit, ``sinks[h]`` (or ``sinks[h, i]`` per query ``i``),
whose value row is zero: it takes probability mass from the keys without adding to the output. The sink logit
is neither scaled nor capped.

The kernel is a flash-attention forward (online softmax over key blocks, fp32 accumulation) that skips
every key block no query of the current query block can see: a key block ``[k0, k1)`` is visible to
the query block ``[q0, q1)`` iff ``k0 <= q1 - 1`` (causality) and ``max(horizon[k0:k1]) > q0``. The
per-key-block maximum horizon is precomputed once per call. :func:`block_skip_stats` counts the tiles
this rule skips, for the benchmark table (without a window).

With a sliding ``window`` and the pack's ``positions`` (cached prefix key ``p`` sits at position ``p``), a
query also needs ``positions[q] - position(key) < window``. The kernel then also skips the prefix blocks
before the one holding key ``max(0, min(positions[q0:q1]) - window + 1)`` (the first key any query of the
block can see) and every key block whose largest position (precomputed like the horizon's) is
``<= min(positions[q0:q1]) - window``. Without a window none of this is compiled in (a compile-time flag).

Non-finite keys: a key whose ``k`` or ``v`` row holds an inf or NaN contributes exactly nothing to a
query that may not see it (masking its score is not enough, as ``0 * NaN`` is NaN), and every query that
does see it gets a NaN output (an inf key can score ``-inf`` and would otherwise silently get ``p = 0``).
So in a pack of many coalitions a non-finite token poisons only the coalitions that contain it, as
scoring each coalition alone would; a non-finite cached-prefix key poisons every query of its kv heads
(with a window: every query whose window holds it). The kernels zero such keys in what they read and set
the queries that see one to NaN.

Importing this module needs torch only; the Triton kernel is compiled lazily, so the module imports on
machines where Triton is missing or has no usable backend. Under ``TRITON_INTERPRET=1`` (set before
importing Triton) the kernel runs on CPU tensors, which the tests use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from scar_kernels.layout import check_window, visibility

__all__ = [
    "tree_attention",
    "tree_attention_reference",
    "validate_tree_attention_inputs",
    "check_softcap",
    "sink_logits",
    "soft_cap",
    "block_max_horizon",
    "block_skip_stats",
    "BlockSkipStats",
    "DEFAULT_BLOCK_M",
    "DEFAULT_BLOCK_N",
]

DEFAULT_BLOCK_M = 64
DEFAULT_BLOCK_N = 64

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------------
# Input validation (shared by the launcher, the reference and the torch.library op)
# --------------------------------------------------------------------------------------------------
def validate_tree_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    horizon: torch.Tensor,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    *,
    sinks: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    window: int | None = None,
    check_values: bool = True,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the problem if the inputs break the layout contract.

    ``sinks``, when given, must be a float tensor ``[H]`` or ``[H, N]`` on ``q``'s device. A ``window`` (an
    int >= 1) needs ``positions``, an int32 ``[N]`` tensor on ``q``'s device, and ``positions`` needs a
    window. ``check_values`` also checks ``k < horizon[k] <= N``, that no sink is NaN or ``+inf`` and that no
    position is negative (one device synchronisation on CUDA); shape and dtype checks never read tensor
    data, so they are safe on fake/meta tensors.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tree_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype == torch.float64:
            raise TypeError(
                f"tree_attention: {name} is float64, which the tree-attention kernels do not support (they take "
                'float32, float16 or bfloat16); score float64 models with attention="mask" (the dense-mask path)'
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"tree_attention: {name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"tree_attention: {name} must be 3-D [heads, N, head_dim], got shape {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"tree_attention: {name} must be contiguous (call .contiguous())")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"tree_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    H, N, D = q.shape
    Hkv = k.shape[0]
    if k.shape != v.shape:
        raise ValueError(f"tree_attention: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.shape[1] != N:
        raise ValueError(f"tree_attention: k has {k.shape[1]} tokens but q has {N}")
    if k.shape[2] != D:
        raise ValueError(f"tree_attention: k head_dim {k.shape[2]} != q head_dim {D}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"tree_attention: query heads ({H}) must be a multiple of kv heads ({Hkv})")
    if not isinstance(horizon, torch.Tensor):
        raise TypeError(f"tree_attention: horizon must be a torch.Tensor, got {type(horizon).__name__}")
    if horizon.dtype != torch.int32:
        raise TypeError(f"tree_attention: horizon must be int32, got {horizon.dtype}")
    if horizon.dim() != 1 or horizon.shape[0] != N:
        raise ValueError(f"tree_attention: horizon must have shape [{N}], got {tuple(horizon.shape)}")
    if not horizon.is_contiguous():
        raise ValueError("tree_attention: horizon must be contiguous")
    for name, t in (("k", k), ("v", v), ("horizon", horizon)):
        if t.device != q.device:
            raise ValueError(f"tree_attention: {name} is on {t.device} but q is on {q.device}")
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("tree_attention: pass both prefix_k and prefix_v, or neither")
    if prefix_k is not None:
        for name, pt in (("prefix_k", prefix_k), ("prefix_v", prefix_v)):
            if not isinstance(pt, torch.Tensor):
                raise TypeError(f"tree_attention: {name} must be a torch.Tensor, got {type(pt).__name__}")
            if pt.dtype != q.dtype:
                raise TypeError(f"tree_attention: {name} dtype {pt.dtype} != q dtype {q.dtype}")
            if pt.dim() != 3 or pt.shape[0] != Hkv or pt.shape[2] != D:
                raise ValueError(f"tree_attention: {name} must have shape [{Hkv}, P, {D}], got {tuple(pt.shape)}")
            if not pt.is_contiguous():
                raise ValueError(f"tree_attention: {name} must be contiguous (call .contiguous())")
            if pt.device != q.device:
                raise ValueError(f"tree_attention: {name} is on {pt.device} but q is on {q.device}")
        assert prefix_v is not None
        if prefix_k.shape != prefix_v.shape:
            raise ValueError(
                f"tree_attention: prefix_k and prefix_v shapes differ: {tuple(prefix_k.shape)} vs "
                f"{tuple(prefix_v.shape)}"
            )
    if sinks is not None:
        if not isinstance(sinks, torch.Tensor):
            raise TypeError(f"tree_attention: sinks must be a torch.Tensor, got {type(sinks).__name__}")
        if not sinks.dtype.is_floating_point:
            raise TypeError(f"tree_attention: sinks must be a float tensor, got {sinks.dtype}")
        if tuple(sinks.shape) not in ((H,), (H, N)):
            raise ValueError(
                f"tree_attention: sinks must have shape [{H}] (one logit per query head) or [{H}, {N}] (per head "
                f"and query), got {tuple(sinks.shape)}"
            )
        if sinks.device != q.device:
            raise ValueError(f"tree_attention: sinks is on {sinks.device} but q is on {q.device}")
        if check_values and bool((torch.isnan(sinks) | (sinks == float("inf"))).any()):
            raise ValueError("tree_attention: sinks must be finite or -inf (no sink), got NaN or +inf")
    try:
        check_window(window, positions, N)
    except (TypeError, ValueError) as err:
        raise type(err)(f"tree_attention: {err}") from None
    if positions is not None:
        if positions.dtype != torch.int32 or not positions.is_contiguous():
            raise ValueError(f"tree_attention: positions must be a contiguous int32 tensor, got {positions.dtype}")
        if positions.device != q.device:
            raise ValueError(f"tree_attention: positions is on {positions.device} but q is on {q.device}")
        if check_values and bool((positions < 0).any()):
            raise ValueError("tree_attention: positions must be >= 0")
    if check_values and N > 0:
        idx = torch.arange(N, device=horizon.device, dtype=torch.int32)
        bad = (horizon <= idx) | (horizon > N)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"tree_attention: horizon must satisfy k < horizon[k] <= N={N}; horizon[{i}] = {int(horizon[i])}"
            )


def check_softcap(softcap: float | None) -> float:
    """The logit soft-cap as the kernels take it: ``0.0`` for none, else a finite float ``> 0``.

    Raises:
        ValueError: a soft-cap that is not a finite number ``> 0`` (or None).
    """
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap <= 0:
        raise ValueError(f"tree_attention: softcap must be None or a finite number > 0, got {softcap!r}")
    return float(softcap)


def sink_logits(sinks: torch.Tensor | None, heads: int, n: int) -> torch.Tensor | None:
    """The sink logits as the kernels read them: fp32 ``[H, N]`` contiguous (a per-head ``[H]`` repeated for
    every query), or None."""
    if sinks is None:
        return None
    return sinks.float().reshape(heads, -1).expand(heads, n).contiguous()


def soft_cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap * tanh(scores / softcap)`` (logit soft-capping, as Gemma 2 applies it); ``scores`` when None."""
    if softcap is None:
        return scores
    return torch.tanh(scores / softcap) * softcap


# --------------------------------------------------------------------------------------------------
# Torch reference (dense mask)
# --------------------------------------------------------------------------------------------------
def tree_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    horizon: torch.Tensor,
    scale: float,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Dense torch reference: ``softmax(cap(q k^T * scale) + mask) v`` in fp32, returned in ``q``'s dtype.

    ``cap`` is :func:`soft_cap` with ``softcap`` (the identity when None). With ``sinks`` (``[H]`` or
    ``[H, N]``), each softmax row holds one more logit, the sink, whose probability is dropped. With a
    sliding ``window`` and the pack's ``positions``, the mask is :func:`~scar_kernels.layout.visibility`'s
    windowed one.

    A key whose ``k`` or ``v`` row is not finite is zeroed, and the queries that see it are set to NaN
    (see the module docstring), so it never reaches a query that may not see it.
    """
    validate_tree_attention_inputs(
        q, k, v, horizon, prefix_k, prefix_v, sinks=sinks, positions=positions, window=window
    )
    softcap = check_softcap(softcap) or None
    H, N = q.shape[:2]
    sink = sink_logits(sinks, H, N)
    group = H // k.shape[0]
    if prefix_k is not None and prefix_v is not None:
        k = torch.cat([prefix_k, k], dim=1)
        v = torch.cat([prefix_v, v], dim=1)
    P = k.shape[1] - N
    kf = k.float().repeat_interleave(group, dim=0)
    vf = v.float().repeat_interleave(group, dim=0)
    visible = visibility(horizon, P, positions=positions, window=window)
    bad = ~(torch.isfinite(kf).all(dim=-1) & torch.isfinite(vf).all(dim=-1))  # [H, P + N]
    kf = kf.masked_fill(bad[..., None], 0.0)
    vf = vf.masked_fill(bad[..., None], 0.0)
    scores = soft_cap(torch.matmul(q.float(), kf.transpose(1, 2)) * scale, softcap)
    scores = scores.masked_fill(~visible, float("-inf"))
    if sink is None:
        probs = torch.softmax(scores, dim=-1)
    else:  # the sink is one more column, dropped after the softmax
        probs = torch.softmax(torch.cat([scores, sink[..., None]], dim=-1), dim=-1)[..., :-1]
    out = torch.matmul(probs, vf)
    # Queries that see a bad key: a count of visible bad keys per (head, query), exact in fp32.
    poisoned = torch.matmul(bad.float(), visible.float().transpose(0, 1)) > 0  # [H, N]
    out = out.masked_fill(poisoned[..., None], float("nan"))
    return out.to(q.dtype)


# --------------------------------------------------------------------------------------------------
# Block-skip bookkeeping
# --------------------------------------------------------------------------------------------------
def block_max_horizon(horizon: torch.Tensor, block_n: int) -> torch.Tensor:
    """Per key block of ``block_n`` tokens, the maximum horizon (int32, ``ceil(N / block_n)`` entries)."""
    N = horizon.shape[0]
    n_blocks = -(-N // block_n)
    padded = torch.zeros(n_blocks * block_n, dtype=torch.int32, device=horizon.device)
    padded[:N] = horizon
    return padded.view(n_blocks, block_n).amax(dim=1).contiguous()


@dataclass(frozen=True)
class BlockSkipStats:
    """Tile counts of one pack for a (query block, key block) tiling of its attention.

    ``dense_*``: a kernel that computes every tile of the ``[N, P + N]`` score matrix (SDPA / eager
    with a dense additive mask). ``causal_*``: a causal flash kernel (skips tiles above the diagonal).
    ``tree_*``: this kernel (also skips tiles whose keys' subtrees end before the query block).
    ``*_pairs``: (query, key) score entries inside computed tiles, i.e. proportional to attention
    FLOPs (``4 * D`` per pair and head: ``q k^T`` and ``p v``). ``visible_pairs`` is the exact mask's
    count, the lower bound for any kernel.
    """

    n_tokens: int
    prefix_len: int
    block_m: int
    block_n: int
    dense_tiles: int
    causal_tiles: int
    tree_tiles: int
    dense_pairs: int
    causal_pairs: int
    tree_pairs: int
    visible_pairs: int

    @property
    def skipped_vs_dense(self) -> float:
        """Fraction of the dense kernel's tiles the tree kernel does not compute."""
        return 1.0 - self.tree_tiles / self.dense_tiles if self.dense_tiles else 0.0

    @property
    def skipped_vs_causal(self) -> float:
        """Fraction of the causal kernel's tiles the tree kernel does not compute."""
        return 1.0 - self.tree_tiles / self.causal_tiles if self.causal_tiles else 0.0

    @property
    def flops_saved_vs_dense(self) -> float:
        """Fraction of the dense-mask kernel's attention FLOPs saved."""
        return 1.0 - self.tree_pairs / self.dense_pairs if self.dense_pairs else 0.0

    def attention_flops(self, n_heads: int, head_dim: int) -> dict[str, int]:
        """Attention FLOPs (``q k^T`` plus ``p v``) of each kernel for ``n_heads`` heads of ``head_dim``."""
        per = 4 * n_heads * head_dim
        return {
            "dense": per * self.dense_pairs,
            "causal": per * self.causal_pairs,
            "tree": per * self.tree_pairs,
            "exact": per * self.visible_pairs,
        }


def block_skip_stats(
    horizon: torch.Tensor,
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
    prefix_len: int = 0,
) -> BlockSkipStats:
    """Count the attention tiles the tree kernel computes and skips for one pack.

    Uses exactly the kernel's skip rule (causal key-block bound, then ``max(horizon[block]) > q0``);
    the cached-prefix tiles are computed by every kernel and are included in all counts.
    """
    if horizon.dim() != 1:
        raise ValueError(f"block_skip_stats: horizon must be 1-D, got shape {tuple(horizon.shape)}")
    if block_m < 1 or block_n < 1:
        raise ValueError("block_skip_stats: block sizes must be positive")
    if prefix_len < 0:
        raise ValueError("block_skip_stats: prefix_len must be >= 0")
    h = horizon.detach().to("cpu", torch.int64)
    N = h.shape[0]
    n_qb = -(-N // block_m)
    n_kb = -(-N // block_n)
    n_pb = -(-prefix_len // block_n)
    q0 = torch.arange(n_qb) * block_m
    q1 = torch.clamp(q0 + block_m, max=N)
    qlen = q1 - q0
    k0 = torch.arange(n_kb) * block_n
    k1 = torch.clamp(k0 + block_n, max=N)
    klen = k1 - k0
    kmax = block_max_horizon(h.to(torch.int32), block_n).to(torch.int64) if N else torch.zeros(0, dtype=torch.int64)
    causal = k0.unsqueeze(0) <= (q1 - 1).unsqueeze(1)
    tree = causal & (kmax.unsqueeze(0) > q0.unsqueeze(1))
    tile_pairs = qlen.unsqueeze(1) * klen.unsqueeze(0)
    prefix_pairs = N * prefix_len
    idx = torch.arange(N)
    # Each key k is visible to the queries k .. horizon[k]-1.
    visible = int((h - idx).clamp(min=0).sum()) + prefix_pairs
    return BlockSkipStats(
        n_tokens=N,
        prefix_len=prefix_len,
        block_m=block_m,
        block_n=block_n,
        dense_tiles=n_qb * (n_kb + n_pb),
        causal_tiles=int(causal.sum()) + n_qb * n_pb,
        tree_tiles=int(tree.sum()) + n_qb * n_pb,
        dense_pairs=N * (N + prefix_len),
        causal_pairs=int((tile_pairs * causal).sum()) + prefix_pairs,
        tree_pairs=int((tile_pairs * tree).sum()) + prefix_pairs,
        visible_pairs=visible,
    )


# --------------------------------------------------------------------------------------------------
# Triton kernel (compiled lazily so that importing this module never needs Triton)
# --------------------------------------------------------------------------------------------------
_KERNEL = None


def _get_kernel():
    """Define the @triton.jit kernel on first use and cache it."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        raise RuntimeError(f"tree_attention (Triton): triton is not importable ({exc})") from exc

    @triton.jit
    def _capped_scores(s, cap_scale, SOFTCAP: tl.constexpr):
        """Base-2 logits of the raw scores ``s`` (already times the scale, or times scale / cap with SOFTCAP):
        with SOFTCAP, ``cap_scale * tanh(s)`` where cap_scale is ``cap * log2(e)``; tanh(y) = sign(y) (1 - e) /
        (1 + e) with e = exp(-2 |y|), which needs only exp2."""
        if SOFTCAP:
            e = tl.exp2(tl.abs(s) * -2.8853900817779268)  # exp(-2 |y|)
            t = (1.0 - e) / (1.0 + e)
            s = tl.where(s < 0, -t, t) * cap_scale
        return s

    # The kernel finds its helper among this module's globals, as Triton resolves the names a kernel calls.
    globals()["_capped_scores"] = _capped_scores

    @triton.jit
    def _tree_attention_fwd(
        Q,
        K,
        V,
        PK,
        PV,
        HOR,
        BLKMAX,
        SINKS,
        POS,
        BLKPOS,
        OUT,
        N,
        P,
        qk_scale,
        cap_scale,
        window,
        GROUP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_PREFIX: tl.constexpr,
        DOT_FP32: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        SOFTCAP: tl.constexpr,
        HAS_SINKS: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        hk = h // GROUP
        # 64-bit head offsets: H * N * D can exceed 2**31 for long packs.
        q_base = h.to(tl.int64) * N * HEAD_DIM
        kv_base = hk.to(tl.int64) * N * HEAD_DIM

        q0 = pid_m * BLOCK_M
        offs_m = q0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        d_ok = offs_d < HEAD_DIM
        m_ok = offs_m < N

        q = tl.load(
            Q + q_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0
        )
        if DOT_FP32:
            q = q.to(tl.float32)
        if HAS_WINDOW:
            # Query positions; the block's smallest bounds the keys any of its queries can see.
            qpos = tl.load(POS + offs_m, mask=m_ok, other=0)
            qpos_min = tl.min(tl.where(m_ok, qpos, 2147483647), 0)

        # exp2-based softmax: fold log2(e) into the scale once.
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        if HAS_SINKS:  # a key every query sees, with a zero value row: the softmax starts from it
            m_i = tl.load(SINKS + h.to(tl.int64) * N + offs_m, mask=m_ok, other=float("-inf")) * 1.4426950408889634
            l_i = tl.where(m_ok, 1.0, 0.0)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # 1 where the query sees a key whose k or v row holds an inf or NaN ("bad" key: an exponent field
        # of all ones, tested on the bits so that no fast-math folding can drop it); such keys are zeroed
        # below, so they reach no other query, and these rows are set to NaN at the end.
        poisoned = tl.zeros([BLOCK_M], dtype=tl.int32)

        if HAS_PREFIX:
            # The cached prompt: without a window every key is visible to every query, no skipping possible;
            # with one, prefix key p (at position p) is visible iff positions[i] - p < window, so the loop
            # starts at the block holding the first key the block's smallest query position can see.
            p_base = hk.to(tl.int64) * P * HEAD_DIM
            p_start = 0
            if HAS_WINDOW:
                p_start = (tl.maximum(qpos_min - window + 1, 0) // BLOCK_N * BLOCK_N).to(tl.int32)
            for p0 in range(p_start, P, BLOCK_N):
                offs_p = p0 + offs_n
                p_ok = offs_p < P
                if HAS_WINDOW:
                    p_vis = p_ok[None, :] & (qpos[:, None] - offs_p[None, :] < window)
                kp = tl.load(
                    PK + p_base + offs_p[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=p_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                vp = tl.load(
                    PV + p_base + offs_p[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=p_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                if DOT_FP32:
                    kp = kp.to(tl.float32)
                    vp = vp.to(tl.float32)
                p_exp = (kp.to(tl.float32).to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000
                p_exp = p_exp | ((vp.to(tl.float32).to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000)
                p_bad = tl.max(p_exp.to(tl.int32), 1)
                if tl.max(p_bad, 0) > 0:
                    kp = tl.where(p_bad[:, None] > 0, tl.zeros_like(kp), kp)
                    vp = tl.where(p_bad[:, None] > 0, tl.zeros_like(vp), vp)
                    if HAS_WINDOW:
                        poisoned = tl.maximum(poisoned, tl.max(tl.where(p_vis & (p_bad[None, :] > 0), 1, 0), 1))
                    else:  # a prefix key is visible to every query
                        poisoned = tl.full([BLOCK_M], 1, dtype=tl.int32)
                s = _capped_scores(
                    tl.dot(q, tl.trans(kp), input_precision=DOT_PRECISION) * qk_scale, cap_scale, SOFTCAP
                )
                if HAS_WINDOW:
                    s = tl.where(p_vis, s, float("-inf"))
                else:
                    s = tl.where(p_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(vp.dtype), vp, input_precision=DOT_PRECISION)
                m_i = m_new

        # Tree keys: causality bounds the key range by the last query of the block.
        k_end = tl.minimum(q0 + BLOCK_M, N)
        for n0 in range(0, k_end, BLOCK_N):
            # Skip the block when every key's subtree ends before the first query of this block, or (with a
            # window) when every key's position is at least a window behind the block's smallest query position.
            blk_h = tl.load(BLKMAX + n0 // BLOCK_N)
            visit = blk_h > q0
            if HAS_WINDOW:
                visit = visit & (tl.load(BLKPOS + n0 // BLOCK_N) > qpos_min - window)
            if visit:
                offs_k = n0 + offs_n
                k_ok = offs_k < N
                kt = tl.load(
                    K + kv_base + offs_k[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                vt = tl.load(
                    V + kv_base + offs_k[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                hor = tl.load(HOR + offs_k, mask=k_ok, other=0)
                if DOT_FP32:
                    kt = kt.to(tl.float32)
                    vt = vt.to(tl.float32)
                vis = (offs_k[None, :] <= offs_m[:, None]) & (offs_m[:, None] < hor[None, :])
                if HAS_WINDOW:
                    kpos = tl.load(POS + offs_k, mask=k_ok, other=0)
                    vis = vis & (qpos[:, None] - kpos[None, :] < window)
                k_exp = (kt.to(tl.float32).to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000
                k_exp = k_exp | ((vt.to(tl.float32).to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000)
                k_bad = tl.max(k_exp.to(tl.int32), 1)
                if tl.max(k_bad, 0) > 0:
                    kt = tl.where(k_bad[:, None] > 0, tl.zeros_like(kt), kt)
                    vt = tl.where(k_bad[:, None] > 0, tl.zeros_like(vt), vt)
                    poisoned = tl.maximum(poisoned, tl.max(tl.where(vis & (k_bad[None, :] > 0), 1, 0), 1))
                s = _capped_scores(
                    tl.dot(q, tl.trans(kt), input_precision=DOT_PRECISION) * qk_scale, cap_scale, SOFTCAP
                )
                s = tl.where(vis, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PRECISION)
                m_i = m_new

        # Rows past N see nothing (l = 0); every real row sees at least itself.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        out = tl.where(poisoned[:, None] > 0, float("nan"), out)
        tl.store(
            OUT + q_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
            out.to(OUT.dtype.element_ty),
            mask=m_ok[:, None] & d_ok[None, :],
        )

    _KERNEL = _tree_attention_fwd
    return _KERNEL


def _pick_blocks(N: int, D: int) -> tuple[int, int]:
    """Block sizes: 64x64 tiles, smaller for tiny packs (tl.dot needs >= 16), 32-wide keys at D=128."""
    block_m = DEFAULT_BLOCK_M if N > 32 else (32 if N > 16 else 16)
    block_n = DEFAULT_BLOCK_N if D <= 64 else 32
    if N <= 16:
        block_n = 16
    return block_m, block_n


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    horizon: torch.Tensor,
    scale: float | None = None,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    window: int | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Launch the Triton tree-attention kernel; returns ``[H, N, D]`` in ``q``'s dtype.

    Args:
        q: queries ``[H, N, D]``; ``k``, ``v``: packed keys/values ``[Hkv, N, D]`` (``H % Hkv == 0``).
        horizon: int32 ``[N]``; query ``i`` sees key ``j`` iff ``j <= i < horizon[j]``.
        scale: softmax scale (default ``D ** -0.5``).
        prefix_k, prefix_v: optional cached-prompt keys/values ``[Hkv, P, D]`` visible to all queries.
        softcap: logit soft-cap: scores become ``softcap * tanh(score / softcap)`` before the mask (None: not).
        sinks: attention-sink logits ``[H]`` or ``[H, N]`` (see the module docstring), or None.
        positions: int32 ``[N]``, each packed token's position in its own sequence (cached prefix key ``p`` sits
            at position ``p``); read only with ``window``.
        window: sliding-window length in tokens (an int >= 1), or None for none: query ``i`` then also needs
            ``positions[i] - position(key) < window``.
        block_m, block_n: tile sizes (powers of two >= 16); picked from ``N`` and ``D`` when omitted.
        check_values: verify ``j < horizon[j] <= N``, the sinks and that no position is negative (one device sync
            on CUDA).

    Tensors must be CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``. Head dims 16..128.
    """
    validate_tree_attention_inputs(
        q, k, v, horizon, prefix_k, prefix_v, sinks=sinks, positions=positions, window=window, check_values=check_values
    )
    cap = check_softcap(softcap)
    H, N, D = q.shape
    sink = sink_logits(sinks, H, N)
    if not 16 <= D <= 128:
        raise ValueError(f"tree_attention (Triton): head_dim must be in [16, 128], got {D}")
    if q.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"tree_attention (Triton): tensors are on {q.device}; the kernel needs CUDA "
            "(or TRITON_INTERPRET=1 set before importing triton, for CPU testing)"
        )
    auto_m, auto_n = _pick_blocks(N, D)
    block_m = block_m or auto_m
    block_n = block_n or auto_n
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"tree_attention (Triton): {name} must be a power of two >= 16, got {b}")
    scale = D**-0.5 if scale is None else float(scale)
    out = torch.empty_like(q)
    if N == 0:
        return out
    P = prefix_k.shape[1] if prefix_k is not None else 0
    has_prefix = P > 0
    blkmax = block_max_horizon(horizon, block_n)
    n_window = check_window(window, positions, N)
    # Per key block, the largest position (the same block-wise maximum as for the horizon).
    blkpos = block_max_horizon(positions, block_n) if positions is not None else blkmax
    # The interpreter has no bf16 tl.dot: compute its dots in fp32.
    dot_fp32 = _interpreting() or q.dtype == torch.float32
    kernel = _get_kernel()
    grid = (-(-N // block_m), H)
    kernel[grid](
        q,
        k,
        v,
        prefix_k if has_prefix else k,
        prefix_v if has_prefix else v,
        horizon,
        blkmax,
        sink if sink is not None else horizon,
        positions if n_window else horizon,
        blkpos,
        out,
        N,
        P,
        # exp2-based softmax: log2(e) goes into the scale, or into the cap's factor when scores are capped
        scale / cap if cap else scale * math.log2(math.e),
        cap * math.log2(math.e),
        n_window,
        GROUP=H // k.shape[0],
        HEAD_DIM=D,
        BLOCK_D=max(16, 1 << (D - 1).bit_length()),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HAS_PREFIX=has_prefix,
        DOT_FP32=dot_fp32,
        # fp32 operands: IEEE products (no TF32 rounding), so fp32 results match the reference.
        DOT_PRECISION="ieee" if dot_fp32 else None,
        SOFTCAP=cap > 0,
        HAS_SINKS=sink is not None,
        HAS_WINDOW=n_window > 0,
    )
    return out
