"""Pack-layout kernels: per-token arrays from a node table, and the dense additive mask from horizon.

The prefix-tree pack (DESIGN.md section 3, contract in ``scar.trie``) is a preorder sequence of nodes;
node ``u`` holds the packed tokens ``[node_start[u], node_start[u] + node_len[u])``. From the node table
the per-token arrays follow directly:

- ``horizon[t]`` = end of the subtree of ``t``'s node = the largest ``node_start + node_len`` over the
  node and its descendants (computed by propagating each node's end up its ancestor chain);
- ``position_ids[t]`` = ``node_pos0[u] + (t - node_start[u])``, where ``node_pos0[u]`` is the position
  id of the node's first token (its depth in kept tokens, cached prompt included);
- optionally ``gather[t]`` = ``node_src[u] + (t - node_start[u])`` and ``tree[t]`` = ``node_tree[u]``.

The dense mask is the float additive ``[n, P + n]`` mask (0 where visible, ``finfo(dtype).min``
elsewhere) for attention paths that need one (eager/SDPA).

Each Triton entry point has a torch reference (``*_reference``), used on CPU and in tests. Triton is
imported lazily: this module imports without Triton. On CPU the kernels run only under
``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import os

import torch

__all__ = [
    "node_horizon_reference",
    "expand_nodes_reference",
    "expand_nodes",
    "dense_mask_reference",
    "dense_mask",
]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_triton_device(t: torch.Tensor, what: str) -> None:
    if t.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"{what} (Triton): tensors are on {t.device}; the kernel needs CUDA "
            "(or TRITON_INTERPRET=1 set before importing triton); use the *_reference function on CPU"
        )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _validate_nodes(
    node_start: torch.Tensor,
    node_len: torch.Tensor,
    node_parent: torch.Tensor,
    node_pos0: torch.Tensor,
    n_tokens: int,
    node_src: torch.Tensor | None,
    node_tree: torch.Tensor | None,
) -> None:
    named = [("node_start", node_start), ("node_len", node_len), ("node_parent", node_parent),
             ("node_pos0", node_pos0)]
    if node_src is not None:
        named.append(("node_src", node_src))
    if node_tree is not None:
        named.append(("node_tree", node_tree))
    M = node_start.shape[0] if isinstance(node_start, torch.Tensor) else -1
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expand_nodes: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(f"expand_nodes: {name} must be int64, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != M:
            raise ValueError(f"expand_nodes: {name} must have shape [{M}], got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"expand_nodes: {name} must be contiguous")
        if t.device != node_start.device:
            raise ValueError(f"expand_nodes: {name} is on {t.device} but node_start is on {node_start.device}")
    if M == 0:
        if n_tokens != 0:
            raise ValueError(f"expand_nodes: no nodes but n_tokens={n_tokens}")
        return
    # Preorder tiling: nodes are contiguous, in order, cover [0, n_tokens), parents come first.
    if bool((node_len < 1).any()):
        raise ValueError("expand_nodes: every node must hold >= 1 token (node_len >= 1)")
    if int(node_start[0]) != 0:
        raise ValueError("expand_nodes: node_start[0] must be 0")
    ends = node_start + node_len
    if bool((node_start[1:] != ends[:-1]).any()):
        raise ValueError("expand_nodes: nodes must tile the pack in order (node_start[u+1] == node_start[u] + node_len[u])")
    if int(ends[-1]) != n_tokens:
        raise ValueError(f"expand_nodes: nodes cover {int(ends[-1])} tokens but n_tokens={n_tokens}")
    idx = torch.arange(M, device=node_parent.device)
    if bool(((node_parent < -1) | (node_parent >= idx)).any()):
        raise ValueError("expand_nodes: node_parent[u] must be -1 or an earlier node (preorder)")
    if n_tokens >= 2**31:
        raise ValueError(f"expand_nodes: n_tokens={n_tokens} does not fit int32 horizon")


# --------------------------------------------------------------------------------------------------
# Torch references
# --------------------------------------------------------------------------------------------------
def node_horizon_reference(node_start: torch.Tensor, node_len: torch.Tensor, node_parent: torch.Tensor) -> torch.Tensor:
    """Subtree end (exclusive packed index) of every node, int64 ``[M]``.

    Preorder puts children after their parent, so one reverse sweep pushes each node's end to its parent.
    """
    end = (node_start + node_len).cpu().tolist()
    parent = node_parent.cpu().tolist()
    for u in range(len(end) - 1, -1, -1):
        p = parent[u]
        if p >= 0 and end[u] > end[p]:
            end[p] = end[u]
    return torch.tensor(end, dtype=torch.int64, device=node_start.device)


def expand_nodes_reference(
    node_start: torch.Tensor,
    node_len: torch.Tensor,
    node_parent: torch.Tensor,
    node_pos0: torch.Tensor,
    n_tokens: int,
    node_src: torch.Tensor | None = None,
    node_tree: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Torch reference of :func:`expand_nodes`: ``(horizon int32, position_ids, gather|None, tree|None)``."""
    _validate_nodes(node_start, node_len, node_parent, node_pos0, n_tokens, node_src, node_tree)
    dev = node_start.device
    node_of = torch.repeat_interleave(torch.arange(node_start.shape[0], device=dev), node_len)
    offset = torch.arange(n_tokens, device=dev) - node_start[node_of]
    horizon = node_horizon_reference(node_start, node_len, node_parent)[node_of].to(torch.int32)
    position_ids = node_pos0[node_of] + offset
    gather = node_src[node_of] + offset if node_src is not None else None
    tree = node_tree[node_of].clone() if node_tree is not None else None
    return horizon, position_ids, gather, tree


