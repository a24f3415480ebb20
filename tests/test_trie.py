"""Properties of the packed coalition layout (scar.trie): builder, mask, pass splitting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scar.trie import (
    PackLayout,
    build_pack,
    build_pack_reference,
    dense_mask,
    split_passes,
    subset_layout,
)

# ----------------------------------------------------------------------------- problem generation


@st.composite
def forests(draw, max_responses: int = 3, max_coalitions: int = 10):
    """Random valid builder inputs plus a plain description to check against."""
    n_resp = draw(st.integers(1, max_responses))
    responses = []
    for _ in range(n_resp):
        n_seg = draw(st.integers(0, 5))
        kinds = draw(st.lists(st.booleans(), min_size=n_seg, max_size=n_seg))  # True: player, False: gap
        seg_player, p = [], 0
        for is_player in kinds:
            seg_player.append(p if is_player else -1)
            p += is_player
        prompt = draw(st.integers(1, 4))
        responses.append(dict(
            seg_player=seg_player,
            seg_len=draw(st.lists(st.integers(1, 3), min_size=n_seg, max_size=n_seg)),
            prompt=prompt,
            suffix=draw(st.integers(0, 2)),
            cached=draw(st.integers(0, prompt - 1)),
            n_players=p,
        ))
    n_max = max([r["n_players"] for r in responses] + [draw(st.integers(0, 2))])
    n_coal = draw(st.integers(0, max_coalitions))
    owner = draw(st.lists(st.integers(0, n_resp - 1), min_size=n_coal, max_size=n_coal))
    rows = []
    for r in owner:
        bits = draw(st.lists(st.booleans(), min_size=responses[r]["n_players"], max_size=responses[r]["n_players"]))
        rows.append(bits + [False] * (n_max - len(bits)))
    if rows and draw(st.booleans()):  # force duplicates
        owner.append(owner[0])
        rows.append(list(rows[0]))
    return responses, owner, rows, n_max


def to_args(responses, owner, rows, n_max):
    seg_counts = [len(r["seg_player"]) for r in responses]
    return (
        torch.tensor(rows, dtype=torch.bool).reshape(len(rows), n_max),
        torch.tensor(owner, dtype=torch.int64),
        torch.tensor([0] + seg_counts, dtype=torch.int64).cumsum(0),
        torch.tensor([p for r in responses for p in r["seg_player"]], dtype=torch.int64),
        torch.tensor([n for r in responses for n in r["seg_len"]], dtype=torch.int64),
        torch.tensor([r["prompt"] for r in responses], dtype=torch.int64),
        torch.tensor([r["suffix"] for r in responses], dtype=torch.int64),
        torch.tensor([r["cached"] for r in responses], dtype=torch.int64),
    )


def expected_sequence(responses, r: int, bits: list[bool]) -> list[int]:
    """Flat source indices of a coalition's kept sequence, cached prompt tokens excluded (the naive way)."""
    base = sum(x["prompt"] + sum(x["seg_len"]) + x["suffix"] for x in responses[:r])
    resp = responses[r]
    out = list(range(base + resp["cached"], base + resp["prompt"]))
    pos = base + resp["prompt"]
    for p, n in zip(resp["seg_player"], resp["seg_len"]):
        if p == -1 or bits[p]:
            out.extend(range(pos, pos + n))
        pos += n
    out.extend(range(pos, pos + resp["suffix"]))
    return out


def node_of(layout: PackLayout, k: int) -> int:
    return int(torch.searchsorted(layout.node_start, torch.tensor(k), right=True)) - 1


def path_tokens(layout: PackLayout, k: int) -> list[int]:
    """Packed indices of the sequence ending at token k, walking up the ancestors."""
    u = node_of(layout, k)
    out = list(range(int(layout.node_start[u]), k + 1))
    u = int(layout.node_parent[u])
    while u >= 0:
        s, n = int(layout.node_start[u]), int(layout.node_len[u])
        out = list(range(s, s + n)) + out
        u = int(layout.node_parent[u])
    return out


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- builder properties


@SETTINGS
@given(forests())
def test_readout_walk_reproduces_each_kept_sequence(problem) -> None:
    responses, owner, rows, n_max = problem
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
    responses, owner, rows, n_max = problem
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
    responses, owner, rows, n_max = problem
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
    mask = dense_mask(layout.horizon)
    assert mask.shape == (1, 1, layout.n_tokens, layout.n_tokens) and mask.dtype == torch.float32
    visible = mask[0, 0] == 0
    for q in range(layout.n_tokens):
        assert sorted(visible[q].nonzero().flatten().tolist()) == path_tokens(layout, q)


