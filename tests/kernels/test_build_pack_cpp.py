"""The C++ pack builder ``scar_kernels._C.build_pack`` equals the Python reference
``scar_kernels.layout.build_pack_reference``.

Also: the loader ``scar_kernels.extension`` (warns once when the module is missing) and bad-input errors.
"""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scar_kernels import extension, ops
from scar_kernels.layout import build_pack_reference

from extension_marks import needs_extension

FIELDS = ("gather", "position_ids", "horizon", "readout", "inverse", "tree",
          "node_start", "node_len", "node_parent", "node_segment")



@st.composite
def forests(draw):
    """Random forest inputs: several responses with gaps, duplicates, empty/full coalitions, suffixes, caches."""
    n_resp = draw(st.integers(1, 4))
    seg_player, seg_len, offsets, n_players = [], [], [0], []
    prompt_len, suffix_len, cached_len = [], [], []
    for _ in range(n_resp):
        n = draw(st.integers(0, 6))
        kinds = []
        for j in range(n):
            kinds += [-1] * draw(st.integers(0, 1)) + [j]  # optional gap before each player
        kinds += [-1] * draw(st.integers(0, 1))
        seg_player += kinds
        seg_len += [draw(st.integers(1, 3)) for _ in kinds]
        offsets.append(len(seg_player))
        n_players.append(n)
        p = draw(st.integers(1, 5))
        prompt_len.append(p)
        cached_len.append(draw(st.integers(0, p - 1)))
        suffix_len.append(draw(st.integers(0, 3)))
    n_max = max(n_players) + draw(st.integers(0, 2))  # extra all-False columns are allowed
    rows, owners = [], []
    for _ in range(draw(st.integers(0, 14))):
        r = draw(st.integers(0, n_resp - 1))
        kind = draw(st.sampled_from(["random", "empty", "full", "repeat"]))
        if kind == "repeat" and rows:
            i = draw(st.integers(0, len(rows) - 1))
            rows.append(list(rows[i]))
            owners.append(owners[i])
            continue
        bits = [False] * n_max
        for j in range(n_players[r]):
            bits[j] = kind == "full" or (kind in ("random", "repeat") and draw(st.booleans()))
        rows.append(bits)
        owners.append(r)
    coalitions = torch.tensor(rows, dtype=torch.bool).reshape(len(rows), n_max)
    long = lambda xs: torch.tensor(xs, dtype=torch.int64)
    return (coalitions, long(owners), long(offsets), long(seg_player), long(seg_len),
            long(prompt_len), long(suffix_len), long(cached_len))


def assert_same_layout(args: tuple[torch.Tensor, ...]) -> None:
    expected = build_pack_reference(*args).as_tuple()
    got = extension.load().build_pack(*args)
    assert len(got) == len(FIELDS)
    for name, e, g in zip(FIELDS, expected, got):
        assert g.dtype == e.dtype, f"{name}: dtype {g.dtype} != {e.dtype}"
        assert torch.equal(g, e), f"{name}: C++ {g.tolist()} != reference {e.tolist()}"


@needs_extension
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests())
def test_cpp_equals_reference_on_random_forests(args):
    assert_same_layout(args)


