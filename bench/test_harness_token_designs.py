"""The token-aware designs of ``scar_bench.token_designs``: truncations, their probabilities by enumeration,
exactness on additive games, efficiency, unbiasedness of the sibling design, and the study's accounting."""

import itertools
import math

import numpy as np
import pytest

from scar.shapley import shapley
from scar_bench.methods import bitmask, exact_shapley, trie_lower_bound
from scar_bench.token_designs import (
    _kernel_size_probs,
    path_truncations,
    prefix_reuse,
    siblings,
    summarize_designs,
    token_design_study,
    truncation_probability,
)
from scar_bench.workloads import make_instance

from bench_accuracy import TINY_WORKLOAD


def _table(n, seed, additive=False):
    rng = np.random.default_rng(seed)
    masks = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    if additive:
        return masks @ rng.normal(size=n) + 0.5, rng
    return rng.normal(size=2**n), rng


def _exact(table, n):
    return shapley(lambda c: table[bitmask(c.numpy())], n, method="exact").values.numpy()


def test_path_truncations_are_the_response_order_prefixes():
    path = np.array([[0, 1, 0, 1, 1]], bool)
    got = path_truncations(path)
    np.testing.assert_array_equal(got, [[0, 1, 0, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 1, 1]])


@pytest.mark.parametrize("n", [4, 5])
def test_truncation_probability_matches_enumeration(n):
    """Enumerate every path the design can draw (size, coalition, and its complement) with its probability,
    and add up where each coalition is a truncation of the pair."""
    probs = _kernel_size_probs(n)
    want = np.zeros(2**n)
    for s in range(1, n):
        for members in itertools.combinations(range(n), s):
            path = np.zeros(n, bool)
            path[list(members)] = True
            seen = np.unique(bitmask(path_truncations(np.array([path, ~path]))))
            want[seen] += probs[s] / math.comb(n, s)
    coalitions = ((np.arange(1, 2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    np.testing.assert_allclose(truncation_probability(coalitions, probs), want[1:], rtol=1e-12, atol=0)


def test_prefix_reuse_is_exact_on_additive_games_and_efficient():
    n = 7
    table, _ = _table(n, 0, additive=True)
    values, plan = prefix_reuse(table, n, pairs=6, seed=1)
    np.testing.assert_allclose(values, _exact(table, n), atol=1e-9)
    rough, _ = _table(n, 2)
    values, _ = prefix_reuse(rough, n, pairs=6, seed=1)
    assert values.sum() == pytest.approx(rough[-1] - rough[0], abs=1e-9)
    assert len(np.unique(bitmask(plan))) == len(plan)  # every coalition once, ∅ and N included


def test_siblings_are_efficient_and_unbiased():
    n = 5
    table, _ = _table(n, 3)
    exact = _exact(table, n)
    runs = np.array([siblings(table, n, groups=30, seed=s, r=2)[0] for s in range(400)])
    np.testing.assert_allclose(runs.sum(1), table[-1] - table[0], atol=1e-9)
    stderr = runs.std(0) / math.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(0) - exact) < 4 * stderr + 1e-12)


def test_siblings_keep_the_prefix_and_the_size():
    n = 8
    table, _ = _table(n, 4)
    _, plan = siblings(table, n, groups=1, seed=5, r=3)
    group = plan[:-2]  # the group: S, its complement, then (sibling, complement) pairs
    assert len(group) == 8 and len({int(row.sum()) for row in group[::2]}) == 1
    np.testing.assert_array_equal(group[1::2], ~group[::2])


def test_the_study_charges_the_trie_tokens_of_the_plan():
    inst = make_instance(TINY_WORKLOAD)
    exact = exact_shapley(inst)
    rows = token_design_study(
        inst, exact, budgets={"prefix-reuse": [3], "siblings-r1": [3], "kernel": [10]}, seeds=[0, 1]
    )
    assert {r["design"] for r in rows} == {"prefix-reuse", "siblings-r1", "kernel"} and len(rows) == 6
    n = len(inst.players)
    _, plan = prefix_reuse(exact[1], n, 3, 0)
    first = next(r for r in rows if r["design"] == "prefix-reuse" and r["seed"] == 0)
    assert first["tokens"] == trie_lower_bound(inst, plan) and first["coalitions"] == len(plan)
    assert all(r["error"] >= 0 and np.isfinite(r["error"]) for r in rows)
    summary = summarize_designs(rows)
    assert [s["seeds"] for s in summary] == [2, 2, 2]
    with pytest.raises(ValueError, match="unknown design"):
        token_design_study(inst, exact, budgets={"nope": [1]}, seeds=[0])