def test_dense_mask_cached_columns_and_dtype() -> None:
    horizon = torch.tensor([3, 2, 3], dtype=torch.int32)  # a root token with two one-token children
    mask = dense_mask(horizon, cached=2, dtype=torch.float16)
    assert mask.shape == (1, 1, 3, 5) and mask.dtype == torch.float16
    assert bool((mask[0, 0, :, :2] == 0).all())
    blocked = mask[0, 0, :, 2:] != 0
    assert blocked.tolist() == [[False, True, True], [False, False, True], [False, True, False]]
    assert float(mask[0, 0, 0, 3]) == torch.finfo(torch.float16).min
    with pytest.raises(ValueError, match="floating"):
        dense_mask(horizon, dtype=torch.int32)


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


def test_dispatcher_reference_and_native_agree() -> None:
    problem = ([dict(seg_player=[0, -1, 1, 2], seg_len=[2, 1, 3, 1], prompt=3, suffix=1, cached=1, n_players=3),
                dict(seg_player=[0, 1], seg_len=[1, 2], prompt=2, suffix=0, cached=0, n_players=2)],
               [0, 1, 0, 0, 1], [[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]], 3)
    args = to_args(*problem)
    ref = build_pack_reference(*args)
    forced = build_pack(*args, native=False)
    assert all(torch.equal(a, b) for a, b in zip(ref.as_tuple(), forced.as_tuple()))
    try:
        from scar import _C  # noqa: F401
        native_ok = hasattr(_C, "build_pack")
    except ImportError:
        native_ok = False
    if not native_ok:
        with pytest.raises(RuntimeError, match="not built"):
            build_pack(*args, native=True)
        pytest.skip("scar._C.build_pack is not built")
    got = build_pack(*args, native=True)
    for name, a, b in zip(("gather", "position_ids", "horizon", "readout", "inverse", "tree", "node_start",
                           "node_len", "node_parent", "node_segment"), ref.as_tuple(), got.as_tuple()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


@settings(max_examples=60, deadline=None)
@given(forests(max_coalitions=16), st.data())
def test_native_builder_matches_reference(problem, data) -> None:
    try:
        from scar import _C
    except ImportError:
        pytest.skip("scar._C is not built")
    if not hasattr(_C, "build_pack"):
        pytest.skip("scar._C has no build_pack")
    args = to_args(*problem)
    ref = build_pack_reference(*args)
    got = build_pack(*args, native=True)
    assert all(torch.equal(a, b) for a, b in zip(ref.as_tuple(), got.as_tuple()))


# ----------------------------------------------------------------------------- pass splitting


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
    full = dense_mask(layout.horizon)[0, 0]
    for p in passes:
        assert 0 < p.n_tokens <= budget
        nodes = set(p.nodes.tolist())
        assert all(parents[u] < 0 or parents[u] in nodes for u in nodes)  # ancestor-closed
        assert set(p.owned.tolist()) <= nodes
        # the pass mask is the full mask restricted to the pass tokens
        local = dense_mask(p.horizon)[0, 0]
        assert torch.equal(local, full[p.tokens][:, p.tokens])
    # when the whole forest fits, one pass computes exactly the trie
    if layout.n_tokens <= budget and layout.n_tokens:
        assert len(passes) == 1 and passes[0].n_tokens == layout.n_tokens


def test_split_passes_packs_whole_small_trees_together() -> None:
    problem = ([dict(seg_player=[0], seg_len=[2], prompt=2, suffix=1, cached=0, n_players=1)] * 4,
               [0, 1, 2, 3, 0, 1, 2, 3], [[1], [1], [1], [1], [0], [0], [0], [0]], 1)
    layout = build_pack_reference(*to_args(*problem))
    assert layout.n_tokens == 4 * (2 + 2 + 1 + 1)  # root, player, 2 suffix leaves per tree
    passes = split_passes(layout, 12)
    assert [p.n_tokens for p in passes] == [12, 12]  # two whole trees per pass, no recomputation
    tokens, horizon = subset_layout(layout, [0, 1, 2])
    assert tokens.tolist() == [0, 1, 2, 3, 4] and horizon.tolist() == [5, 5, 5, 5, 5]