def dense_mask_reference(horizon: torch.Tensor, prefix_len: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask ``[n, prefix_len + n]``: 0 where query row sees key column, ``finfo(dtype).min`` elsewhere.

    ``finfo.min`` (not ``-inf``) matches transformers' masks and keeps softmax NaN-free.
    """
    _validate_mask_args(horizon, prefix_len, dtype)
    n = horizon.shape[0]
    qi = torch.arange(n, device=horizon.device).unsqueeze(1)
    ki = torch.arange(n, device=horizon.device).unsqueeze(0)
    visible = (ki <= qi) & (qi < horizon.to(torch.int64).unsqueeze(0))
    if prefix_len:
        visible = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=horizon.device), visible], dim=1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=horizon.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)


def _validate_mask_args(horizon: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> None:
    if not isinstance(horizon, torch.Tensor):
        raise TypeError(f"dense_mask: horizon must be a torch.Tensor, got {type(horizon).__name__}")
    if horizon.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"dense_mask: horizon must be int32 or int64, got {horizon.dtype}")
    if horizon.dim() != 1:
        raise ValueError(f"dense_mask: horizon must be 1-D, got shape {tuple(horizon.shape)}")
    if not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"dense_mask: prefix_len must be an int >= 0, got {prefix_len!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"dense_mask: dtype must be float32, float16 or bfloat16, got {dtype}")


# --------------------------------------------------------------------------------------------------
# Triton kernels (defined on first use)
# --------------------------------------------------------------------------------------------------
_KERNELS: dict[str, object] = {}


def _kernels() -> dict[str, object]:
    if _KERNELS:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def _subtree_end(START, LEN, PARENT, END):
        # One program per node: push this node's end up its ancestor chain (depth is small: one
        # level per kept player), so every node ends with the max end over its subtree.
        u = tl.program_id(0)
        e = (tl.load(START + u) + tl.load(LEN + u)).to(tl.int32)
        tl.atomic_max(END + u, e)
        p = tl.load(PARENT + u)
        while p >= 0:
            tl.atomic_max(END + p, e)
            p = tl.load(PARENT + p)

    @triton.jit
    def _expand(START, LEN, POS0, SRC, TREE, END, HOR, POS, GATHER, TOK_TREE,
                HAS_SRC: tl.constexpr, HAS_TREE: tl.constexpr, BLOCK: tl.constexpr):
        # One program per node; loop over its tokens in blocks (a prompt root can be long).
        u = tl.program_id(0)
        start = tl.load(START + u)
        length = tl.load(LEN + u)
        pos0 = tl.load(POS0 + u)
        end = tl.load(END + u)
        if HAS_SRC:
            src0 = tl.load(SRC + u)
        if HAS_TREE:
            tr = tl.load(TREE + u)
        for b in range(0, length, BLOCK):
            off = b + tl.arange(0, BLOCK)
            ok = off < length
            t = start + off
            tl.store(HOR + t, tl.zeros([BLOCK], dtype=tl.int32) + end, mask=ok)
            tl.store(POS + t, pos0 + off, mask=ok)
            if HAS_SRC:
                tl.store(GATHER + t, src0 + off, mask=ok)
            if HAS_TREE:
                tl.store(TOK_TREE + t, tl.zeros([BLOCK], dtype=tl.int64) + tr, mask=ok)

    @triton.jit
    def _dense_mask(HOR, OUT, n, P, neg, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
        # Tile (query block, key block) of the [n, P + n] mask; prefix columns are always visible.
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

    _KERNELS.update(subtree_end=_subtree_end, expand=_expand, dense_mask=_dense_mask)
    return _KERNELS


def expand_nodes(
    node_start: torch.Tensor,
    node_len: torch.Tensor,
    node_parent: torch.Tensor,
    node_pos0: torch.Tensor,
    n_tokens: int,
    node_src: torch.Tensor | None = None,
    node_tree: torch.Tensor | None = None,
    *,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token arrays from a preorder node table, on the GPU (Triton).

    Args:
        node_start, node_len, node_parent: int64 ``[M]`` node table in preorder (``-1`` parent for roots).
        node_pos0: int64 ``[M]``, position id of each node's first token.
        n_tokens: ``N`` = total tokens of the pack (``node_start[-1] + node_len[-1]``).
        node_src, node_tree: optional int64 ``[M]``: flat source index of each node's first token, and
            owner response of each node; when given, ``gather`` and ``tree`` are produced too.
        validate: check that the nodes tile ``[0, N)`` in preorder (a few reductions; one sync).

    Returns:
        ``(horizon int32 [N], position_ids int64 [N], gather int64 [N] | None, tree int64 [N] | None)``.
    """
    if validate:
        _validate_nodes(node_start, node_len, node_parent, node_pos0, n_tokens, node_src, node_tree)
    _check_triton_device(node_start, "expand_nodes")
    dev = node_start.device
    M = node_start.shape[0]
    horizon = torch.empty(n_tokens, dtype=torch.int32, device=dev)
    position_ids = torch.empty(n_tokens, dtype=torch.int64, device=dev)
    gather = torch.empty(n_tokens, dtype=torch.int64, device=dev) if node_src is not None else None
    tree = torch.empty(n_tokens, dtype=torch.int64, device=dev) if node_tree is not None else None
    if M == 0:
        return horizon, position_ids, gather, tree
    k = _kernels()
    end = torch.zeros(M, dtype=torch.int32, device=dev)
    k["subtree_end"][(M,)](node_start, node_len, node_parent, end)
    # Unused pointer slots get a valid tensor; the constexpr flags keep them untouched.
    k["expand"][(M,)](
        node_start, node_len, node_pos0,
        node_src if node_src is not None else node_start,
        node_tree if node_tree is not None else node_start,
        end, horizon, position_ids,
        gather if gather is not None else position_ids,
        tree if tree is not None else position_ids,
        HAS_SRC=node_src is not None, HAS_TREE=node_tree is not None, BLOCK=128,
    )
    return horizon, position_ids, gather, tree


def dense_mask(horizon: torch.Tensor, prefix_len: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive float mask ``[n, prefix_len + n]`` from horizon, written by a Triton kernel.

    Same values as :func:`dense_mask_reference`. Use only where an attention path needs a dense mask:
    it is ``O(n^2)`` memory, which the tree-attention kernel avoids.
    """
    _validate_mask_args(horizon, prefix_len, dtype)
    _check_triton_device(horizon, "dense_mask")
    n = horizon.shape[0]
    out = torch.empty(n, prefix_len + n, dtype=dtype, device=horizon.device)
    if n == 0:
        return out
    block_q, block_k = 32, 64
    grid = (-(-n // block_q), -(-(prefix_len + n) // block_k))
    _kernels()["dense_mask"][grid](
        horizon.contiguous(), out, n, prefix_len, torch.finfo(dtype).min, BLOCK_Q=block_q, BLOCK_K=block_k
    )
    return out
