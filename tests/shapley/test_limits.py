"""Bounds of the estimators: budgets that cover every coalition give the exact values, plans too large to
build are refused before anything is allocated, seeds and hierarchies of any shape get a clear answer."""

from __future__ import annotations

import math
import tracemalloc

import pytest
import torch

from scar.shapley import (
    EXACT_MAX_PLAYERS,
    KERNEL_MAX_PLAYERS,
    MAX_PLAN_ENTRIES,
    MAX_PLAN_ROWS,
    plan,
    shapley,
)
from scar.shapley.base import plan_fits
from scar.shapley.kernel import kernel_default_budget, kernel_design

from tiny_games import TableGame

# --------------------------------------------------------------------------- permutation: exact cap


def _cap(rows: int, n: int) -> int:
    """The smallest even number of permutations whose plan has at least ``rows`` rows."""
    b = -(-rows // (n + 1))
    return max(2, b + b % 2)


@pytest.mark.parametrize("n,budget", [(3, 2 * 10**7), (3, 10**9), (5, 6), (5, 10**30), (8, 32), (1, 2)])
def test_permutation_budget_covering_every_coalition_is_exact(n: int, budget: int) -> None:
    """A budget whose plan has at least ``2**n`` rows is capped there: the exact values, stderr zeros."""
    game = TableGame.random(n, seed=n)
    tracemalloc.start()
    try:
        res = shapley(game, n, method="permutation", budget=budget, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**26  # the exact plan, never `budget` permutations
    exact = shapley(game, n, method="exact")
    torch.testing.assert_close(res.values, exact.values, rtol=0, atol=1e-12)
    assert res.method == "permutation" and res.budget == _cap(2**n, n) <= budget
    assert torch.equal(res.stderr, torch.zeros(n, dtype=torch.float64))
    assert res.n_evals == 2**n
    p = plan(n, method="permutation", budget=budget, seed=0)
    assert p.budget == res.budget and p.n_evals == 2**n


def test_permutation_default_budget_is_exact_up_to_8_players() -> None:
    assert shapley(TableGame.random(8, seed=1), 8, method="permutation", seed=0).budget == 30
    sampled = shapley(TableGame.random(9, seed=1), 9, method="permutation", seed=0)
    assert sampled.budget == 32 and bool((sampled.stderr > 0).all())


def test_permutation_budget_just_below_the_cap_samples() -> None:
    n = 6  # 2**6 = 64 coalitions; 8 permutations plan 56 rows, 10 plan 70
    below = shapley(TableGame.random(n, seed=2), n, method="permutation", budget=8, seed=0)
    assert below.budget == 8 and bool((below.stderr > 0).all())
    at = shapley(TableGame.random(n, seed=2), n, method="permutation", budget=10, seed=0)
    assert at.budget == 10 and at.n_evals == 64 and bool((at.stderr == 0).all())


# --------------------------------------------------------------------------- owen: exact cap


def test_owen_budget_covering_the_exact_plan_is_exact() -> None:
    """[[0, 1, 2], [3, [4, 5]]]: 44 terms, an exact plan of 88 rows (plus ∅ and N); 14 permutations of 6
    players plan 98 rows, 12 plan 84."""
    hierarchy = [[0, 1, 2], [3, [4, 5]]]
    game = TableGame.random(6, seed=3)
    exact = shapley(game, 6, method="owen", hierarchy=hierarchy)
    for budget in (14, 1000, 10**40):
        res = shapley(game, 6, method="owen", hierarchy=hierarchy, budget=budget, seed=0)
        torch.testing.assert_close(res.values, exact.values, rtol=0, atol=1e-12)
        assert res.method == "owen" and res.budget == 14 and res.n_evals == exact.n_evals
        assert torch.equal(res.stderr, torch.zeros(6, dtype=torch.float64))
    sampled = shapley(game, 6, method="owen", hierarchy=hierarchy, budget=12, seed=0)
    assert sampled.budget == 12 and bool((sampled.stderr[:3] > 0).all())


# --------------------------------------------------------------------------- plan size limits


def test_limits_are_documented_constants() -> None:
    assert MAX_PLAN_ROWS == 2**22 and MAX_PLAN_ENTRIES == 2**28 and KERNEL_MAX_PLAYERS == 4096
    # every exact plan fits
    assert 2**EXACT_MAX_PLAYERS <= MAX_PLAN_ROWS and 2**EXACT_MAX_PLAYERS * EXACT_MAX_PLAYERS <= MAX_PLAN_ENTRIES


@pytest.mark.parametrize(
    "method,n,budget,rows",
    [
        ("permutation", 21, 10**9, 10**9 * 22 + 2),
        ("permutation", 30, 2 * 10**5, 2 * 10**5 * 31 + 2),  # 6.2e6 rows
        ("permutation", 2000, 68, 68 * 2001 + 2),  # 136070 rows of 2000 players: 2.7e8 entries
        ("kernel", 40, 10**9, 10**9 + 2),
        ("kernel", 200, 2**22, 2**22 + 2),
        ("owen", 40, 10**9, 10**9 * 41 + 2),  # 40 * 2**20 terms: the exact plan is larger still
    ],
)
def test_plans_above_the_limit_are_refused_before_allocating(method: str, n: int, budget: int, rows: int) -> None:
    hierarchy = [list(range(n // 2)), list(range(n // 2, n))] if method == "owen" else None
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as err:
            plan(n, method=method, budget=budget, seed=0, hierarchy=hierarchy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24
    msg = str(err.value)
    assert f"budget={budget}" in msg and f"{rows} coalitions" in msg
    assert f"MAX_PLAN_ROWS = {MAX_PLAN_ROWS}" in msg and f"MAX_PLAN_ENTRIES = {MAX_PLAN_ENTRIES}" in msg


def test_the_limits_are_inclusive() -> None:
    assert plan_fits(22, MAX_PLAN_ROWS) and not plan_fits(22, MAX_PLAN_ROWS + 1)
    assert plan_fits(2000, MAX_PLAN_ENTRIES // 2000) and not plan_fits(2000, MAX_PLAN_ENTRIES // 2000 + 1)
    with pytest.raises(ValueError, match="MAX_PLAN_ROWS"):
        plan(23, method="kernel", budget=2**22, seed=0)  # 2**22 + 2 rows
    p = plan(2000, method="permutation", budget=66, seed=0)  # 66 * 2001 + 2 rows: 2.64e8 entries
    assert p.budget == 66


@pytest.mark.parametrize("n", [16, 20])
def test_kernel_budget_of_every_coalition_builds(n: int) -> None:
    """Enumerating every size class of 16 or 20 players (torch.combinations would need n**(n/2) entries)."""
    p = plan(n, method="kernel", budget=2**n - 2, seed=0)
    assert p.n_evals == 2**n and p.budget == 2**n - 2
    sizes = p.coalitions.sum(1)
    assert torch.equal(torch.bincount(sizes, minlength=n + 1), torch.tensor([math.comb(n, k) for k in range(n + 1)]))


def test_kernel_design_refuses_huge_budgets_itself() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"budget=1000000000000 would plan 1000000000002 coalitions"):
        kernel_design(60, 10**12, gen)
    # a budget beyond every coalition is capped by the coalitions there are, not refused
    z, w, pairs, _ = kernel_design(4, 10**12, gen)
    assert z.shape == (14, 4) and pairs == 0 and float(w.sum()) == pytest.approx(1.0)


def test_kernel_player_limit() -> None:
    with pytest.raises(ValueError, match=rf"n_players <= KERNEL_MAX_PLAYERS = {KERNEL_MAX_PLAYERS}"):
        plan(KERNEL_MAX_PLAYERS + 1, method="kernel", budget=2, seed=0)
    with pytest.raises(ValueError, match="KERNEL_MAX_PLAYERS"):
        plan(10**12, method="kernel", seed=0)
    assert kernel_default_budget(10**6) == 32 * (10**6 + 1)  # no 2**n of a million bits needed


def test_huge_player_counts_are_refused_clearly() -> None:
    for method in ("permutation", "exact", "kernel"):
        with pytest.raises(ValueError, match="n_players"):
            plan(10**12, method=method, seed=0)
    with pytest.raises(ValueError, match=r"partition of range\(1000000000000\); missing players: \[2, "):
        plan(10**12, method="owen", hierarchy=[0, 1], seed=0)


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", [2**70, 2**63, -1, -(2**70)])
@pytest.mark.parametrize("method", ["permutation", "kernel", "owen"])
def test_out_of_range_seed_is_a_clear_error(seed: int, method: str) -> None:
    kw = {"hierarchy": [[0, 1], [2, 3]], "budget": 2} if method == "owen" else {}
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
        plan(4, method=method, seed=seed, **kw)


def test_largest_seed_works() -> None:
    a = plan(9, method="permutation", budget=4, seed=2**63 - 1)
    b = plan(9, method="permutation", budget=4, seed=2**63 - 1)
    assert torch.equal(a.coalitions, b.coalitions)


# --------------------------------------------------------------------------- deep and odd hierarchies


def _nest(node, depth: int):
    for _ in range(depth):
        node = [node]
    return node


def test_owen_handles_a_3000_deep_hierarchy() -> None:
    """Chains of single-child groups are as deep as the caller likes: no recursion anywhere. A group
    with one child is the child, so the exact values are those of the flat tree."""
    game = TableGame.random(3, seed=5)
    deep = [_nest(0, 3000), _nest([1, _nest(2, 3000)], 3000)]
    got = shapley(game, 3, method="owen", hierarchy=deep)
    want = shapley(game, 3, method="owen", hierarchy=[0, [1, 2]])
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=1e-12)
    sampled = shapley(game, 3, method="owen", hierarchy=deep, budget=2, seed=0)
    assert sampled.budget == 2 and abs(sampled.efficiency_gap) < 1e-12


def test_owen_deep_branching_hierarchy_is_sampled_without_recursion() -> None:
    """A caterpillar [0, [1, [2, [...]]]] of 1500 levels: sampled, each order consistent."""
    n = 1500
    tree: list = [n - 2, n - 1]
    for p in range(n - 3, -1, -1):
        tree = [p, tree]
    p = plan(n, method="owen", hierarchy=tree, budget=2, seed=0)
    assert p.n_players == n and p.budget == 2
    # the prefixes of a consistent order of a caterpillar: {0..k-1}-like sets up to the order inside
    sizes = p.coalitions.sum(1)
    assert int(sizes.min()) == 0 and int(sizes.max()) == n


def test_owen_hierarchy_errors_deep_inside_are_located() -> None:
    deep = [[0], _nest([1, "x"], 2000)]
    with pytest.raises(TypeError, match=r"hierarchy\[1\](\[0\]){2000}\[1\] must be a player index"):
        plan(2, method="owen", hierarchy=deep)
    with pytest.raises(ValueError, match=r"hierarchy\[1\](\[0\]){1500} is an empty group"):
        plan(1, method="owen", hierarchy=[0, _nest([], 1500)])


def test_owen_hierarchy_that_contains_itself_is_refused() -> None:
    cyclic: list = [0, 1]
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match=r"hierarchy\[2\] .*contains itself|hierarchy\[2\] is the same list"):
        plan(2, method="owen", hierarchy=cyclic)
    shared = [0]
    with pytest.raises(ValueError, match="hierarchy"):
        plan(1, method="owen", hierarchy=[shared, shared])


def test_owen_partition_errors_list_a_few_players() -> None:
    with pytest.raises(ValueError, match=r"missing players: \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\.\] \(999 in all\)"):
        plan(1000, method="owen", hierarchy=[0], budget=2)
    with pytest.raises(ValueError, match=r"duplicated players: \[0\]"):
        plan(2, method="owen", hierarchy=[0, [1, 0]])


def test_owen_single_child_groups_do_not_change_values() -> None:
    """A group with one child is the child: the exact values and plan are unchanged by such wrappers."""
    game = TableGame.random(6, seed=8)
    plain = [[0, 1, 2], [3, [4, 5]]]
    wrapped = [[[[0, 1, 2]]], [[3], [[4, 5]]]]
    a = shapley(game, 6, method="owen", hierarchy=plain)
    b = shapley(game, 6, method="owen", hierarchy=wrapped)
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-12)
    assert a.n_evals == b.n_evals and math.isfinite(a.full_value)
