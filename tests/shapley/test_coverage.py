"""Calibrated intervals: ``values +- 1.96 stderr`` holds the exact value about 95% of the time.

Coverage is measured on sums of unanimity games (closed-form Shapley and Owen values) with fixed seeds, for
every sampled method at a small and a larger budget; the full measurement is ``bench/interval_coverage.py``
(table in ``bench/RESULTS.md``).
"""

from __future__ import annotations

import math

import pytest
import torch

from scar.shapley import shapley
from scar.shapley.base import INTERVAL_Z, VARIANCE_PRIOR_UNITS, sample_mean_stderr, student_t_quantile

from tiny_games import SumOfUnanimityGame

HIERARCHY = [[0, 1, 2], [3, [4, 5]], [6, 7, 8, 9]]
GAMES = [
    SumOfUnanimityGame(10, 30, 1, 3, seed=1),  # low order
    SumOfUnanimityGame(10, 30, 1, 10, seed=2),  # mixed
    SumOfUnanimityGame(10, 30, 6, 10, seed=3),  # high order
]
SEEDS = 100
BAND = (0.93, 0.97)


def coverage(method: str, budget: int, **kw) -> float:
    hit = total = 0
    for game in GAMES:
        ref = game.owen_reference(HIERARCHY) if method == "owen" else game.reference()
        for seed in range(SEEDS):
            res = shapley(game, game.n, method=method, budget=budget, seed=seed, **kw)
            hit += int(((res.values - ref).abs() <= INTERVAL_Z * res.stderr + 1e-12).sum())
            total += game.n
    return hit / total


@pytest.mark.parametrize("method,budget,kw", [
    ("permutation", 16, {}),
    ("permutation", 32, {}),
    ("owen", 8, {"hierarchy": HIERARCHY}),
    ("owen", 32, {"hierarchy": HIERARCHY}),
    ("kernel", 80, {}),
    ("kernel", 160, {}),
])
def test_95_percent_intervals_cover_095(method: str, budget: int, kw: dict) -> None:
    """3 games x 100 seeds x 10 players per cell; without the small-sample correction permutation sampling
    covered about 0.80 at 8 permutations."""
    low, high = BAND
    assert low <= coverage(method, budget, **kw) <= high


def test_few_permutations_err_on_the_safe_side() -> None:
    """At 8 permutations (4 antithetic pairs) the intervals are calibrated to slightly conservative: the
    Student quantile of 5 degrees of freedom and the pooled variance cover these games about 0.97."""
    assert 0.93 <= coverage("permutation", 8) <= 0.98


def test_student_t_quantile_matches_tables() -> None:
    # two-sided 95%: t_{0.975, df}
    for df, q in [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (10, 2.2281389), (30, 2.0422725)]:
        assert student_t_quantile(df) == pytest.approx(q, abs=1e-6)
    assert student_t_quantile(10**6) == pytest.approx(INTERVAL_Z, abs=1e-12)
    assert student_t_quantile(5, 0.99) == pytest.approx(4.0321430, abs=1e-6)
    with pytest.raises(ValueError, match="df >= 1"):
        student_t_quantile(0)


def test_sample_mean_stderr_small_and_large_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    assert torch.isnan(sample_mean_stderr(torch.ones(1, 3, dtype=torch.float64))).all()
    assert torch.equal(sample_mean_stderr(torch.ones(5, 3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
    # a player whose units all agree borrows the spread of the others
    units = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    units[:, 2] = 0.5
    se = sample_mean_stderr(units)
    assert bool((se > 0).all())
    pooled = units[:, :2].var(0).mean()
    expected = math.sqrt(VARIANCE_PRIOR_UNITS * pooled / (3 + VARIANCE_PRIOR_UNITS) / 4)
    assert float(se[2]) == pytest.approx(expected * student_t_quantile(3 + VARIANCE_PRIOR_UNITS) / INTERVAL_Z)
    # with many units it is the plain std / sqrt(k)
    many = torch.randn(20000, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0])
    plain = many.std(0) / math.sqrt(20000)
    torch.testing.assert_close(sample_mean_stderr(many), plain, rtol=2e-3, atol=0)
