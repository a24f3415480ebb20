"""Adaptive stopping: ``shapley(..., tol=...)`` and :class:`scar.shapley.AdaptiveRun` sample in rounds until
every player's standard error is at most the tolerance, reusing every evaluation of earlier rounds."""

from __future__ import annotations

import math

import pytest
import torch

from scar.shapley import AdaptiveRun, adaptive, shapley
from scar.shapley.adaptive import MAX_GROWTH, MIN_STOP_FACTOR, default_max_budget, first_round_budget

from tiny_games import AdditiveGame, CountingValueFn, GloveGame, SumOfUnanimityGame

GAME = SumOfUnanimityGame(16, 40, 1, 16, seed=4)  # 16 players: no budget here reaches the exact plan
HIERARCHY = [[0, 1, 2, 3], [4, [5, 6], 7], [8, 9, 10, 11], [12, 13, [14, 15]]]
SAMPLED = [("permutation", {}), ("owen", {"hierarchy": HIERARCHY}), ("kernel", {}), ("stratified", {})]
COALITION_METHODS = ("kernel", "stratified")  # budgets in coalitions, not permutations
GLOVE12_VALUES = torch.tensor([11 / 12] + [1 / 132] * 11, dtype=torch.float64)  # one left glove, 11 right


def keys(rows: torch.Tensor) -> list[tuple[bool, ...]]:
    return [tuple(r) for r in rows.tolist()]


def run_rounds(game, n: int, method: str, **kw) -> tuple[AdaptiveRun, list]:
    """Drive an AdaptiveRun by hand; returns it and (coalitions, result) of every round."""
    run = AdaptiveRun(n, method, **kw)
    rounds = []
    while not run.done:
        todo = run.coalitions
        run.feed(game(todo))
        rounds.append((todo, run.result))
    return run, rounds


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_stops_when_tol_is_met_and_not_before(method: str, kw: dict) -> None:
    tol = 0.03
    run, rounds = run_rounds(GAME, 16, method, tol=tol, seed=1, **kw)
    assert len(rounds) >= 2  # the first round does not meet it
    target = tol * abs(run.result.full_value - run.result.base_value)
    for _, res in rounds[:-1]:
        assert res.tol_met is False and float(res.stderr.max()) > target
    final = rounds[-1][1]
    assert final is run.result and final.tol_met is True and final.rounds == len(rounds)
    assert float(final.stderr.max()) <= target and final.tol == pytest.approx(target)
    # budgets grow every round, by at most MAX_GROWTH
    budgets = [res.budget for _, res in rounds]
    assert budgets[0] == first_round_budget(method, 16)
    assert all(b < c <= MAX_GROWTH * b for b, c in zip(budgets, budgets[1:]))
    # the same through shapley(), bit for bit
    res = shapley(GAME, 16, method=method, tol=tol, seed=1, **kw)
    assert torch.equal(res.values, final.values) and torch.equal(res.stderr, final.stderr)
    assert (res.budget, res.n_evals, res.rounds) == (final.budget, final.n_evals, final.rounds)


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_reuses_every_evaluation(method: str, kw: dict) -> None:
    """No coalition is passed to value_fn twice; n_evals counts what was passed; later rounds use the
    earlier rounds' coalitions (the final estimate's plan contains them)."""
    counting = CountingValueFn(GAME)
    res = shapley(counting, 16, method=method, tol=0.03, seed=2, **kw)
    rows = keys(counting.rows)
    assert len(rows) == len(set(rows)) == res.n_evals
    assert len(counting.batches) == res.rounds >= 2
    if method in COALITION_METHODS:  # every sampled coalition is in the final design: at most budget + 2
        assert res.n_evals <= res.budget + 2
    else:  # budget permutations of n + 1 prefixes each, ∅ and N shared
        assert res.n_evals <= res.budget * 16 + 2


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_never_exceeds_max_budget(method: str, kw: dict) -> None:
    cap = 40 if method not in COALITION_METHODS else 120
    counting = CountingValueFn(GAME)
    res = shapley(counting, 16, method=method, tol=1e-6, max_budget=cap, seed=3, **kw)
    assert res.tol_met is False and res.budget == cap
    assert float(res.stderr.max()) > res.tol
    if method in COALITION_METHODS:
        assert res.n_evals <= cap + 2
    assert counting.rows.shape[0] == res.n_evals


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_one_round_equals_the_plain_estimate(method: str, kw: dict) -> None:
    """A tolerance met in round one gives exactly the non-adaptive estimate at the first round's budget (a
    first round at the smallest budget the tolerance is tested at)."""
    budget = MIN_STOP_FACTOR * first_round_budget(method, 16)
    res = shapley(GAME, 16, method=method, tol=1e3, budget=budget, seed=5, **kw)
    plain = shapley(GAME, 16, method=method, budget=budget, seed=5, **kw)
    assert res.rounds == 1 and res.tol_met is True
    assert torch.equal(res.values, plain.values) and torch.equal(res.stderr, plain.stderr)
    assert (res.budget, res.n_evals) == (plain.budget, plain.n_evals)
    assert plain.rounds is None and plain.tol is None and plain.tol_met is None  # tol=None: as before


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_deterministic_for_a_seed(method: str, kw: dict) -> None:
    a, b = CountingValueFn(GAME), CountingValueFn(GAME)
    ra = shapley(a, 16, method=method, tol=0.04, seed=9, **kw)
    rb = shapley(b, 16, method=method, tol=0.04, seed=9, **kw)
    assert torch.equal(ra.values, rb.values) and torch.equal(ra.stderr, rb.stderr)
    assert [keys(x) for x in a.batches] == [keys(x) for x in b.batches]
    other = shapley(GAME, 16, method=method, tol=0.04, seed=10, **kw)
    assert not torch.equal(other.values, ra.values)


