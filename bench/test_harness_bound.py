"""The oracle bound of ``scar_bench.bound``: exact table values, surrogates that reproduce polynomial games,
the bound's Monte Carlo part, and the budget interpolation."""
import math

import numpy as np
import pytest
import torch

from scar.shapley.stratified import stratified_design, stratified_mc
from scar_bench.bound import (
    all_coalitions,
    oracle_bound_errors,
    oracle_surrogate,
    residual_share,
    smallest_budget,
    table_shapley,
)
from scar_bench.games import GameSpec


def _table(spec: GameSpec) -> tuple[np.ndarray, np.ndarray]:
    game = spec.build()
    return game(all_coalitions(spec.n)), game.shapley_values()


def test_all_coalitions_rows_are_bitmasks():
    z = all_coalitions(4)
    assert z.shape == (16, 4)
    assert ((z * (1 << np.arange(4))).sum(1) == np.arange(16)).all()
    with pytest.raises(ValueError, match="2\\*\\*n"):
        all_coalitions(0)


def test_table_shapley_is_the_closed_form():
    table, exact = _table(GameSpec("t", 9, 12, 1, 9, seed=5))
    np.testing.assert_allclose(table_shapley(table), exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((4, 2)), np.array([0.0, np.nan, 1.0, 2.0])])
def test_bad_tables_are_refused(bad):
    with pytest.raises(ValueError):
        table_shapley(bad)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_surrogate_reproduces_a_game_of_its_order(order):
    table, _ = _table(GameSpec("t", 8, 10, 1, order, seed=order))
    np.testing.assert_allclose(oracle_surrogate(table, order), table, rtol=0, atol=1e-9)
    assert not np.allclose(oracle_surrogate(table, order - 1), table)
    assert 0 < residual_share(table, oracle_surrogate(table, order - 1)) <= 1


def test_bound_is_exact_when_the_surrogate_is_the_game():
    table, exact = _table(GameSpec("t", 8, 10, 1, 3, seed=7))
    surrogate = oracle_surrogate(table, 3)
    assert residual_share(table, surrogate) < 1e-15
    errors = oracle_bound_errors(table, exact, surrogate, [16, 40], range(3))
    assert max(max(e) for e in errors.values()) < 1e-9
    # without a surrogate the same plans err: the bound measures the Monte Carlo part
    none = oracle_surrogate(table, 0)
    assert residual_share(table, none) == pytest.approx(1.0)
    assert min(min(e) for e in oracle_bound_errors(table, exact, none, [16, 40], range(3)).values()) > 1e-3


def test_order_zero_bound_is_stratified_monte_carlo():
    table, exact = _table(GameSpec("t", 7, 12, 1, 7, seed=2))
    z, strata, _ = stratified_design(7, 24, torch.Generator().manual_seed(4))
    y = torch.from_numpy(table[(z.numpy() * (1 << np.arange(7))).sum(1)])
    est = stratified_mc(z, y, strata, torch.ones(z.shape[0], dtype=torch.bool), table[0], table[-1]).numpy()
    want = np.linalg.norm(est - exact) / np.linalg.norm(exact)
    errors = oracle_bound_errors(table, exact, oracle_surrogate(table, 0), [24], [4])
    assert errors[24] == [pytest.approx(want, rel=1e-12)]


def test_even_terms_do_not_change_the_bound():
    """Complementary pairs cancel even-degree terms: the order-2 oracle's errors are the order-1 oracle's."""
    table, exact = _table(GameSpec("t", 8, 14, 1, 4, seed=9))
    one = oracle_bound_errors(table, exact, oracle_surrogate(table, 1), [20, 60], range(4))
    two = oracle_bound_errors(table, exact, oracle_surrogate(table, 2), [20, 60], range(4))
    for b in one:
        np.testing.assert_allclose(one[b], two[b], rtol=1e-9)


def test_smallest_budget_interpolates_log_log():
    assert smallest_budget([10, 100], [1.0, 0.1], 0.1 ** 0.5) == pytest.approx(10 ** 1.5)
    assert smallest_budget([10, 100], [0.2, 0.1], 0.3) == 10.0
    assert smallest_budget([10, 100], [1.0, 0.5], 0.4) == math.inf
    with pytest.raises(ValueError):
        smallest_budget([10], [1.0, 0.5], 0.4)