def permutation_coalitions(n_players: int, n_pairs: int, seed: int) -> torch.Tensor:
    """All prefixes of antithetic permutation pairs, as permutation sampling evaluates them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_pairs):
        perm = torch.randperm(n_players, generator=g)
        for order in (perm, perm.flip(0)):
            bits = torch.zeros(n_players, dtype=torch.bool)
            rows.append(bits.clone())
            for j in order:
                bits[j] = True
                rows.append(bits.clone())
    return torch.stack(rows)


@needs_extension
def test_cpp_equals_reference_on_permutation_pack_with_two_responses():
    n = 12
    coal = permutation_coalitions(n, 6, seed=3)
    c = coal.shape[0]
    coalitions = torch.cat([coal, coal[: c // 2]])
    owner = torch.cat([torch.zeros(c, dtype=torch.long), torch.ones(c // 2, dtype=torch.long)])
    seg_player = torch.cat([torch.arange(n), torch.tensor([-1]), torch.arange(n)])
    args = (coalitions, owner, torch.tensor([0, n, 2 * n + 1]), seg_player, torch.arange(2 * n + 1) % 4 + 1,
            torch.tensor([20, 7]), torch.tensor([2, 0]), torch.tensor([5, 0]))
    assert_same_layout(args)
    layout = extension.load().build_pack(*args)
    # Sanity of the shared structure: antithetic pairs share the empty and the full coalition.
    assert int(layout[4].max()) + 1 < coalitions.shape[0]


@needs_extension
def test_deep_chain_has_no_recursion_limit():
    n = 5000  # one coalition keeping every player: a chain of 5001 nodes
    args = (torch.ones(1, n, dtype=torch.bool), torch.zeros(1, dtype=torch.long), torch.tensor([0, n]),
            torch.arange(n), torch.ones(n, dtype=torch.long), torch.tensor([3]), torch.tensor([1]),
            torch.tensor([0]))
    gather, position, horizon, readout, *_ , node_parent, node_segment = extension.load().build_pack(*args)
    total = 3 + n + 1
    assert torch.equal(gather, torch.arange(total))
    assert torch.equal(position, torch.arange(total))
    assert torch.equal(horizon, torch.full((total,), total, dtype=torch.int32))
    assert readout.tolist() == [total - 1]
    assert node_parent.tolist() == list(range(-1, n + 1))
    assert node_segment[-1].item() == -2


def valid_args() -> list[torch.Tensor]:
    """Two responses: (2 players, gap in between, suffix 1) and (1 player, no suffix, cached prompt)."""
    return [
        torch.tensor([[True, False], [True, True], [False, False]]),
        torch.tensor([0, 0, 1]),
        torch.tensor([0, 3, 4]),
        torch.tensor([0, -1, 1, 0]),
        torch.tensor([2, 1, 2, 3]),
        torch.tensor([3, 4]),
        torch.tensor([1, 0]),
        torch.tensor([0, 2]),
    ]


def with_arg(i: int, value: torch.Tensor) -> list[torch.Tensor]:
    args = valid_args()
    args[i] = value
    return args


BAD_INPUTS = {
    "coalitions not bool": with_arg(0, torch.zeros(3, 2, dtype=torch.int64)),
    "coalitions 1-D": with_arg(0, torch.zeros(6, dtype=torch.bool)),
    "coalitions non-contiguous": with_arg(0, torch.zeros(2, 3, dtype=torch.bool).t()),
    "owner wrong length": with_arg(1, torch.tensor([0, 0])),
    "owner out of range": with_arg(1, torch.tensor([0, 0, 2])),
    "owner negative": with_arg(1, torch.tensor([0, -1, 1])),
    "owner int32": with_arg(1, torch.tensor([0, 0, 1], dtype=torch.int32)),
    "seg_offsets not starting at 0": with_arg(2, torch.tensor([1, 3, 4])),
    "seg_offsets not ending at S": with_arg(2, torch.tensor([0, 3, 3])),
    "seg_offsets decreasing": with_arg(2, torch.tensor([0, 5, 4])),
    "seg_player skips a player": with_arg(3, torch.tensor([0, -1, 2, 0])),
    "seg_player below -1": with_arg(3, torch.tensor([0, -2, 1, 0])),
    "seg_len zero": with_arg(4, torch.tensor([2, 0, 2, 3])),
    "seg_len wrong length": with_arg(4, torch.tensor([2, 1, 2])),
    "prompt_len zero": with_arg(5, torch.tensor([0, 4])),
    "suffix_len negative": with_arg(6, torch.tensor([-1, 0])),
    "cached_len == prompt_len": with_arg(7, torch.tensor([0, 4])),
    "cached_len negative": with_arg(7, torch.tensor([-1, 0])),
    "True column past the response's players": with_arg(0, torch.tensor([[True, False], [True, True], [True, True]])),
    "fewer columns than an owner's players": with_arg(0, torch.tensor([[True], [True], [False]])),
    "non-contiguous owner": with_arg(1, torch.tensor([0, 9, 0, 9, 1, 9])[::2]),
}


@needs_extension
@pytest.mark.parametrize("name", sorted(n for n in BAD_INPUTS if "non-contiguous" not in n))
def test_bad_input_raises_clear_error(name):
    with pytest.raises((ValueError, TypeError), match="build_pack"):
        ops.build_pack(*BAD_INPUTS[name])


def test_op_accepts_non_contiguous_inputs():
    args = valid_args()
    strided = [torch.stack([a, a], dim=-1)[..., 0] for a in args]  # same values, non-contiguous
    assert not any(a.is_contiguous() for a in strided if a.numel() > 1)
    expected = build_pack_reference(*args).as_tuple()
    assert all(torch.equal(a, b) for a, b in zip(expected, ops.build_pack(*strided).as_tuple()))


@needs_extension
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_rejected_by_compiled_checks_too(name):
    """The compiled function validates on its own (callers may bypass the Python wrapper)."""
    with pytest.raises(ValueError, match="build_pack"):
        extension.load().build_pack(*BAD_INPUTS[name])


@needs_extension
def test_valid_args_fixture_is_valid():
    # Guards the bad-input table: it must fail because of the one changed argument.
    assert_same_layout(tuple(valid_args()))


def test_load_warns_once_when_extension_missing(monkeypatch):
    monkeypatch.setattr(extension, "_module", extension._NOT_LOADED)
    monkeypatch.setitem(sys.modules, "scar_kernels._C", None)  # makes the import raise ImportError
    with pytest.warns(RuntimeWarning, match="pure-Python reference builder"):
        assert extension.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.load() is None  # no second warning
        assert not extension.has_extension()
        assert ops.implementation("build_pack") == "torch"
        # the op falls back to the reference builder
        ref = build_pack_reference(*valid_args())
        assert all(torch.equal(a, b) for a, b in zip(ref.as_tuple(), ops.build_pack(*valid_args()).as_tuple()))
