"""Properties of the packed coalition layout contract: the reference builder and the mask of a horizon."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from scar_kernels.layout import additive_mask, build_pack_reference

from layout_problems import expected_sequence, forests, path_tokens, to_args

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- builder properties


@SETTINGS
@given(forests())
def test_readout_walk_reproduces_each_kept_sequence(problem) -> None:
    responses, owner, rows, _n_max = problem
    layout = build_pack_reference(*to_args(*problem))
    assert layout.readout.shape == (len(rows),)
    for c, (r, bits) in enumerate(zip(owner, rows)):
        path = path_tokens(layout, int(layout.readout[c]))
        assert layout.gather[path].tolist() == expected_sequence(responses, r, bits)
        # positions count the whole sequence before the token, cached prompt included
        start = responses[r]["cached"]
        assert layout.position_ids[path].tolist() == list(range(start, start + len(path)))
        assert set(layout.tree[path].tolist()) == {r}


@SETTINGS
@given(forests())
def test_positions_horizon_and_preorder(problem) -> None:
    layout = build_pack_reference(*to_args(*problem))
    n = layout.n_tokens
    idx = torch.arange(n)
    h = layout.horizon.to(torch.int64)
    assert layout.horizon.dtype == torch.int32
    assert bool((h > idx).all()) and bool((h <= n).all())
    starts, lens, parents = layout.node_start.tolist(), layout.node_len.tolist(), layout.node_parent.tolist()
    # nodes tile the pack in preorder, each contiguous and non-empty
    assert starts == sorted(starts) and all(x >= 1 for x in lens)
    assert [s + ln for s, ln in zip(starts, lens)][:-1] == starts[1:]
    assert sum(lens) == n
    for u, (s, ln, p) in enumerate(zip(starts, lens, parents)):
        # positions rise by exactly 1 along a node; a child continues its parent
        pos = layout.position_ids[s: s + ln].tolist()
        assert pos == list(range(pos[0], pos[0] + ln))
        if p >= 0:
            assert p < u  # preorder: parents first
            assert pos[0] == int(layout.position_ids[starts[p] + lens[p] - 1]) + 1
            # a child lies inside its parent's subtree
            assert starts[p] + lens[p] <= s < int(layout.horizon[starts[p]])
        # one horizon per node = end of its subtree = start of the next node that is not a descendant
        assert len(set(layout.horizon[s: s + ln].tolist())) == 1
        end = int(layout.horizon[s])
        inside = [v for v in range(u + 1, len(starts)) if starts[v] < end]
        assert all(_is_descendant(parents, v, u) for v in inside)
        assert all(not _is_descendant(parents, v, u) for v in range(u + 1, len(starts)) if starts[v] >= end)


def _is_descendant(parents: list[int], v: int, u: int) -> bool:
    while v >= 0:
        if v == u:
            return True
        v = parents[v]
    return False


@SETTINGS
@given(forests())
def test_children_ordered_and_trees_in_response_order(problem) -> None:
    responses, _owner, _rows, _n_max = problem
    layout = build_pack_reference(*to_args(*problem))
    parents, segs = layout.node_parent.tolist(), layout.node_segment.tolist()
    roots = [u for u, p in enumerate(parents) if p < 0]
    assert len(roots) == len(responses)  # one tree per response, even without coalitions
    assert [int(layout.tree[layout.node_start[u]]) for u in roots] == list(range(len(responses)))
    assert all(segs[u] == -1 for u in roots)
    for u in range(len(parents)):
        kids = [segs[v] for v in range(len(parents)) if parents[v] == u]
        order = [s for s in kids if s >= 0]
        assert order == sorted(order) and len(set(order)) == len(order)  # one node per segment, ascending
        assert kids.count(-2) <= 1 and (-2 not in kids or kids[-1] == -2)  # suffix leaf last


@SETTINGS
@given(forests())
def test_dedupe_and_minimality(problem) -> None:
    responses, owner, rows, _n_max = problem
    layout = build_pack_reference(*to_args(*problem))
    # inverse: same id iff same (owner, bits); ids in order of first occurrence
    keys = [(r, tuple(b)) for r, b in zip(owner, rows)]
    first = {}
    for k in keys:
        first.setdefault(k, len(first))
    assert layout.inverse.tolist() == [first[k] for k in keys]
    assert layout.n_distinct == len(first)
    # duplicates share their read-out; distinct coalitions never do
    for (c1, k1) in enumerate(keys):
        for (c2, k2) in enumerate(keys):
            assert (layout.readout[c1] == layout.readout[c2]) == (k1 == k2)
    # the pack holds each distinct prefix once: N = sum over distinct node paths of their lengths
    nodes = set()
    for r, bits in first:
        resp = responses[r]
        path: tuple = (r,)
        nodes.add(path)
        for s, p in enumerate(resp["seg_player"]):
            if p == -1 or bits[p]:
                path = path + (s,)
                nodes.add(path)
        if resp["suffix"]:
            nodes.add(path + ("suffix",))
    assert layout.n_nodes == len(nodes) + sum(1 for r in range(len(responses)) if (r,) not in nodes)


@SETTINGS
@given(forests())
def test_dense_mask_is_exactly_each_token_path(problem) -> None:
    layout = build_pack_reference(*to_args(*problem))
    mask = additive_mask(layout.horizon)
    assert mask.shape == (layout.n_tokens, layout.n_tokens) and mask.dtype == torch.float32
    visible = mask == 0
    for q in range(layout.n_tokens):
        assert sorted(visible[q].nonzero().flatten().tolist()) == path_tokens(layout, q)


def test_dense_mask_cached_columns_and_dtype() -> None:
    horizon = torch.tensor([3, 2, 3], dtype=torch.int32)  # a root token with two one-token children
    mask = additive_mask(horizon, 2, dtype=torch.float16)
    assert mask.shape == (3, 5) and mask.dtype == torch.float16
    assert bool((mask[:, :2] == 0).all())
    blocked = mask[:, 2:] != 0
    assert blocked.tolist() == [[False, True, True], [False, False, True], [False, True, False]]
    assert float(mask[0, 3]) == torch.finfo(torch.float16).min
    assert additive_mask(horizon, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="floating"):
        additive_mask(horizon, dtype=torch.int32)


def test_small_example_by_hand() -> None:
    # prompt of 2 (1 cached); segments: player0 (2 tokens), gap (1), player1 (1); suffix 1
    coal = torch.tensor([[1, 1], [0, 1], [1, 1], [0, 0]], dtype=torch.bool)
    layout = build_pack_reference(coal, torch.zeros(4, dtype=torch.int64), torch.tensor([0, 3]),
                                  torch.tensor([0, -1, 1]), torch.tensor([2, 1, 1]), torch.tensor([2]),
                                  torch.tensor([1]), torch.tensor([1]))
    # source: prompt 0,1 | p0 2,3 | gap 4 | p1 5 | suffix 6
    # tree: root[1] -> p0[2,3] -> gap[4] -> p1[5] -> sfx[6] ; root -> gap[4] -> p1[5] -> sfx[6] ; gap -> sfx
    assert layout.gather.tolist() == [1, 2, 3, 4, 5, 6, 4, 5, 6, 6]
    assert layout.position_ids.tolist() == [1, 2, 3, 4, 5, 6, 2, 3, 4, 3]
    assert layout.horizon.tolist() == [10, 6, 6, 6, 6, 6, 10, 9, 9, 10]
    assert layout.readout.tolist() == [5, 8, 5, 9]
    assert layout.inverse.tolist() == [0, 1, 0, 2]
    assert layout.node_segment.tolist() == [-1, 0, 1, 2, -2, 1, 2, -2, -2]
    assert layout.node_parent.tolist() == [-1, 0, 1, 2, 3, 0, 5, 6, 5]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.__setitem__(0, a[0].to(torch.int64)), "bool"),
        (lambda a: a.__setitem__(1, torch.tensor([0, 5])), "owner"),
        (lambda a: a.__setitem__(1, torch.tensor([0])), "owner"),
        (lambda a: a.__setitem__(2, torch.tensor([0, 4])), "seg_offsets"),
        (lambda a: a.__setitem__(3, torch.tensor([1, -1, 0])), "seg_player"),
        (lambda a: a.__setitem__(4, torch.tensor([2, 0, 1])), "seg_len"),
        (lambda a: a.__setitem__(5, torch.tensor([0])), "prompt_len"),
        (lambda a: a.__setitem__(6, torch.tensor([-1])), "suffix_len"),
        (lambda a: a.__setitem__(7, torch.tensor([2])), "cached_len"),
        (lambda a: a.__setitem__(0, torch.ones(2, 3, dtype=torch.bool)), "past"),
        (lambda a: a.__setitem__(4, torch.tensor([2.0, 1.0, 1.0])), "int64"),
        (lambda a: a.__setitem__(0, torch.ones(2, 1, dtype=torch.bool)), "columns"),
    ],
)
def test_invalid_input_raises_value_error(mutate, match) -> None:
    args = [torch.tensor([[1, 0], [0, 1]], dtype=torch.bool), torch.tensor([0, 0]), torch.tensor([0, 3]),
            torch.tensor([0, -1, 1]), torch.tensor([2, 1, 1]), torch.tensor([2]), torch.tensor([1]),
            torch.tensor([1])]
    build_pack_reference(*args)  # the unmutated input is valid
    mutate(args)
    with pytest.raises(ValueError, match=match):
        build_pack_reference(*args)
