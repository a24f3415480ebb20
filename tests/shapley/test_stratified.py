"""Tests of ``method="stratified"``: the plan (strata, sampling without replacement, honest evaluation count),
unbiasedness of its stratified estimate, efficiency, exactness, the combination with the regression,
determinism and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from scar.shapley import METHODS, plan, shapley, surrogate
from scar.shapley.base import make_generator
from scar.shapley.kernel import KERNEL_MAX_PLAYERS, _class_masses
from scar.shapley.stratified import STRATIFIED_GROUPS, stratified_design, stratified_fit, stratified_mc
from scar.shapley.surrogate import (
    RegressionAdjustment,
    surrogate_class_contrasts,
    surrogate_feature_count,
    surrogate_features,
    surrogate_shapley,
)

from tiny_games import AdditiveGame, CountingValueFn, SumOfUnanimityGame, TableGame, UnanimityGame

HIGH = SumOfUnanimityGame(10, terms=12, lo=5, hi=10, seed=1)
LOW = SumOfUnanimityGame(10, terms=20, lo=1, hi=2, seed=2)
MIXED = SumOfUnanimityGame(9, terms=15, lo=1, hi=9, seed=3)


def _design_values(game, n: int, budget: int, seed: int):
    z, strata, group = stratified_design(n, budget, make_generator(seed))
    y = game(z).double()
    base = float(game(torch.zeros(1, n, dtype=torch.bool))[0])
    full = float(game(torch.ones(1, n, dtype=torch.bool))[0])
    return z, strata, group, y, base, full


def test_sum_of_unanimity_reference_is_the_shapley_value() -> None:
    """The closed form (each term splits its coefficient over its carrier) agrees with the exact method."""
    for game in (HIGH, LOW, MIXED):
        exact = shapley(game, game.n, method="exact").values
        torch.testing.assert_close(game.reference(), exact, rtol=0, atol=1e-12)


def test_registered() -> None:
    assert "stratified" in METHODS


# --------------------------------------------------------------------------- the plan


def test_plan_strata_without_replacement_and_honest_count() -> None:
    """n = 10, budget 100: classes {1, 9} (20 coalitions) are enumerated (their kernel share affords them);
    the other 80 coalitions are 40 complementary pairs, at least two per class, drawn without replacement,
    so every planned coalition is distinct and the plan evaluates exactly budget + 2 coalitions."""
    z, strata, group = stratified_design(10, 100, make_generator(0))
    assert z.shape == (100, 10)
    assert torch.unique(z, dim=0).shape[0] == 100
    sizes = {st.size: st for st in strata}
    assert sizes[1].enumerated and sizes[9].enumerated and sizes[1].rows == 10
    assert bool((group[sizes[1].start : sizes[1].stop] == -1).all())
    for k in (2, 3, 4):
        assert sizes[k].rows >= 2 and sizes[k].rows == sizes[10 - k].rows and not sizes[k].enumerated
        assert torch.equal(z[sizes[10 - k].start : sizes[10 - k].stop], ~z[sizes[k].start : sizes[k].stop])
    assert sizes[5].rows >= 2  # the middle class: pairs of two coalitions of size 5
    for st in strata:
        assert bool((z[st.start : st.stop].sum(1) == st.size).all())
        assert st.population == math.comb(10, st.size)
    sampled = group[group >= 0]
    assert sampled.min() >= 0 and sampled.max() < STRATIFIED_GROUPS
    p = plan(10, method="stratified", budget=100, seed=0)
    assert p.n_evals == 102 and p.budget == 100


@pytest.mark.parametrize("n,budget", [(10, 2), (10, 8), (12, 22), (16, 30), (20, 38)])
def test_small_budgets_plan_exactly_their_budget(n: int, budget: int) -> None:
    counter = CountingValueFn(TableGame.random(n, seed=0))
    res = shapley(counter, n, method="stratified", budget=budget, seed=1)
    assert res.n_evals == counter.rows.shape[0] == budget + 2
    assert abs(res.efficiency_gap) < 1e-9


def test_every_class_sampled_from_about_n_coalitions() -> None:
    """At 2n - 2 coalitions (n - 1 pairs) every one of the n / 2 classes holds two pairs (the middle
    class one), so every coalition size is sampled."""
    for n in (10, 16, 20):
        _, strata, _ = stratified_design(n, 2 * n - 2, make_generator(0))
        assert sorted(st.size for st in strata) == list(range(1, n))


def test_budget_above_all_coalitions_is_exact() -> None:
    game = TableGame.random(6, seed=2)
    res = shapley(game, 6, method="stratified", budget=1000, seed=0)
    assert res.budget == 62 and res.n_evals == 64
    torch.testing.assert_close(res.values, game.reference(), rtol=0, atol=1e-10)
    assert torch.equal(res.stderr, torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("n,budgets", [(10, [22, 60, 140, 400]), (16, [68, 136, 400]), (7, [16, 60, 126])])
def test_extended_designs_keep_every_pair_and_their_groups(n: int, budgets: list[int]) -> None:
    """What adaptive rounds plan: each budget's design keeps the sampled pairs of the one before (same rows,
    same jackknife groups), holds no coalition twice, plans exactly its budget, and a class the budget now
    enumerates holds every coalition of its size."""
    gen = make_generator(3)
    design = stratified_design(n, budgets[0], gen)
    for budget in budgets[1:]:
        before = {tuple(r): int(g) for r, g in zip(design[0].tolist(), design[2].tolist()) if g >= 0}
        design = stratified_design(n, budget, gen, design)
        z, strata, group = design
        assert z.shape[0] == min(budget, 2**n - 2) and torch.unique(z, dim=0).shape[0] == z.shape[0]
        now = {tuple(r): int(g) for r, g in zip(z.tolist(), group.tolist())}
        for row, g in before.items():
            assert row in now and now[row] in (g, -1)  # kept with its group, or in an enumerated class
        for st in strata:
            assert bool((z[st.start : st.stop].sum(1) == st.size).all())
            if st.enumerated:
                assert bool((group[st.start : st.stop] == -1).all())


@pytest.mark.parametrize("k, critical", [(1, 20.5), (2, 36.1), (3, 27.9)])
def test_extended_classes_are_uniform_samples(k: int, critical: float) -> None:
    """A class extended round by round is still a uniform sample of its coalitions (of its pairs' first members
    for the middle class): over 2,000 seeds of rounds of 14 then 22 coalitions on 6 players, every coalition of
    the class is drawn about equally often (chi-square against the uniform count below its 0.1% point; class 1
    completes its draw from the enumerated rest of the class, classes 2 and 3 by rejection)."""
    n, counts = 6, torch.zeros(2**6, dtype=torch.float64)
    for seed in range(2000):
        gen = make_generator(seed)
        z, strata, _ = stratified_design(n, 22, gen, stratified_design(n, 14, gen))
        st = next(s for s in strata if s.size == k)
        rows = z[st.start : st.stop][: st.rows // 2 if 2 * k == n else st.rows]
        counts += torch.bincount((rows.long() << torch.arange(n)).sum(1), minlength=2**6).double()
    members = [c for c in range(2**6) if bin(c).count("1") == k and (2 * k != n or c & 1)]
    seen = counts[members]
    expected = seen.sum() / len(members)
    assert float(((seen - expected) ** 2 / expected).sum()) < critical


def test_adaptive_stratified_is_unbiased_across_rounds() -> None:
    """The stratified Monte Carlo estimate of a design extended over two rounds, mean over 300 seeds: within
    4.5 standard errors of the closed-form values (the rounds' sizes are fixed here, so the extended sample is a
    simple random sample of each class)."""
    runs = []
    for seed in range(300):
        gen = make_generator(seed)
        z, strata, _ = stratified_design(10, 100, gen, stratified_design(10, 40, gen))
        y = HIGH(z).double()
        base = float(HIGH(torch.zeros(1, 10, dtype=torch.bool))[0])
        full = float(HIGH(torch.ones(1, 10, dtype=torch.bool))[0])
        runs.append(stratified_mc(z, y, strata, torch.ones(z.shape[0], dtype=torch.bool), base, full))
    est = torch.stack(runs)
    se = est.std(0) / math.sqrt(est.shape[0])
    assert bool(((est.mean(0) - HIGH.reference()).abs() <= 4.5 * se).all())


# --------------------------------------------------------------------------- the stratified estimate


def test_stratified_estimate_is_unbiased() -> None:
    """Mean over 300 seeds of the stratified estimate alone, on a high-order and a low-order game (n = 10,
    budget 60: every class sampled, none enumerated beyond sizes 1 and 9): within 4.5 standard errors of the
    mean of the closed-form values, for every player."""
    for game in (HIGH, LOW):
        runs = []
        for seed in range(300):
            z, strata, _, y, base, full = _design_values(game, 10, 60, seed)
            runs.append(stratified_mc(z, y, strata, torch.ones(z.shape[0], dtype=torch.bool), base, full))
        est = torch.stack(runs)
        se = est.std(0) / math.sqrt(est.shape[0])
        assert bool((se > 0).all())
        assert bool(((est.mean(0) - game.reference()).abs() <= 4.5 * se).all())


def test_stratified_estimate_of_enumerated_strata_is_exact() -> None:
    """Every stratum enumerated: the finite-population factor makes each stratum's covariance the
    population's, so the estimate is the exact Shapley value (a sample covariance with m - 1 alone is
    off by N_s / (N_s - 1))."""
    z, strata, _, y, base, full = _design_values(MIXED, 9, 2**9 - 2, 0)
    assert all(st.enumerated for st in strata)
    keep = torch.ones(z.shape[0], dtype=torch.bool)
    torch.testing.assert_close(stratified_mc(z, y, strata, keep, base, full), MIXED.reference(), rtol=0, atol=1e-12)
    fit, identified = stratified_fit(z, y, strata, keep, base, full)
    assert identified
    torch.testing.assert_close(fit, MIXED.reference(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("budget", [2, 6, 20, 60, 300])
def test_both_estimates_are_efficient(budget: int) -> None:
    """The stratified estimate's covariances sum to zero over players in every stratum, and the
    regression imposes the constraint: both add up to v(N) - v(∅) for any sample."""
    game = TableGame.random(10, seed=5)
    for seed in range(3):
        z, strata, _, y, base, full = _design_values(game, 10, budget, seed)
        keep = torch.ones(z.shape[0], dtype=torch.bool)
        assert float(stratified_mc(z, y, strata, keep, base, full).sum()) == pytest.approx(full - base, abs=1e-9)
        assert float(stratified_fit(z, y, strata, keep, base, full)[0].sum()) == pytest.approx(full - base, abs=1e-9)


# --------------------------------------------------------------------------- the regression-adjusted estimates


def _every_coalition(n: int) -> torch.Tensor:
    return torch.tensor([[(c >> i) & 1 for i in range(n)] for c in range(2**n)], dtype=torch.bool)


@pytest.mark.parametrize("order", [1, 3])
def test_surrogate_closed_forms(order: int) -> None:
    """For random coefficients on 7 players: the Shapley values of ``f = g(x) / 2`` are those of the
    exact method (each degree-m term gives c_T / m to its members), and the per-size contrasts
    ``E[g (z_i - p)] / (p (1 - p))`` are those of the enumeration."""
    n = 7
    beta = torch.randn(
        surrogate_feature_count(n, order), generator=torch.Generator().manual_seed(order), dtype=torch.float64
    )
    every = _every_coalition(n)
    g = surrogate_features(every, order) @ beta
    powers = torch.tensor([1 << i for i in range(n)])

    def game(c: torch.Tensor) -> torch.Tensor:
        return g[(c.long() * powers).sum(1)] / 2

    exact = shapley(game, n, method="exact").values
    torch.testing.assert_close(surrogate_shapley(beta, n, order), exact, rtol=0, atol=1e-12)
    for s in range(1, n):
        sel = every.sum(1) == s
        p = s / n
        brute = (g[sel][:, None] * (every[sel].double() - p)).mean(0) / (p * (1 - p))
        torch.testing.assert_close(surrogate_class_contrasts(beta, n, order, s), brute, rtol=0, atol=1e-12)
        assert abs(float(surrogate_class_contrasts(beta, n, order, s).sum())) < 1e-12


def test_pair_differences_of_a_two_additive_game_are_linear() -> None:
    """On complementary pairs the pairwise terms cancel: v(S) - v(N \\ S) of a game with terms of one and
    two players is fitted exactly by the order-1 surrogate, so the adjusted estimate is exact at a budget
    that samples (and so is every jackknife replicate)."""
    game = SumOfUnanimityGame(10, terms=20, lo=1, hi=2, seed=2)
    z, strata, group, y, base, full = _design_values(game, 10, 40, 3)
    adj = RegressionAdjustment(z, y, strata, group, base, full, 1, _class_masses(10))
    torch.testing.assert_close(adj.estimate(), game.reference(), rtol=0, atol=1e-7)
    torch.testing.assert_close(adj.estimate(int(group.max())), game.reference(), rtol=0, atol=1e-7)


class SizeWeightedGame:
    """``v(S) = sum_{i in S} f_i(|S|)``: every player's effect depends on the coalition's size, so the pair
    differences are linear within each size class with coefficients that change from class to class. With
    ``trend=True``, ``f_i(s) = a_i + b_i |s - n / 2|``: the coefficients change linearly in the class's size."""

    def __init__(self, n: int, seed: int, trend: bool = False) -> None:
        self.n = n
        gen = torch.Generator().manual_seed(seed)
        if trend:
            a, b = torch.randn(2, n, 1, generator=gen, dtype=torch.float64)
            self.f = a + b * (torch.arange(n + 1, dtype=torch.float64) - n / 2).abs()
        else:
            self.f = torch.randn(n, n + 1, generator=gen, dtype=torch.float64)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        z = coalitions.double()
        return (z * self.f[:, coalitions.sum(1)].T).sum(1)


