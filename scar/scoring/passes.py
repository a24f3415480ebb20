"""Splitting a pack layout into forward passes under a token budget.

Memory of a packed forward grows with its length, so a long pack runs as several passes. Each pass is a
set of whole subtrees plus the ancestors they need (recomputed in every pass that needs them); a
coalition is read out in the pass that owns the node holding its last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scar_kernels.ops import PackLayout

__all__ = ["Pass", "subset_layout", "split_passes"]


@dataclass(frozen=True)
class Pass:
    """One forward pass over part of a layout.

    Attributes:
        tokens: int64[n], indices into the full layout's packed tokens, increasing (preorder kept).
        horizon: int32[n], horizons local to this pass.
        nodes: int64[m], the layout nodes in this pass (ancestor-closed), increasing.
        owned: int64[k], the layout nodes whose read-outs this pass delivers (each node is owned by
            exactly one pass).
    """

    tokens: torch.Tensor
    horizon: torch.Tensor
    nodes: torch.Tensor
    owned: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Packed length of this pass."""
        return int(self.tokens.numel())


def subset_layout(layout: PackLayout, nodes: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and local horizons of an ancestor-closed set of layout nodes.

    Because the set is ancestor-closed and kept in preorder, each node's subtree within the subset is
    contiguous, so its local horizon is the number of subset tokens before the node's full horizon.

    Returns:
        (tokens int64[n] into the full pack, horizon int32[n] local to the subset).
    """
    nodes = torch.as_tensor(nodes, dtype=torch.int64).sort().values
    if nodes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    starts = layout.node_start[nodes]
    lens = layout.node_len[nodes]
    tokens = torch.repeat_interleave(starts, lens) + (
        torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    )
    local_h = torch.searchsorted(tokens, layout.horizon[tokens].to(torch.int64), right=False)
    return tokens, local_h.to(torch.int32)


def split_passes(layout: PackLayout, max_tokens: int) -> list[Pass]:
    """Split a layout into passes of at most ``max_tokens`` packed tokens each.

    Each pass is a set of whole subtrees plus the ancestors they need (recomputed in every pass that
    needs them, so ``sum(p.n_tokens)`` may exceed ``layout.n_tokens``). Subtrees are taken greedily in
    preorder; a subtree that fits no pass even on its own is split into its children's subtrees. Whole
    small trees of a forest therefore share passes. Memory is bounded by ``max_tokens``, never by the
    number of coalitions.

    Raises:
        ValueError: if one root-to-leaf chain of nodes is longer than ``max_tokens``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if 0 < layout.n_tokens <= max_tokens:
        return [_whole_layout(layout)]
    return _greedy_passes(layout, max_tokens)


def _whole_layout(layout: PackLayout) -> Pass:
    """The one pass of a layout that fits the budget: what :func:`_greedy_passes` gives then (every node,
    every token, the layout's own horizons), without walking the nodes."""
    nodes = torch.arange(layout.n_nodes, dtype=torch.int64)
    return Pass(torch.arange(layout.n_tokens, dtype=torch.int64), layout.horizon.to(torch.int32), nodes, nodes.clone())


def _greedy_passes(layout: PackLayout, max_tokens: int) -> list[Pass]:
    """:func:`split_passes` by walking the subtrees in preorder."""
    start = layout.node_start.tolist()
    length = layout.node_len.tolist()
    parent = layout.node_parent.tolist()
    # Preorder numbering makes a subtree a contiguous node range [u, subtree_end[u]): the nodes that
    # start before the subtree's token horizon.
    token_end_t = layout.horizon[layout.node_start].to(torch.int64)
    subtree_end = torch.searchsorted(layout.node_start, token_end_t).tolist()
    token_end = token_end_t.tolist()

    def children(u: int) -> list[int]:
        kids, v = [], u + 1
        while v < subtree_end[u]:
            kids.append(v)
            v = subtree_end[v]
        return kids

    def ancestors(u: int) -> list[int]:
        chain = []
        while parent[u] >= 0:
            u = parent[u]
            chain.append(u)
        return chain[::-1]

    passes: list[Pass] = []
    cur_nodes: set[int] = set()
    cur_owned: list[int] = []
    cur_tokens = 0

    def flush() -> None:
        nonlocal cur_nodes, cur_owned, cur_tokens
        if cur_owned:
            nodes = sorted(cur_nodes)
            tokens, local_h = subset_layout(layout, nodes)
            passes.append(
                Pass(tokens, local_h, torch.tensor(nodes, dtype=torch.int64), torch.tensor(sorted(cur_owned)))
            )
        cur_nodes, cur_owned, cur_tokens = set(), [], 0

    def visit(u: int) -> None:
        nonlocal cur_tokens
        chain = ancestors(u)
        sub_tokens = token_end[u] - start[u]
        missing = sum(length[a] for a in chain if a not in cur_nodes)
        if cur_tokens + missing + sub_tokens > max_tokens:
            full = sum(length[a] for a in chain) + sub_tokens
            if full > max_tokens:
                kids = children(u)
                if not kids:
                    raise ValueError(
                        f"max_tokens={max_tokens} is smaller than one coalition's packed chain "
                        f"({full} tokens); raise the budget"
                    )
                # Too big for any pass: u travels as an ancestor of its children's subtrees, and a
                # coalition ending at u is read out in the pass of its last child (which holds u).
                for v in kids:
                    visit(v)
                cur_owned.append(u)
                return
            flush()
            missing = full - sub_tokens
        cur_nodes.update(chain)
        cur_nodes.update(range(u, subtree_end[u]))
        cur_owned.extend(range(u, subtree_end[u]))
        cur_tokens += missing + sub_tokens

    for u, p in enumerate(parent):
        if p < 0:
            visit(u)
    flush()
    return passes
