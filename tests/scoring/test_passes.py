"""Splitting a pack layout into passes under a token budget (:mod:`scar.scoring.passes`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scar.scoring.passes import _greedy_passes, split_passes, subset_layout
from scar_kernels.layout import additive_mask, build_pack_reference

from layout_problems import forests, to_args

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(forests(max_coalitions=14), st.integers(1, 40))
def test_split_passes_bounded_ancestor_closed_and_exact(problem, budget) -> None:
    layout = build_pack_reference(*to_args(*problem))
    parents = layout.node_parent.tolist()
    lens = layout.node_len.tolist()

    def chain(u: int) -> int:
        total = 0
        while u >= 0:
            total, u = total + lens[u], parents[u]
        return total

    longest_chain = max((chain(u) for u in range(layout.n_nodes)), default=0)
    if longest_chain > budget:
        with pytest.raises(ValueError, match="max_tokens"):
            split_passes(layout, budget)
        return
    passes = split_passes(layout, budget)
    owned = sorted(u for p in passes for u in p.owned.tolist())
    assert owned == list(range(layout.n_nodes))  # each node delivered by exactly one pass
    full = additive_mask(layout.horizon)
    for p in passes:
        assert 0 < p.n_tokens <= budget
        nodes = set(p.nodes.tolist())
        assert all(parents[u] < 0 or parents[u] in nodes for u in nodes)  # ancestor-closed
        assert set(p.owned.tolist()) <= nodes
        # the pass mask is the full mask restricted to the pass tokens
        local = additive_mask(p.horizon)
        assert torch.equal(local, full[p.tokens][:, p.tokens])
    # when the whole forest fits, one pass computes exactly the trie
    if layout.n_tokens <= budget and layout.n_tokens:
        assert len(passes) == 1 and passes[0].n_tokens == layout.n_tokens
        # the shortcut for a layout that fits gives the pass the subtree walk gives
        (walked,) = _greedy_passes(layout, budget)
        for name in ("tokens", "horizon", "nodes", "owned"):
            a, b = getattr(passes[0], name), getattr(walked, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_split_passes_packs_whole_small_trees_together() -> None:
    problem = ([dict(seg_player=[0], seg_len=[2], prompt=2, suffix=1, cached=0, n_players=1)] * 4,
               [0, 1, 2, 3, 0, 1, 2, 3], [[1], [1], [1], [1], [0], [0], [0], [0]], 1)
    layout = build_pack_reference(*to_args(*problem))
    assert layout.n_tokens == 4 * (2 + 2 + 1 + 1)  # root, player, 2 suffix leaves per tree
    passes = split_passes(layout, 12)
    assert [p.n_tokens for p in passes] == [12, 12]  # two whole trees per pass, no recomputation
    tokens, horizon = subset_layout(layout, [0, 1, 2])
    assert tokens.tolist() == [0, 1, 2, 3, 4] and horizon.tolist() == [5, 5, 5, 5, 5]
