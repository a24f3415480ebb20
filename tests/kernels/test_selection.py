"""The choice between the tree-attention op and FlexAttention: ``ops.fastest_tree_attention`` and its pack.

FlexAttention runs eager here (compiling takes seconds); the timings are injected where a test needs a
given winner, and real (wall clock, tiny pack) where it checks the measurement itself.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scar_kernels.flex as flex
from scar_kernels import ops, selection

from extension_marks import needs_extension

pytestmark = [
    pytest.mark.usefixtures("eager_flex"),
    needs_extension,
]

SMALL = dict(n_players=6, n_pairs=2, prompt=9, response=12)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(ops, "_CHOICES", {})


def small_horizon() -> torch.Tensor:
    return ops.permutation_pack(**SMALL, cached=True).horizon


@settings(max_examples=30, deadline=None)
@given(n_players=st.integers(1, 9), n_pairs=st.integers(1, 4), seed=st.integers(0, 50))
def test_permutation_prefixes_are_antithetic_chains(n_players: int, n_pairs: int, seed: int) -> None:
    rows = selection.permutation_prefixes(n_players, n_pairs, seed)
    assert rows.shape == (2 * n_pairs * (n_players + 1), n_players) and rows.dtype == torch.bool
    for chain in rows.view(2 * n_pairs, n_players + 1, n_players):
        assert chain.sum(dim=1).tolist() == list(range(n_players + 1))  # one player more per row
        assert bool((chain[:-1] <= chain[1:]).all())  # nested: each prefix inside the next
    forward, backward = rows.view(n_pairs, 2, n_players + 1, n_players).unbind(1)
    assert torch.equal(backward, ~forward.flip(1))  # the reversed order's prefixes are the complements


def test_permutation_pack_caches_all_but_the_last_prompt_token() -> None:
    cached = ops.permutation_pack(**SMALL, cached=True)
    whole = ops.permutation_pack(**SMALL, cached=False)
    assert whole.n_tokens == cached.n_tokens + SMALL["prompt"] - 1
    rows = selection.permutation_prefixes(SMALL["n_players"], SMALL["n_pairs"])
    assert cached.n_distinct == whole.n_distinct == torch.unique(rows, dim=0).shape[0]
    with pytest.raises(ValueError, match="one token per player"):
        ops.permutation_pack(n_players=8, response=4)
    with pytest.raises(ValueError, match=">= 1"):
        selection.permutation_prefixes(0, 1)


@pytest.mark.parametrize("winner", ["kernel", "flex"])
def test_the_faster_candidate_is_chosen(winner: str) -> None:
    times = {"kernel": 2.0, "flex": 1.0} if winner == "flex" else {"kernel": 1.0, "flex": 2.0}
    calls: list[str] = []

    def timer(name, fn):
        calls.append(name)
        fn()
        return times[name]

    choice = ops.fastest_tree_attention(
        "cpu", torch.float32, 4, 2, 8, horizon=small_horizon(), prefix_len=8, timer=timer
    )
    assert calls == ["kernel", "flex"]
    assert choice.choice == winner and choice.reason == ""
    assert (choice.kernel_ms, choice.flex_ms) == (times["kernel"], times["flex"])
    assert choice.n_tokens == small_horizon().numel() and choice.prefix_len == 8
    assert winner in choice.describe()


def test_a_disagreeing_flex_is_never_chosen(monkeypatch) -> None:
    real = ops.flex_tree_attention
    monkeypatch.setattr(ops, "flex_tree_attention", lambda *a, **k: real(*a, **k) + 1.0)
    choice = ops.fastest_tree_attention(
        "cpu", torch.float32, 4, 4, 8, horizon=small_horizon(), prefix_len=8, timer=lambda name, fn: 0.0
    )
    assert choice.choice == "kernel" and choice.flex_ms is None and "differs" in choice.reason


def test_a_failing_or_missing_flex_leaves_the_op(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("inductor failed")

    monkeypatch.setattr(ops, "flex_tree_attention", broken)
    choice = ops.fastest_tree_attention("cpu", torch.float32, 2, 2, 8, horizon=small_horizon(), prefix_len=8)
    assert choice.choice == "kernel" and "inductor failed" in choice.reason and choice.kernel_ms > 0
    monkeypatch.setattr(flex, "_flex_module", lambda: None)
    choice = ops.fastest_tree_attention("cpu", torch.float32, 2, 2, 8, horizon=small_horizon(), prefix_len=8)
    assert choice.choice == "kernel" and "flex_attention" in choice.reason


def test_the_measurement_runs_once_per_layout(monkeypatch) -> None:
    monkeypatch.setattr(ops, "permutation_pack", functools.partial(ops.permutation_pack, 6, 2, response=12))
    runs: list[int] = []
    real = ops.tree_attention
    monkeypatch.setattr(ops, "tree_attention", lambda *a: runs.append(1) or real(*a))
    first = ops.fastest_tree_attention("cpu", torch.float32, 4, 2, 8, prefix_len=8, warmup=1, repeats=2)
    assert first.choice in selection.CANDIDATES and first.kernel_ms > 0 and first.flex_ms is not None
    assert first.n_tokens == ops.permutation_pack(prompt=9, cached=True).n_tokens
    measured = len(runs)
    assert measured >= 3  # warm-up, timed calls and the agreement check
    assert ops.fastest_tree_attention("cpu", torch.float32, 4, 2, 8, prefix_len=8) is first
    assert len(runs) == measured  # cached
    other = ops.fastest_tree_attention("cpu", torch.float32, 4, 4, 8, prefix_len=8, warmup=1, repeats=2)
    assert other is not first and len(runs) > measured  # another head layout is measured again


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype=torch.float64), "float32, float16 or bfloat16"),
        (dict(num_heads=3, num_kv_heads=2), "num_heads % num_kv_heads"),
        (dict(head_dim=0), "positive"),
        (dict(prefix_len=-1), "prefix_len"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = dict(device="cpu", dtype=torch.float32, num_heads=4, num_kv_heads=2, head_dim=8) | kwargs
    with pytest.raises(ValueError, match=match):
        ops.fastest_tree_attention(**args)