@pytest.mark.parametrize("method,kw", SAMPLED)
def test_a_small_first_round_never_stops_on_its_own_error(method: str, kw: dict) -> None:
    """A tolerance every round meets: the default first round is still followed by a round to the smallest
    budget the tolerance is tested at, where it stops; a first round of that budget stops at once, and a
    lower ``max_budget`` is where the tolerance is tested instead."""
    smallest = MIN_STOP_FACTOR * first_round_budget(method, 16)
    _, rounds = run_rounds(GAME, 16, method, tol=1e3, seed=0, **kw)
    assert [res.budget for _, res in rounds] == [first_round_budget(method, 16), smallest]
    assert [res.tol_met for _, res in rounds] == [False, True]
    assert float(rounds[0][1].stderr.max()) <= rounds[0][1].tol  # met, but from too small a sample
    one = shapley(GAME, 16, method=method, tol=1e3, budget=smallest, seed=0, **kw)
    assert one.rounds == 1 and one.budget == smallest and one.tol_met is True
    cap = first_round_budget(method, 16) + 2
    low = shapley(GAME, 16, method=method, tol=1e3, max_budget=cap, seed=0, **kw)
    assert low.rounds == 2 and low.budget == cap and low.tol_met is True


def test_glove_game_is_covered_at_the_stopping_point() -> None:
    """Glove game, one left glove, 12 players: a right-glove holder's coalition is non-zero only when it
    follows the left glove directly, which the first round of ``kernel`` (``4 (n + 1)`` coalitions) often never
    samples; its error then looks small and, tested on the first round alone, stopped most runs there with
    intervals that miss the right-glove holders' ``1/132``. From the smallest budget the tolerance is tested at
    the intervals cover."""
    game = GloveGame(12, [0])
    ref = GLOVE12_VALUES
    hit = total = 0
    for seed in range(20):
        res = shapley(game, 12, method="kernel", tol=0.1, seed=seed)
        assert res.rounds >= 2 and res.budget >= MIN_STOP_FACTOR * first_round_budget("kernel", 12)
        hit += int(((res.values - ref).abs() <= 1.959963984540054 * res.stderr + 1e-12).sum())
        total += 12
    assert hit / total >= 0.9