@pytest.mark.parametrize("size_terms", ["class", "trend"])
def test_size_terms_contrasts_match_enumeration(size_terms: str) -> None:
    """A surrogate's per-class contrasts ``Q_{i,k}(g)`` (shared order-3 terms plus the size terms as they act
    on class k) equal ``E[g (z_i - p)] / (p (1 - p))`` enumerated over the coalitions of size k, for random
    coefficients on 7 players."""
    n = 7
    game = SizeWeightedGame(n, seed=0)
    z, strata, group, y, base, full = _design_values(game, n, 40, 0)
    adj = RegressionAdjustment(z, y, strata, group, base, full, 3, _class_masses(n), size_terms)
    p_features = surrogate_feature_count(n, 3, size_terms)
    extra = n * (n // 2) if size_terms == "class" else n
    assert adj.x.shape[1] == p_features == surrogate_feature_count(n, 3) + extra
    beta = torch.randn(p_features, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    every = _every_coalition(n)
    for k in range(1, n // 2 + 1):
        sel = every[every.sum(1) == k]
        g = adj._features(sel, torch.full((sel.shape[0],), k)) @ beta
        p = k / n
        brute = (g[:, None] * (sel.double() - p)).mean(0) / (p * (1 - p))
        torch.testing.assert_close(adj._class_contrasts(k) @ beta, brute, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size_terms, trend", [("class", False), ("class", True), ("trend", True)])
def test_size_terms_make_a_size_weighted_game_exact(
    monkeypatch: pytest.MonkeyPatch, size_terms: str, trend: bool
) -> None:
    """On ``v(S) = sum_{i in S} f_i(|S|)`` (8 players, 200 coalitions, ridge made negligible) the pair
    differences are, per class, a constant plus linear terms: each class's own terms make the adjusted
    estimate exact, and so does the linear trend when ``f_i`` changes linearly with the class; the shared
    order-1 surrogate does not, and ``shapley`` finds the exact values with a zero error bar."""
    monkeypatch.setattr(surrogate, "SURROGATE_SIZE_RIDGE", 1e-12)
    n = 8
    game = SizeWeightedGame(n, seed=3, trend=trend)
    exact = shapley(game, n, method="exact").values
    z, strata, group, y, base, full = _design_values(game, n, 200, 0)
    assert any(not st.enumerated for st in strata)
    sized = RegressionAdjustment(z, y, strata, group, base, full, 1, _class_masses(n), size_terms)
    torch.testing.assert_close(sized.estimate(), exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(sized.estimate(int(group.max())), exact, rtol=0, atol=1e-7)
    shared = RegressionAdjustment(z, y, strata, group, base, full, 1, _class_masses(n)).estimate()
    assert float((shared - exact).abs().max()) > 1e-3
    res = shapley(game, n, method="stratified", budget=200, seed=0)
    torch.testing.assert_close(res.values, exact, rtol=0, atol=1e-6)
    assert float(res.stderr.max()) < 1e-6


def test_unknown_size_terms_are_refused() -> None:
    with pytest.raises(ValueError, match="size_terms must be None or one of"):
        surrogate_feature_count(8, 1, "quadratic")


def test_order_three_surrogate_makes_a_three_additive_game_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Terms of one to three players, 8 players, 200 coalitions (more pairs than the 64 coefficients in
    every cross-fit), ridge made negligible: the order-3 adjusted estimate is exact, and ``shapley`` puts
    all the combination's weight on it (its jackknife variance is zero)."""
    monkeypatch.setattr(surrogate, "SURROGATE_RIDGE", 1e-12)
    game = SumOfUnanimityGame(8, terms=16, lo=1, hi=3, seed=4)
    z, strata, group, y, base, full = _design_values(game, 8, 200, 0)
    adj = RegressionAdjustment(z, y, strata, group, base, full, 3, _class_masses(8))
    torch.testing.assert_close(adj.estimate(), game.reference(), rtol=0, atol=1e-7)
    lin = RegressionAdjustment(z, y, strata, group, base, full, 1, _class_masses(8)).estimate()
    assert float((lin - game.reference()).abs().max()) > 1e-3  # the order-1 surrogate cannot fit it
    res = shapley(game, 8, method="stratified", budget=200, seed=0)
    torch.testing.assert_close(res.values, game.reference(), rtol=0, atol=1e-6)
    assert float(res.stderr.max()) < 1e-6


@pytest.mark.parametrize("solver", ["downdate", "dual"])
@pytest.mark.parametrize("n, budget, lo, hi", [(16, 126, 1, 16), (12, 200, 1, 3), (20, 400, 10, 20)])
def test_fast_fits_match_the_direct_solves(solver: str, n: int, budget: int, lo: int, hi: int) -> None:
    """Fewer rows than order-3 coefficients: the fits without one or two groups are downdated from the fit on
    every group, or solved in the dual form; the coefficients, the estimate and every jackknife replicate agree
    with the ones from solving each fit's normal equations directly."""
    game = SumOfUnanimityGame(n, terms=30, lo=lo, hi=hi, seed=7)
    z, strata, group, y, base, full = _design_values(game, n, budget, 0)
    fast = RegressionAdjustment(z, y, strata, group, base, full, 3, _class_masses(n))
    slow = RegressionAdjustment(z, y, strata, group, base, full, 3, _class_masses(n))
    assert fast.solver == "dual"  # chosen: fewer rows than coefficients
    fast.solver, slow.solver = solver, "direct"
    sets = fast._family(frozenset())
    got = fast._dual_batch(sets) if solver == "dual" else fast._downdate_batch(sets)
    assert all(beta is not None for beta in got)  # every fit passed its check: no fallback
    want = slow._direct(sets)
    scale = float(want.abs().max())
    # both at the rounding of an ill-conditioned fit
    torch.testing.assert_close(torch.stack(got), want, rtol=0, atol=1e-7 * max(scale, 1.0))
    for deleted in [None, *fast.used]:
        torch.testing.assert_close(fast.estimate(deleted), slow.estimate(deleted), rtol=0, atol=1e-7)


def test_solver_follows_the_rows_and_coefficients() -> None:
    """Order 1 (16 coefficients) is solved directly; order 3 (576) in the dual form at 8n, directly once the
    pairs outnumber the coefficients."""
    game = SumOfUnanimityGame(16, terms=30, lo=1, hi=16, seed=7)
    for budget, order, solver in [(126, 1, "direct"), (126, 3, "dual"), (2000, 3, "direct")]:
        z, strata, group, y, base, full = _design_values(game, 16, budget, 0)
        assert RegressionAdjustment(z, y, strata, group, base, full, order, _class_masses(16)).solver == solver


@pytest.mark.parametrize("order, size_terms", [(1, None), (3, None), (1, "class"), (1, "trend")])
def test_adjusted_estimate_is_unbiased(order: int, size_terms: str | None) -> None:
    """Mean over 300 seeds of the cross-fitted adjusted estimate (n = 10, budget 60: every class sampled),
    on a high-order and a low-order game: within 4.5 standard errors of the closed-form values."""
    for game in (HIGH, SumOfUnanimityGame(10, terms=20, lo=1, hi=4, seed=2)):
        runs = []
        for seed in range(300):
            z, strata, group, y, base, full = _design_values(game, 10, 60, seed)
            adj = RegressionAdjustment(z, y, strata, group, base, full, order, _class_masses(10), size_terms)
            runs.append(adj.estimate())
        est = torch.stack(runs)
        se = est.std(0) / math.sqrt(est.shape[0])
        assert bool((se > 0).all())
        assert bool(((est.mean(0) - game.reference()).abs() <= 4.5 * se).all())


@pytest.mark.parametrize("budget", [6, 20, 60, 300, 2**9 - 2])
def test_adjusted_estimates_are_efficient(budget: int) -> None:
    """Every group's correction sums to zero over players: the adjusted estimates (and their jackknife
    replicates) add up to v(N) - v(∅) for any sample; with every coalition enumerated (the middle class
    paired by complement) they are the exact values."""
    game = TableGame.random(9, seed=5) if budget < 2**9 - 2 else MIXED
    for seed in range(3):
        z, strata, group, y, base, full = _design_values(game, 9, budget, seed)
        for order, size_terms in ((1, None), (3, None), (1, "class"), (1, "trend")):
            adj = RegressionAdjustment(z, y, strata, group, base, full, order, _class_masses(9), size_terms)
            assert float(adj.estimate().sum()) == pytest.approx(full - base, abs=1e-9)
            if int(group.max()) >= 0:
                assert float(adj.estimate(int(group.max())).sum()) == pytest.approx(full - base, abs=1e-9)
            else:
                torch.testing.assert_close(adj.estimate(), MIXED.reference(), rtol=0, atol=1e-10)


def test_regression_adjustment_helps_on_a_low_order_game() -> None:
    """Root-mean-square error over 10 seeds on a game with terms of one to three players (12 players, 32n
    evaluations): the estimator with the adjusted estimates errs less than 0.8x as much as without them."""
    import scar.shapley.stratified as stratified

    game = SumOfUnanimityGame(12, terms=40, lo=1, hi=3, seed=6)

    def rmse() -> float:
        err = torch.stack(
            [shapley(game, 12, method="stratified", budget=382, seed=s).values - game.reference() for s in range(10)]
        )
        return float(err.pow(2).mean().sqrt())

    with_adjustment = rmse()
    surrogates = stratified.STRATIFIED_SURROGATES
    try:
        stratified.STRATIFIED_SURROGATES = ()
        without = rmse()
    finally:
        stratified.STRATIFIED_SURROGATES = surrogates
    assert with_adjustment < 0.8 * without


# --------------------------------------------------------------------------- the combined estimator


def test_combined_estimate_is_close_to_unbiased_at_moderate_budgets() -> None:
    """Mean over 60 seeds at budget 300 of 10 players (the shrinkage is inactive at this budget): within
    4.5 standard errors of the mean, plus 1% of the values' norm for the combination's small bias."""
    for game in (HIGH, LOW):
        est = torch.stack([shapley(game, 10, method="stratified", budget=300, seed=s).values for s in range(60)])
        se = est.std(0) / math.sqrt(est.shape[0])
        slack = 0.01 * float(game.reference().norm())
        assert bool(((est.mean(0) - game.reference()).abs() <= 4.5 * se + slack).all())


def test_additive_game_is_exact_through_the_regression() -> None:
    """An additive game is fitted exactly by the regression in every jackknife replicate (zero variance),
    so the combination puts all its weight there: the values are exact at a budget that samples."""
    game = AdditiveGame(torch.linspace(-1.0, 2.0, 10), constant=0.3)
    res = shapley(game, 10, method="stratified", budget=40, seed=3)
    torch.testing.assert_close(res.values, game.reference(), rtol=0, atol=1e-9)
    assert float(res.stderr.max()) < 1e-9


def test_beats_kernel_on_a_high_order_game_and_matches_it_on_a_low_order_one() -> None:
    """Root-mean-square error over 20 seeds at 8n = 80 evaluations (budget 78): on the high-order game the
    combination follows the stratified estimate and errs less than half as much as KernelSHAP; on the
    low-order game it follows the regression and errs at most 1.3x as much as KernelSHAP."""

    def rmse(game, method: str) -> float:
        err = torch.stack([shapley(game, 10, method=method, budget=78, seed=s).values - game.reference()
                           for s in range(20)])
        return float(err.pow(2).mean().sqrt())

    assert rmse(HIGH, "stratified") < 0.5 * rmse(HIGH, "kernel")
    assert rmse(LOW, "stratified") < 1.3 * rmse(LOW, "kernel")


def test_stderr_follows_the_error() -> None:
    """Over 40 seeds at budget 120 of 10 players the spread of the values is within [0.5, 1.5] of the mean
    reported standard error (averaged over players), and the reported errors are finite and positive."""
    game = MIXED
    runs = [shapley(game, 9, method="stratified", budget=120, seed=s) for s in range(40)]
    stderr = torch.stack([r.stderr for r in runs])
    assert bool(torch.isfinite(stderr).all()) and bool((stderr > 0).all())
    ratio = float((torch.stack([r.values for r in runs]).std(0) / stderr.mean(0)).mean())
    assert 0.5 < ratio < 1.5


def test_intervals_cover() -> None:
    """95% intervals ``values +- 1.96 stderr`` over 60 seeds x 10 players on a mixed-order game at 8n: the
    share holding the exact value is within [0.90, 0.99] (its sampling error is about 0.01); standard errors
    half or 1.6 times as large would put it outside."""
    game = SumOfUnanimityGame(10, terms=30, lo=1, hi=10, seed=1)
    hits = torch.cat([
        (r.values - game.reference()).abs() <= 1.96 * r.stderr
        for r in (shapley(game, 10, method="stratified", budget=80, seed=s) for s in range(60))
    ])
    assert 0.90 <= float(hits.double().mean()) <= 0.99


def test_one_pair_has_undefined_stderr_and_is_efficient() -> None:
    res = shapley(TableGame.random(10, seed=0), 10, method="stratified", budget=2, seed=0)
    assert torch.isnan(res.stderr).all() and abs(res.efficiency_gap) < 1e-9


@pytest.mark.parametrize("n", [1, 2, 3])
def test_few_players(n: int) -> None:
    game = UnanimityGame(n, list(range(n)))
    res = shapley(game, n, method="stratified", seed=0)
    torch.testing.assert_close(res.values, game.reference(), rtol=0, atol=1e-12)


def test_seed_reproducible_and_global_rng_untouched() -> None:
    game = TableGame.random(9, seed=0)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = shapley(game, 9, method="stratified", budget=60, seed=42)
    assert torch.equal(torch.get_rng_state(), state)
    again = shapley(game, 9, method="stratified", budget=60, seed=42)
    assert torch.equal(first.values, again.values) and torch.equal(first.stderr, again.stderr)
    assert torch.equal(plan(9, method="stratified", budget=60, seed=42).coalitions,
                       plan(9, method="stratified", budget=60, seed=42).coalitions)
    assert not torch.equal(first.values, shapley(game, 9, method="stratified", budget=60, seed=43).values)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,error,match", [
    ({"budget": 0}, ValueError, r"method='stratified' needs budget >= 2"),
    ({"budget": 7}, ValueError, "must be even; got budget=7"),
    ({"budget": 6.0}, TypeError, "budget must be an int"),
    ({"hierarchy": [0, 1, 2]}, ValueError, "hierarchy is only used by method='owen'"),
    ({"budget": 2**40}, ValueError, "MAX_PLAN_ROWS"),
])
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plan(30, method="stratified", seed=0, **kwargs)


def test_too_many_players_refused() -> None:
    with pytest.raises(ValueError, match="KERNEL_MAX_PLAYERS"):
        plan(KERNEL_MAX_PLAYERS + 1, method="stratified", budget=2, seed=0)
