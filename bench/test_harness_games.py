"""The benchmark games of ``scar_bench.games``: closed-form values, honest counting, budgets within the count."""
import numpy as np
import pytest
import torch

from scar.shapley import plan, shapley
from scar_bench.games import GAMES, CountingGame, GameSpec, SumOfUnanimity, run_game_method, scar_budget


@pytest.mark.parametrize("spec", [GameSpec("t_low", 8, 10, 1, 2, seed=3), GameSpec("t_high", 9, 6, 5, 9, seed=4)])
def test_closed_form_is_the_exact_shapley_value(spec):
    game = spec.build()
    exact = shapley(lambda c: game(c), spec.n, method="exact").values.numpy()
    np.testing.assert_allclose(game.shapley_values(), exact, rtol=0, atol=1e-12)
    sizes = game.carriers.sum(1)
    assert sizes.min() >= spec.min_size and sizes.max() <= spec.max_size


def test_unanimity_term_by_hand():
    """v = 2 [{0, 1} ⊆ S] - [{2} ⊆ S] on 3 players: players 0 and 1 get 1 each, player 2 gets -1."""
    game = SumOfUnanimity(np.array([[1, 1, 0], [0, 0, 1]], bool), np.array([2.0, -1.0]))
    np.testing.assert_allclose(game.shapley_values(), [1.0, 1.0, -1.0])
    np.testing.assert_allclose(game(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)), [2.0, 1.0, 0.0])
    assert game(torch.tensor([1, 0, 1], dtype=torch.bool)).shape == (1,)


def test_counting_game_counts_distinct_coalitions():
    game = CountingGame(SumOfUnanimity(np.eye(3, dtype=bool), np.ones(3)), 3)
    game(np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], bool))
    game(np.array([0, 0, 0], bool))
    game(torch.tensor([[1, 1, 1]]))
    assert game.evaluations == 3 and game.calls == 3
    with pytest.raises(ValueError, match="4 players, expected 3"):
        game(np.zeros((1, 4), bool))


@pytest.mark.parametrize("method", ["kernel", "stratified", "permutation"])
@pytest.mark.parametrize("n,evaluations", [(16, 32), (16, 64), (20, 40), (12, 1536)])
def test_scar_budgets_stay_within_the_evaluations(method, n, evaluations):
    p = plan(n, method=method, budget=scar_budget(method, n, evaluations), seed=0)
    assert p.n_evals <= evaluations
    if method == "stratified":  # drawn without replacement: exactly its budget of distinct coalitions
        assert p.n_evals == evaluations


def test_a_run_over_budget_is_refused(monkeypatch):
    import scar_bench.games as games

    monkeypatch.setattr(games, "scar_budget", lambda method, n, evaluations: evaluations + 10)
    with pytest.raises(RuntimeError, match="distinct coalitions, budget 32"):
        run_game_method(GAMES[0].build(), "scar-kernel", 32, seed=0)
