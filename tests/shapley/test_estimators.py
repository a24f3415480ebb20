"""Tests of scar.shapley: accuracy on known games, plan dedupe and batching, errors, seeds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from scar.shapley import (
    DEFAULT_PERMUTATIONS,
    EXACT_MAX_PLAYERS,
    METHODS,
    OWEN_EXACT_MAX_TERMS,
    ShapleyResult,
    shapley,
)
from scar.shapley.kernel import kernel_design

from tiny_games import (
    AdditiveGame,
    CountingValueFn,
    GloveGame,
    TableGame,
    UnanimityGame,
    WeightedVotingGame,
    brute_force_owen,
    brute_force_shapley,
)

GAMES = {
    "additive": AdditiveGame([0.5, -1.0, 2.0, 0.25, 3.0], constant=1.5),
    "unanimity": UnanimityGame(6, [1, 3, 4]),
    "voting": WeightedVotingGame([4, 3, 2, 1, 1], quota=6),
    "glove": GloveGame(6, left=[0, 1]),
    "random": TableGame.random(6, seed=3),
}

# Sampled estimates must lie within Z_TOL of their reported standard errors (plus rounding slack).
Z_TOL = 4.5


# --------------------------------------------------------------------------- reference games


def test_brute_force_matches_closed_forms() -> None:
    """The brute-force reference itself is right where a closed form exists."""
    for name in ("additive", "unanimity"):
        game = GAMES[name]
        assert torch.allclose(brute_force_shapley(game, game.n), game.reference(), atol=1e-12)
    # One left glove, r = 3 right gloves: left gets r/(r+1) = 3/4, each right 1/(r(r+1)) = 1/12.
    glove = GloveGame(4, left=[0])
    expected = torch.tensor([3 / 4, 1 / 12, 1 / 12, 1 / 12], dtype=torch.float64)
    assert torch.allclose(glove.reference(), expected, atol=1e-12)


# --------------------------------------------------------------------------- exact methods


@pytest.mark.parametrize("name", sorted(GAMES))
def test_exact_matches_reference(name: str) -> None:
    game = GAMES[name]
    res = shapley(game, game.n, method="exact")
    assert torch.allclose(res.values, game.reference(), atol=1e-10, rtol=0)
    assert res.stderr is None and res.budget is None and res.method == "exact"
    assert res.n_evals == 2**game.n


@pytest.mark.parametrize("name", sorted(GAMES))
def test_kernel_with_full_budget_is_exact(name: str) -> None:
    game = GAMES[name]
    res = shapley(game, game.n, method="kernel", budget=2**game.n - 2, seed=0)
    assert torch.allclose(res.values, game.reference(), atol=1e-10, rtol=0)
    assert torch.equal(res.stderr, torch.zeros(game.n, dtype=torch.float64))
    assert res.n_evals == 2**game.n


@pytest.mark.parametrize("name", sorted(GAMES))
@pytest.mark.parametrize("singletons", ["flat", "nested", "one_group"])
def test_owen_with_singleton_groups_is_shapley(name: str, singletons: str) -> None:
    game = GAMES[name]
    hierarchy = {
        "flat": list(range(game.n)),
        "nested": [[i] for i in range(game.n)],
        "one_group": [list(range(game.n))],
    }[singletons]
    res = shapley(game, game.n, method="owen", hierarchy=hierarchy)
    assert res.stderr is None
    assert torch.allclose(res.values, game.reference(), atol=1e-10, rtol=0)


def test_exact_on_random_game_n7_matches_permutation_definition() -> None:
    game = TableGame.random(7, seed=11)
    res = shapley(game, 7, method="exact")
    assert torch.allclose(res.values, brute_force_shapley(game, 7), atol=1e-10, rtol=0)


def test_single_player_every_method() -> None:
    game = AdditiveGame([2.5], constant=-1.0)
    for method, kw in [("exact", {}), ("permutation", {}), ("kernel", {}), ("kernel", {"budget": 2}),
                       ("owen", {"hierarchy": [0]}), ("owen", {"hierarchy": [0], "budget": 2})]:
        res = shapley(game, 1, method=method, seed=0, **kw)
        assert torch.allclose(res.values, torch.tensor([2.5], dtype=torch.float64), atol=1e-12)
        assert res.base_value == -1.0 and res.full_value == 1.5


# --------------------------------------------------------------------------- Owen


def test_owen_hand_computed_majority_and_glove() -> None:
    """Three players, unions {0, 1} and {2}. The consistent orders are (0,1,2), (1,0,2), (2,0,1),
    (2,1,0), each with probability 1/4.

    Majority game v(S) = 1 if |S| >= 2. The player completing a majority is the second in the order:
    (0,1,2) -> 1, (1,0,2) -> 0, (2,0,1) -> 0, (2,1,0) -> 1. Owen = (1/2, 1/2, 0), while Shapley
    is (1/3, 1/3, 1/3): the union {0, 1} is a majority on its own, so player 2 is never pivotal.

    Glove game, left = {0}, right = {1, 2}: a pair forms when 0 and a right-glove holder are both
    in. Pivotal player: (0,1,2) -> 1, (1,0,2) -> 0, (2,0,1) -> 0, (2,1,0) -> 0. Owen = (3/4, 1/4, 0)
    versus Shapley (2/3, 1/6, 1/6).
    """
    majority = WeightedVotingGame([1, 1, 1], quota=2)
    glove = GloveGame(3, left=[0])
    hierarchy = [[0, 1], [2]]
    for game, owen, shap in [
        (majority, [1 / 2, 1 / 2, 0.0], [1 / 3, 1 / 3, 1 / 3]),
        (glove, [3 / 4, 1 / 4, 0.0], [2 / 3, 1 / 6, 1 / 6]),
    ]:
        exact = shapley(game, 3, method="owen", hierarchy=hierarchy)
        assert torch.allclose(exact.values, torch.tensor(owen, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(game.reference(), torch.tensor(shap, dtype=torch.float64), atol=1e-12)
        sampled = shapley(game, 3, method="owen", hierarchy=hierarchy, budget=400, seed=0)
        assert torch.all((sampled.values - exact.values).abs() <= Z_TOL * sampled.stderr + 1e-12)


@pytest.mark.parametrize("hierarchy", [
    [[0, 1], [2, [3, 4, 5]]],
    [[[0, 5], 1], [2, [3, 4]]],
    [0, [1, 2, 3], [[4], [5]]],
    [[0, 1, 2, 3, 4, 5]],
])
def test_owen_exact_matches_consistent_order_brute_force(hierarchy: list) -> None:
    game = TableGame.random(6, seed=7)
    res = shapley(game, 6, method="owen", hierarchy=hierarchy)
    assert torch.allclose(res.values, brute_force_owen(game, 6, hierarchy), atol=1e-10, rtol=0)
    assert abs(res.efficiency_gap) < 1e-10


def _members(node) -> list[int]:
    return [node] if isinstance(node, int) else [p for child in node for p in _members(child)]


def _is_consistent_prefix(row: torch.Tensor, node) -> bool:
    """A coalition is a prefix of a hierarchy-consistent order iff at every node at most one child
    is partly in it (the others are wholly in or wholly out), recursively."""
    if isinstance(node, int):
        return True
    partial = [c for c in node if 0 < int(row[_members(c)].sum()) < len(_members(c))]
    return len(partial) <= 1 and all(_is_consistent_prefix(row, c) for c in partial)


def test_owen_sampled_plan_is_prefixes_of_consistent_orders() -> None:
    hierarchy = [[0, 1, 2], [3, [4, 5]], [[6, 7], [8, 9]]]
    counter = CountingValueFn(TableGame.random(10, seed=1))
    shapley(counter, 10, method="owen", hierarchy=hierarchy, budget=64, seed=3)
    assert all(_is_consistent_prefix(row, hierarchy) for row in counter.rows)
    # The check has teeth: a plain permutation plan on the same players breaks it.
    plain = CountingValueFn(TableGame.random(10, seed=1))
    shapley(plain, 10, method="permutation", budget=64, seed=3)
    assert not all(_is_consistent_prefix(row, hierarchy) for row in plain.rows)


def test_owen_exact_up_to_the_term_limit_then_sampled() -> None:
    """Flat trees: 15 players have 15 * 2**14 = 245760 <= OWEN_EXACT_MAX_TERMS = 2**18 terms (exact);
    16 players have 16 * 2**15 = 524288 (sampled with the default 32 permutations)."""
    assert OWEN_EXACT_MAX_TERMS == 2**18
    exact = shapley(AdditiveGame(torch.ones(15)), 15, method="owen", hierarchy=list(range(15)))
    assert exact.stderr is None and exact.budget is None and exact.n_evals == 2**15
    sampled = shapley(AdditiveGame(torch.ones(16)), 16, method="owen", hierarchy=list(range(16)),
                      seed=0)
    assert sampled.budget == DEFAULT_PERMUTATIONS and sampled.stderr is not None
    assert torch.allclose(sampled.values, torch.ones(16, dtype=torch.float64), atol=1e-12)


def test_owen_sampled_matches_exact_within_stderr() -> None:
    """472 terms, an exact plan of 946 rows; 64 permutations of 12 players plan 834 (sampled)."""
    game = TableGame.random(12, seed=2)
    hierarchy = [[0, 1, 2, 3, 4], [5, [6, 7, 8]], [9, 10, 11]]
    exact = shapley(game, 12, method="owen", hierarchy=hierarchy)
    sampled = shapley(game, 12, method="owen", hierarchy=hierarchy, budget=64, seed=5)
    assert sampled.method == "owen" and sampled.budget == 64
    assert torch.all((sampled.values - exact.values).abs() <= Z_TOL * sampled.stderr)
    assert torch.all(sampled.stderr > 0)


# --------------------------------------------------------------------------- sampled accuracy


LARGER = {
    "additive": AdditiveGame(torch.linspace(-2, 3, 12), constant=0.5),
    "unanimity": UnanimityGame(12, [0, 5, 7, 11]),
    "glove": GloveGame(10, left=[3]),  # left gets 9/10, each right 1/90
    "random": TableGame.random(11, seed=4),
}


@pytest.mark.parametrize("name", ["additive", "random", "unanimity"])
def test_permutation_within_stderr(name: str) -> None:
    """64 permutations plan at most 64 * 13 = 832 rows, fewer than the 2**n coalitions: sampled. (The
    glove game's rare pivots leave most players without a spread in so few permutations.)"""
    game = LARGER[name]
    reference = shapley(game, game.n, method="exact").values
    res = shapley(game, game.n, method="permutation", budget=64, seed=1)
    assert res.budget == 64 and res.method == "permutation"
    assert torch.all((res.values - reference).abs() <= Z_TOL * res.stderr + 1e-12)


@pytest.mark.parametrize("name", sorted(GAMES))
def test_permutation_budget_above_all_coalitions_is_exact(name: str) -> None:
    """256 permutations of at most 6 players would plan more rows than the 2**n coalitions: capped there."""
    game = GAMES[name]
    res = shapley(game, game.n, method="permutation", budget=256, seed=1)
    assert res.method == "permutation" and res.budget < 256 and res.n_evals == 2**game.n
    assert torch.allclose(res.values, game.reference(), atol=1e-10, rtol=0)
    assert torch.equal(res.stderr, torch.zeros(game.n, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(LARGER))
def test_kernel_sampled_within_stderr(name: str) -> None:
    game = LARGER[name]
    reference = shapley(game, game.n, method="exact").values
    res = shapley(game, game.n, method="kernel", budget=600, seed=2)
    assert res.budget == 600 and res.n_evals <= 602
    assert torch.all((res.values - reference).abs() <= Z_TOL * res.stderr + 1e-9)


def test_kernel_enumerates_affordable_sizes_and_samples_the_rest() -> None:
    """n = 10, budget 100. Size s carries kernel mass 9 / (s (10 - s)), 5.09 in all. Sizes {1, 9}
    hold 2 / 5.09 = 39% of it: 39 expected samples >= their 20 coalitions, so they are enumerated.
    Sizes {2, 8} would then get 80 * (1.125 / 5.09) / 61% = 29 < 90 coalitions: sampled, like
    every size after them, with the 80 rows left."""
    counter = CountingValueFn(TableGame.random(10, seed=0))
    res = shapley(counter, 10, method="kernel", budget=100, seed=0)
    rows = counter.rows
    sizes = rows.sum(1)
    assert int(((sizes == 1) | (sizes == 9)).sum()) == 20
    assert int(((sizes >= 2) & (sizes <= 8)).sum()) == res.n_evals - 22 > 40
    assert res.n_evals <= 102 and res.budget == 100


def test_kernel_plan_follows_the_shapley_kernel() -> None:
    """n = 16, budget 4000. Size s has kernel mass 15 / (s (16 - s)), 6.22 in all. Classes {1, 15}
    (32 coalitions, 32% of the mass: 1280 expected samples) and then {2, 14} (240 coalitions,
    17%: 3968 * 0.172 / 0.678 = 1004 expected) are enumerated; {3, 13} (1120 coalitions) would get
    908, so it and the classes after it are sampled with the remaining 3728 rows (1864 pairs)."""
    z, w, pairs, mass_left = kernel_design(16, 4000, torch.Generator().manual_seed(0))
    assert z.shape == (4000, 16) and pairs == 1864
    size_mass = {k: 15 / (k * (16 - k)) for k in range(1, 16)}
    total = sum(size_mass.values())
    enumerated = z[: 4000 - 2 * pairs]
    sizes = enumerated.sum(1)
    assert sorted(set(sizes.tolist())) == [1, 2, 14, 15]
    assert torch.unique(enumerated, dim=0).shape[0] == 32 + 240
    # Exact kernel weight per enumerated coalition; the sampled rows share the remaining mass.
    for k in (1, 2, 14, 15):
        assert torch.allclose(w[: 4000 - 2 * pairs][sizes == k],
                              torch.tensor(size_mass[k] / total / math.comb(16, k),
                                           dtype=torch.float64))
    assert mass_left == pytest.approx(1 - sum(size_mass[k] for k in (1, 2, 14, 15)) / total)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    first, second = z[-2 * pairs:-pairs], z[-pairs:]
    assert torch.equal(second, ~first)
    # Class of each sampled pair ~ kernel mass among the classes left (binomial, 5 sd).
    cls = torch.minimum(first.sum(1), 16 - first.sum(1))
    left_mass = {k: (size_mass[k] * (1 if 2 * k == 16 else 2)) for k in range(3, 9)}
    for k, m in left_mass.items():
        p = m / sum(left_mass.values())
        assert abs(int((cls == k).sum()) - pairs * p) <= 5 * math.sqrt(pairs * p * (1 - p))


def test_kernel_budget_above_all_coalitions_is_capped() -> None:
    game = TableGame.random(4, seed=0)
    res = shapley(game, 4, method="kernel", budget=1000, seed=0)
    assert res.budget == 14 and res.n_evals == 16
    assert torch.allclose(res.values, game.reference(), atol=1e-10)


def test_kernel_glove_closed_form() -> None:
    game = LARGER["glove"]
    expected = torch.full((10,), 1 / 90, dtype=torch.float64)
    expected[3] = 9 / 10
    assert torch.allclose(shapley(game, 10, method="exact").values, expected, atol=1e-12)
    res = shapley(game, 10, method="kernel", budget=800, seed=0)
    assert torch.all((res.values - expected).abs() <= Z_TOL * res.stderr)


@pytest.mark.parametrize("method,budget,kw", [
    ("permutation", 32, {}),
    ("kernel", 60, {}),
    ("kernel", 200, {}),
    ("owen", 32, {"hierarchy": [[0, 1, 2], [3, [4, 5]], [6, 7, 8, 9]]}),
])
def test_stderr_is_calibrated(method: str, budget: int, kw: dict) -> None:
    """Across 40 seeds the spread of the estimates matches the mean reported standard error
    (ratio within [0.7, 1.2] averaged over players; the sampling error of that ratio is ~0.05).
    At kernel budget 60 (20 enumerated coalitions, 20 sampled pairs) plain sandwich residuals give
    about 1.3: the leave-pair-out (CR3) correction is what keeps it in range."""
    game = TableGame.random(10, seed=9)
    runs = [shapley(game, 10, method=method, budget=budget, seed=s, **kw) for s in range(40)]
    values = torch.stack([r.values for r in runs])
    stderr = torch.stack([r.stderr for r in runs])
    ratio = float((values.std(0) / stderr.mean(0)).mean())
    assert 0.7 < ratio < 1.2


@pytest.mark.parametrize("method,budget,kw", [
    ("permutation", 16, {}),
    ("kernel", 64, {}),
    ("owen", 16, {"hierarchy": [[0, 1, 2], [3, [4, 5]], [6, 7, 8, 9]]}),
])
def test_error_falls_like_inverse_sqrt_budget(method: str, budget: int, kw: dict) -> None:
    """Root-mean-square error over 20 seeds at 4x the budget is at most 0.7x the error at 1x
    (1/sqrt(4) = 0.5 expected)."""
    game = TableGame.random(10, seed=12)
    reference = shapley(game, 10, method="owen" if method == "owen" else "exact",
                        hierarchy=kw.get("hierarchy")).values

    def rmse(b: int) -> float:
        err = torch.stack([shapley(game, 10, method=method, budget=b, seed=s, **kw).values
                           - reference for s in range(20)])
        return float(err.pow(2).mean().sqrt())

    assert rmse(4 * budget) < 0.7 * rmse(budget)


# --------------------------------------------------------------------------- plan, dedupe, batching


def _assert_distinct(rows: torch.Tensor) -> None:
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]


def _has_row(rows: torch.Tensor, row: torch.Tensor) -> bool:
    return bool((rows == row).all(1).any())


@pytest.mark.parametrize("method,n,kw", [
    ("exact", 5, {}),
    ("permutation", 4, {"budget": 64}),
    ("permutation", 9, {"budget": 40}),
    ("kernel", 10, {"budget": 300}),
    ("kernel", 4, {"budget": 14}),
    ("owen", 6, {"hierarchy": [[0, 1], [2, [3, 4, 5]]]}),
    ("owen", 6, {"hierarchy": [[0, 1], [2, [3, 4, 5]]], "budget": 30}),
])
def test_each_coalition_evaluated_once_in_one_call(method: str, n: int, kw: dict) -> None:
    counter = CountingValueFn(TableGame.random(n, seed=0))
    res = shapley(counter, n, method=method, seed=0, **kw)
    assert len(counter.batches) == 1
    rows = counter.rows
    assert rows.dtype == torch.bool and rows.shape[1] == n
    _assert_distinct(rows)
    assert res.n_evals == rows.shape[0]
    assert _has_row(rows, torch.zeros(n, dtype=torch.bool))
    assert _has_row(rows, torch.ones(n, dtype=torch.bool))
    if method == "exact":
        assert res.n_evals == 2**n
    if method == "permutation" and n == 4:
        # 64 permutations of 4 players cover (almost surely) all 16 coalitions, each scored once.
        assert res.n_evals == 16


@pytest.mark.parametrize("method,kw", [
    ("permutation", {"budget": 6}),
    ("kernel", {"budget": 40}),
    ("owen", {"budget": 6, "hierarchy": [[0, 1, 2], [3, [4, 5]], [6, 7, 8]]}),
])
def test_sampled_plans_are_antithetic(method: str, kw: dict) -> None:
    """The plan is closed under complement: a prefix of the reverse of an order is the complement
    of a prefix of the order, and KernelSHAP samples each coalition with its complement."""
    counter = CountingValueFn(TableGame.random(9, seed=0))
    shapley(counter, 9, method=method, seed=1, **kw)
    rows = {tuple(r.tolist()) for r in counter.rows}
    assert rows == {tuple((~torch.tensor(r)).tolist()) for r in rows}


def test_dedupe_with_more_than_64_players() -> None:
    """Coalitions are packed into several 64-bit words above 64 players; dedupe must still be exact."""
    n = 130
    counter = CountingValueFn(AdditiveGame(torch.arange(n, dtype=torch.float64)))
    res = shapley(counter, n, method="permutation", budget=6, seed=0)
    rows = counter.rows
    _assert_distinct(rows)
    # 6 permutations x 129 proper prefixes, minus duplicates among the size-1 and size-129 ones.
    assert 6 * 127 + 2 <= res.n_evals == rows.shape[0] <= 6 * 129 + 2
    assert torch.allclose(res.values, torch.arange(n, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 7, 32, 1000])
def test_batch_size_respected(batch_size: int) -> None:
    game = TableGame.random(5, seed=1)
    counter = CountingValueFn(game)
    res = shapley(counter, 5, method="exact", batch_size=batch_size)
    assert all(b.shape[0] <= batch_size for b in counter.batches)
    assert len(counter.batches) == math.ceil(32 / batch_size)
    _assert_distinct(counter.rows)
    assert torch.equal(res.values, shapley(game, 5, method="exact").values)


def test_batch_size_sampled_same_values() -> None:
    game = TableGame.random(7, seed=1)
    counter = CountingValueFn(game)
    batched = shapley(counter, 7, method="kernel", budget=80, seed=4, batch_size=9)
    assert all(b.shape[0] <= 9 for b in counter.batches)
    _assert_distinct(counter.rows)
    whole = shapley(game, 7, method="kernel", budget=80, seed=4)
    assert torch.equal(batched.values, whole.values) and batched.n_evals == whole.n_evals


def test_value_fn_may_return_numpy_list_or_other_dtypes() -> None:
    game = AdditiveGame([1.0, 2.0, 3.0])
    expected = shapley(game, 3, method="exact").values
    for fn in (lambda c: game(c).numpy(), lambda c: game(c).tolist(),
               lambda c: game(c).float(), lambda c: game(c).long(),
               lambda c: game(c).requires_grad_(True)):
        assert torch.allclose(shapley(fn, 3, method="exact").values, expected)


# --------------------------------------------------------------------------- result and seeds


def test_result_fields_and_repr() -> None:
    game = TableGame.random(6, seed=0)
    res = shapley(game, 6, method="permutation", budget=8, seed=0)
    assert isinstance(res, ShapleyResult)
    assert res.values.dtype == torch.float64 and res.values.shape == (6,)
    assert res.stderr.dtype == torch.float64 and res.stderr.shape == (6,)
    assert res.base_value == float(game.table[0]) and res.full_value == float(game.table[-1])
    assert res.efficiency_gap == pytest.approx(
        float(res.values.sum()) - (res.full_value - res.base_value), abs=0)
    assert abs(res.efficiency_gap) < 1e-12
    text = repr(res)
    assert "method='permutation'" in text and "n_players=6" in text and "budget=8" in text
    assert len(text) < 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.method = "exact"  # type: ignore[misc]


def test_single_antithetic_pair_has_undefined_stderr() -> None:
    res = shapley(TableGame.random(4, seed=0), 4, method="permutation", budget=2, seed=0)
    assert torch.isnan(res.stderr).all()


def test_kernel_too_small_to_identify_reports_infinite_stderr() -> None:
    """Two pairs cannot separate 10 players: the values are a (still efficient) least-norm split,
    and the standard error says they are not determined."""
    game = TableGame.random(10, seed=0)
    res = shapley(game, 10, method="kernel", budget=4, seed=0)
    assert torch.isinf(res.stderr).all()
    assert abs(res.efficiency_gap) < 1e-9


@pytest.mark.parametrize("method,kw", [
    ("permutation", {"budget": 10}),
    ("kernel", {"budget": 40}),
    ("owen", {"budget": 10, "hierarchy": [[0, 1], [2, 3, [4, 5, 6]]]}),
])
def test_seed_reproducible_and_global_rng_untouched(method: str, kw: dict) -> None:
    game = TableGame.random(7, seed=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = shapley(game, 7, method=method, seed=42, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # changing the global RNG must not change a seeded result
    again = shapley(game, 7, method=method, seed=42, **kw)
    assert torch.equal(first.values, again.values) and torch.equal(first.stderr, again.stderr)
    other = shapley(game, 7, method=method, seed=43, **kw)
    assert not torch.equal(first.values, other.values)


def test_large_plan_builds() -> None:
    """~10^5 coalitions x 64 players (1540 permutations): the plan dedupes and the estimate is exact
    for an additive game, whose every marginal is the player's weight."""
    weights = torch.linspace(-1, 1, 64, dtype=torch.float64)
    counter = CountingValueFn(AdditiveGame(weights))
    res = shapley(counter, 64, method="permutation", budget=1540, seed=0)
    assert res.n_evals == counter.rows.shape[0] > 90_000
    assert torch.allclose(res.values, weights, atol=1e-12)
    assert torch.all(res.stderr < 1e-12)


# --------------------------------------------------------------------------- bad input


def _game3(c: torch.Tensor) -> torch.Tensor:
    return c.double().sum(1)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"value_fn": 3}, TypeError, "value_fn must be callable"),
    ({"n_players": 0}, ValueError, "n_players must be >= 1"),
    ({"n_players": -2}, ValueError, "n_players must be >= 1"),
    ({"n_players": 2.5}, TypeError, "n_players must be an int"),
    ({"n_players": True}, TypeError, "n_players must be an int"),
    ({"method": "banzhaf"}, ValueError, "unknown method 'banzhaf'; valid methods: exact, "
                                        "permutation, kernel, owen"),
    ({"method": "permutation", "budget": 1}, ValueError, r"needs budget >= 2 permutations"),
    ({"method": "permutation", "budget": 0}, ValueError, r"needs budget >= 2 permutations"),
    ({"method": "permutation", "budget": 5}, ValueError, "must be even; got budget=5"),
    ({"budget": 4.0}, TypeError, "budget must be an int"),
    ({"method": "kernel", "budget": 0}, ValueError, "needs budget >= 2 sampled coalitions"),
    ({"method": "kernel", "budget": 3}, ValueError, "must be even; got budget=3"),
    ({"method": "owen", "hierarchy": [0, 1, 2], "budget": 1}, ValueError,
     r"method='owen' needs budget >= 2"),
    ({"method": "exact", "budget": 8}, ValueError, "takes no budget"),
    ({"method": "permutation", "hierarchy": [0, 1, 2]}, ValueError,
     "hierarchy is only used by method='owen'"),
    ({"method": "owen"}, ValueError, "method='owen' needs a hierarchy"),
    ({"method": "owen", "hierarchy": [[0, 1]]}, ValueError, r"missing players: \[2\]"),
    ({"method": "owen", "hierarchy": [[0, 1], [1, 2]]}, ValueError, r"duplicated players: \[1\]"),
    ({"method": "owen", "hierarchy": [[0, 1, 2], 5]}, ValueError, r"out of range\(0, 3\): \[5\]"),
    ({"method": "owen", "hierarchy": [[0, 1, 2], []]}, ValueError, r"hierarchy\[1\] is an empty"),
    ({"method": "owen", "hierarchy": [[0, "a"], 1, 2]}, TypeError, r"hierarchy\[0\]\[1\] must be"),
    ({"method": "owen", "hierarchy": 3}, TypeError, "hierarchy must be a"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"seed": "x"}, TypeError, "seed must be an int"),
])
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"value_fn": _game3, "n_players": 3, **kwargs}
    with pytest.raises(error, match=match):
        shapley(args.pop("value_fn"), args.pop("n_players"), **args)