def test_the_stopping_rule_is_what_keeps_the_glove_game_covered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same runs tested from the first round on (the rule before :data:`MIN_STOP_FACTOR`) stop in round
    one and miss: the test above would fail without the rule."""
    monkeypatch.setattr(adaptive, "MIN_STOP_FACTOR", 1)
    game = GloveGame(12, [0])
    ref = GLOVE12_VALUES
    hit = total = stopped_early = 0
    for seed in range(20):
        res = shapley(game, 12, method="kernel", tol=0.1, seed=seed)
        stopped_early += res.rounds == 1
        hit += int(((res.values - ref).abs() <= 1.959963984540054 * res.stderr + 1e-12).sum())
        total += 12
    assert stopped_early >= 5 and hit / total < 0.8


def test_absolute_and_relative_tolerance() -> None:
    scaled = lambda c: 10.0 * GAME(c)
    rel = shapley(GAME, 16, method="permutation", tol=0.05, seed=0)
    rel10 = shapley(scaled, 16, method="permutation", tol=0.05, seed=0)
    assert rel10.budget == rel.budget and rel10.tol == pytest.approx(10 * rel.tol)  # scale-free
    absolute = shapley(GAME, 16, method="permutation", tol=rel.tol, tol_absolute=True, seed=0)
    assert absolute.budget == rel.budget and absolute.tol == rel.tol
    looser = shapley(scaled, 16, method="permutation", tol=rel.tol, tol_absolute=True, seed=0)
    assert looser.budget > rel.budget  # the same absolute tolerance is 10x tighter on the scaled game


def test_exact_meets_any_tol_at_once() -> None:
    counting = CountingValueFn(GAME)
    game6 = SumOfUnanimityGame(6, 10, 1, 6, seed=0)
    res = shapley(game6, 6, method="exact", tol=1e-9)
    assert res.rounds == 1 and res.tol_met is True and res.stderr is None and res.n_evals == 64
    torch.testing.assert_close(res.values, game6.reference(), atol=1e-12, rtol=0)
    del counting


def test_reaching_the_exact_plan_stops_with_exact_values() -> None:
    """6 players: the permutation budget reaches the exact plan's 64 coalitions; the values are exact and
    the tolerance is met whatever it is."""
    game = SumOfUnanimityGame(6, 10, 1, 6, seed=0)
    for method in ("permutation", "kernel", "stratified"):
        counting = CountingValueFn(game)
        res = shapley(counting, 6, method=method, tol=1e-9, seed=0)
        assert res.tol_met is True and torch.equal(res.stderr, torch.zeros(6, dtype=torch.float64))
        torch.testing.assert_close(res.values, game.reference(), atol=1e-10, rtol=0)
        assert res.n_evals == 64 and counting.rows.shape[0] == 64


def test_units_that_never_vary_do_not_meet_the_tolerance() -> None:
    """An additive game's permutation samples never vary; a sample that shows no spread at all is not taken
    as converged, so the budget grows to the exact plan (20 players: to max_budget)."""
    game = AdditiveGame([0.5, -1.0, 2.0, 0.25, 3.0, 1.0, -0.5, 0.1, 0.2, 0.3])
    res = shapley(game, 10, method="permutation", tol=0.01, seed=0)
    assert res.rounds > 1 and res.tol_met is True and res.budget == 94  # the exact cap of 10 players
    big = AdditiveGame(torch.linspace(-1, 1, 24))
    capped = shapley(big, 24, method="permutation", tol=0.01, max_budget=64, seed=0)
    assert capped.tol_met is False and capped.budget == 64
    torch.testing.assert_close(capped.values, big.reference(), atol=1e-12, rtol=0)


def test_batch_size_chunks_rounds() -> None:
    counting = CountingValueFn(GAME)
    res = shapley(counting, 16, method="permutation", tol=0.05, seed=0, batch_size=50)
    assert all(b.shape[0] <= 50 for b in counting.batches)
    whole = shapley(GAME, 16, method="permutation", tol=0.05, seed=0)
    torch.testing.assert_close(res.values, whole.values, atol=1e-12, rtol=0)  # chunked matmuls round apart
    assert (res.budget, res.n_evals, res.rounds) == (whole.budget, whole.n_evals, whole.rounds)


def test_defaults() -> None:
    assert first_round_budget("permutation", 16) == 8 and first_round_budget("kernel", 16) == 68
    assert default_max_budget("permutation", 16) == 256 and default_max_budget("kernel", 16) == 8 * 32 * 17
    assert default_max_budget("kernel", 6) == 62  # capped at the exact answer
    assert first_round_budget("stratified", 16) == 68 and default_max_budget("stratified", 16) == 8 * 32 * 17
    res = shapley(GAME, 16, method="permutation", tol=1e-9, seed=0)
    assert res.budget == 256 and res.tol_met is False


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tol=0), ValueError, "tol must be a finite number > 0"),
    (dict(tol=-0.1), ValueError, "tol must be a finite number > 0"),
    (dict(tol=math.nan), ValueError, "tol must be a finite number > 0"),
    (dict(tol=math.inf), ValueError, "tol must be a finite number > 0"),
    (dict(tol="0.1"), TypeError, "tol must be a number"),
    (dict(tol=True), TypeError, "tol must be a number"),
    (dict(tol=0.1, max_budget=31), ValueError, "max_budget must be even"),
    (dict(tol=0.1, max_budget=0), ValueError, "max_budget >= 2"),
    (dict(tol=0.1, max_budget=2.5), TypeError, "max_budget must be an int"),
    (dict(tol=0.1, max_budget=8, budget=16), ValueError, "below the first round"),
    (dict(tol=0.1, budget=7), ValueError, "budget must be even"),
    (dict(tol=0.1, tol_absolute=1), TypeError, "tol_absolute must be a bool"),
    (dict(max_budget=64), ValueError, "give tol as well"),
    (dict(tol_absolute=True), ValueError, "give tol as well"),
    (dict(tol=0.1, method="exact", max_budget=64), ValueError, "takes no max_budget"),
    (dict(tol=0.1, method="nope"), ValueError, "tol \\(adaptive stopping\\) works with methods"),
    (dict(tol=0.1, method="owen"), ValueError, "needs a hierarchy"),
    (dict(tol=0.1, hierarchy=[[0, 1], [2, 3]]), ValueError, "only used by method='owen'"),
])
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    kwargs = {"method": "permutation", **kwargs}
    with pytest.raises(error, match=match):
        shapley(AdditiveGame([1.0, 2.0, 3.0, 4.0]), 4, **kwargs)


def test_feed_checks_values_and_refuses_after_done() -> None:
    run = AdaptiveRun(4, "permutation", tol=0.1, seed=0)
    with pytest.raises(ValueError, match="one value per coalition"):
        run.feed([1.0])
    bad = torch.zeros(run.coalitions.shape[0], dtype=torch.float64)
    bad[0] = math.nan
    with pytest.raises(ValueError, match="not finite"):
        run.feed(bad)
    run.feed(AdditiveGame([1.0, 2.0, 3.0, 4.0])(run.coalitions))
    assert run.done and run.coalitions.shape == (0, 4)
    with pytest.raises(RuntimeError, match="done"):
        run.feed([])


def test_plan_limits_are_checked_before_anything_is_evaluated() -> None:
    from scar.shapley import MAX_PLAN_ENTRIES, MAX_PLAN_ROWS

    with pytest.raises(ValueError, match="MAX_PLAN_ROWS"):
        AdaptiveRun(3000, "permutation", tol=0.1, max_budget=10**6, seed=0)
    run = AdaptiveRun(3000, "permutation", tol=0.1, seed=0)  # the default shrinks to fit
    rows = run.max_budget * 3001 + 2
    assert run.max_budget % 2 == 0 and rows <= MAX_PLAN_ROWS and rows * 3000 <= MAX_PLAN_ENTRIES
    # a budget capped by the exact plan needs no limit
    assert AdaptiveRun(12, "permutation", tol=0.1, max_budget=10**9, seed=0).max_budget == 10**9


def test_feed_errors_name_the_adaptive_run() -> None:
    run = AdaptiveRun(4, "kernel", tol=0.1, seed=0)
    with pytest.raises(ValueError, match=r"AdaptiveRun.feed needs one value per coalition"):
        run.feed([0.0])