def test_exact_refuses_too_many_players() -> None:
    with pytest.raises(ValueError, match=f"n_players <= EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS}") \
            as info:
        shapley(_game3, EXACT_MAX_PLAYERS + 1, method="exact")
    assert "'permutation', 'kernel' or 'owen'" in str(info.value)
    assert set(METHODS) == {"exact", "permutation", "kernel", "owen", "stratified"}


def _poison(bad_players: list[int], value: float, n: int = 4):
    def fn(c: torch.Tensor) -> torch.Tensor:
        out = c.double().sum(1)
        target = torch.zeros(n, dtype=torch.bool)
        target[bad_players] = True
        out[(c == target).all(1)] = value
        return out
    return fn


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["exact", "permutation", "kernel"])
def test_non_finite_value_names_the_coalition(value: float, method: str) -> None:
    # Coalition {1, 2} is in every plan here: exact enumerates it; 64 permutations of 4 players and
    # the kernel budget 14 (= all proper coalitions) cover it.
    kw = {} if method == "exact" else {"budget": 64 if method == "permutation" else 14}
    with pytest.raises(ValueError, match=r"not finite\) for coalition \[1, 2\]"):
        shapley(_poison([1, 2], value), 4, method=method, seed=0, **kw)


@pytest.mark.parametrize("fn,match", [
    (lambda c: torch.zeros(c.shape[0] + 1), r"shape \(\d+,\), but returned shape \(\d+,\)"),
    (lambda c: torch.zeros(c.shape[0], 1), r"but returned shape \(\d+, 1\)"),
    (lambda c: 1.0, r"but returned shape \(\)"),
    (lambda c: ["a"] * c.shape[0], "non-numeric values"),
    (lambda c: torch.zeros(c.shape[0], dtype=torch.complex64), "non-numeric values"),
    (lambda c: [[1.0], [1.0, 2.0]], "not an array of numbers|non-numeric|shape"),
])
def test_bad_value_fn_output(fn, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        shapley(fn, 3, method="exact")
    assert "coalition [" in str(info.value)


def test_numpy_integer_arguments_accepted() -> None:
    res = shapley(_game3, np.int64(3), method="permutation", budget=np.int32(4), seed=np.int64(1))
    assert torch.allclose(res.values, torch.ones(3, dtype=torch.float64))
