"""Tests of the two-phase estimator API (``plan`` -> evaluate -> ``finish``) and of its results.

``PINNED`` holds results of :func:`scar.shapley.shapley` computed with the one-phase engine before
it was rebuilt on plans, so the rebuild is checked to give the same values for the same seed. The standard
errors of ``permutation`` and ``owen_sampled`` are those of the calibrated estimate
(:func:`scar.shapley.base.sample_mean_stderr`), pinned again when it replaced the plain ``std / sqrt(pairs)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scar.shapley import ShapleyPlan, plan, shapley

_W = torch.tensor([0.7, -1.1, 0.4, 1.3, -0.2, 0.9, 0.5, -0.6, 1.7], dtype=torch.float64)


def pinned_game(coalitions: torch.Tensor) -> torch.Tensor:
    """A non-additive game with v(∅) = 0.25: sin of a weighted sum, a pair bonus and a size term."""
    x = coalitions.double()
    return torch.sin(x @ _W[: x.shape[1]]) + 0.3 * (x[:, 0] * x[:, 3]) + 0.1 * x.sum(1) ** 2 + 0.25


HIERARCHY = [[0, 1, 2], [3, [4, 5]]]
CASES = {
    "exact": (5, dict(method="exact")),
    "permutation": (6, dict(method="permutation", budget=8, seed=11)),
    "kernel_small": (6, dict(method="kernel", budget=20, seed=11)),
    "kernel": (9, dict(method="kernel", budget=40, seed=5)),
    "owen_sampled": (6, dict(method="owen", budget=8, seed=11, hierarchy=HIERARCHY)),
    "owen_exact": (6, dict(method="owen", hierarchy=HIERARCHY)),
}

PINNED = {
    "exact": dict(
        n_evals=32,
        values=[
            1.0984744746738229, -0.06851455458206218, 0.748832328388433, 1.5289798482211778,
            0.3834352633600636,
        ],
        stderr=None,
    ),
    "permutation": dict(
        n_evals=34,
        values=[
            0.9581244282578387, 0.46618776308832477, 0.6581622707811745, 1.1561062858022175,
            0.5579920886140858, 1.01272459028204,
        ],
        stderr=[
            0.1100872122846101, 0.09037618179446519, 0.0733426076852722,
            0.10540026160071463, 0.05966729518361487, 0.06046999486962826,
        ],
    ),
    "kernel_small": dict(
        n_evals=20,
        values=[
            1.0415855619582575, 0.09456175520313866, 0.7479070413177581, 1.3590071037451963,
            0.529060352335988, 1.0371756122653422,
        ],
        stderr=[
            0.015384803337030418, 0.05187021617715351, 0.05255547948231281, 0.01002498174776771,
            0.036678682080796145, 0.04307520183325528,
        ],
    ),
    "kernel": dict(
        n_evals=36,
        values=[
            1.0985754345867953, 0.8047660968897629, 0.8752370379099618, 0.9262147484875581,
            0.9005517789016332, 0.8147992629520099, 0.9426786508032939, 0.9279451747477642,
            0.6667113714263692,
        ],
        stderr=[
            0.09611749906484511, 0.05659408581441496, 0.09107867388305278, 0.08219800056755636,
            0.06253138530640936, 0.07292886517161457, 0.0527358050180378, 0.09235560728847164,
            0.07765094152241288,
        ],
    ),
    "owen_sampled": dict(
        n_evals=22,
        values=[
            0.8110087585702334, 0.44325443465536835, 0.6957368067743982, 1.3643189625025918,
            0.49426997612722495, 1.000708488195865,
        ],
        stderr=[
            0.10519096362293706, 0.10791743754912081, 0.06226978872416558,
            0.05954140155426047, 0.05954140155426047, 0.05954140155426047,
        ],
    ),
    "owen_exact": dict(
        n_evals=28,
        values=[
            0.9242046957821473, 0.3259733102269733, 0.6998219939908792, 1.3643189625025918,
            0.5226679111163701, 0.9723105532067198,
        ],
        stderr=None,
    ),
}

# Bit-identical on the machine that computed them; the tolerance only absorbs last-bit differences of
# BLAS / vectorised reductions on other CPUs (a different plan or seed moves values by ~1e-2).
PIN_TOL = 1e-12


def _assert_pinned(name: str, res) -> None:
    pin = PINNED[name]
    assert res.n_evals == pin["n_evals"]
    expected = torch.tensor(pin["values"], dtype=torch.float64)
    torch.testing.assert_close(res.values, expected, atol=PIN_TOL, rtol=0)
    if pin["stderr"] is None:
        assert res.stderr is None
    else:
        torch.testing.assert_close(res.stderr, torch.tensor(pin["stderr"], dtype=torch.float64),
                                   atol=PIN_TOL, rtol=0)
    assert res.base_value == 0.25


def test_shapley_reproduces_pinned_results() -> None:
    for name, (n, kw) in CASES.items():
        _assert_pinned(name, shapley(pinned_game, n, **kw))
        # chunked evaluation changes nothing
        _assert_pinned(name, shapley(pinned_game, n, batch_size=3, **kw))


# --------------------------------------------------------------------------- plan -> finish


def _assert_same_result(a, b) -> None:
    """Bit-identical results (same process, same code path for the numbers)."""
    assert torch.equal(a.values, b.values)
    assert (a.stderr is None) == (b.stderr is None)
    if a.stderr is not None:
        assert torch.equal(a.stderr, b.stderr)
    assert (a.n_evals, a.base_value, a.full_value, a.method, a.budget) == \
        (b.n_evals, b.base_value, b.full_value, b.method, b.budget)


def test_plan_then_finish_equals_shapley() -> None:
    for name, (n, kw) in CASES.items():
        p = plan(n, **kw)
        assert isinstance(p, ShapleyPlan) and p.method == kw["method"] and p.n_players == n
        rows = p.coalitions
        assert rows.dtype == torch.bool and rows.shape == (p.n_evals, n)
        assert len({tuple(r) for r in rows.tolist()}) == p.n_evals  # distinct
        assert [False] * n in rows.tolist() and [True] * n in rows.tolist()  # ∅ and N
        res = p.finish(pinned_game(rows))
        _assert_same_result(res, shapley(pinned_game, n, **kw))
        assert res.budget == p.budget and res.n_evals == p.n_evals
        _assert_pinned(name, res)
        # a plan is not used up by finishing it
        _assert_same_result(p.finish(pinned_game(rows)), res)
    assert repr(plan(9, **CASES["kernel"][1])) == \
        "ShapleyPlan(method='kernel', n_players=9, budget=40, n_evals=36)"


def test_plans_of_several_games_evaluated_in_one_call() -> None:
    """The use the two phases exist for: all plans' coalitions go through one evaluation, each
    game's values are split back out, and every result equals its own shapley() call."""
    games = [(pinned_game, 6, dict(method="permutation", budget=8, seed=1)),
             (lambda c: pinned_game(c) * 2.0 - 1.0, 5, dict(method="kernel", budget=12, seed=2)),
             (lambda c: pinned_game(c.flip(1)), 6, dict(method="owen", hierarchy=HIERARCHY))]
    plans = [plan(n, **kw) for _, n, kw in games]
    values = [fn(p.coalitions) for (fn, _, _), p in zip(games, plans)]
    flat = torch.cat(values)  # stands for one packed pass over every plan
    parts = flat.split([p.n_evals for p in plans])
    for (fn, n, kw), p, part in zip(games, plans, parts):
        _assert_same_result(p.finish(part), shapley(fn, n, **kw))


def test_finish_accepts_numpy_lists_and_other_dtypes() -> None:
    p = plan(5, method="permutation", budget=6, seed=3)
    v = pinned_game(p.coalitions)
    expected = p.finish(v)
    assert torch.equal(p.finish(v.numpy()).values, expected.values)
    assert torch.equal(p.finish(v.tolist()).values, expected.values)
    for other in (v.float(), v.clone().requires_grad_(True)):
        assert torch.allclose(p.finish(other).values, expected.values, atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (lambda v: v[:-1], r"ShapleyPlan.finish needs one value per coalition, shape \(\d+,\), but got shape"),
    (lambda v: v[:, None], r"but got shape \(\d+, 1\)"),
    (lambda v: 1.0, r"but got shape \(\)"),
    (lambda v: ["a"] * v.shape[0], "ShapleyPlan.finish got non-numeric values"),
    (lambda v: v.to(torch.complex64), "non-numeric values"),
])
def test_finish_rejects_bad_values(bad, match: str) -> None:
    p = plan(4, method="exact")
    with pytest.raises(ValueError, match=match):
        p.finish(bad(pinned_game(p.coalitions)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_finish_names_the_non_finite_coalition(value: float) -> None:
    p = plan(4, method="kernel", budget=14, seed=0)  # every proper coalition: {1, 2} is planned
    v = pinned_game(p.coalitions)
    row = int(np.flatnonzero([r == [False, True, True, False] for r in p.coalitions.tolist()])[0])
    v[row] = value
    with pytest.raises(ValueError, match=rf"not finite\) for coalition \[1, 2\] \(row {row} of the plan"):
        p.finish(v)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"n_players": 0}, ValueError, "n_players must be >= 1"),
    ({"n_players": 2.5}, TypeError, "n_players must be an int"),
    ({"method": "banzhaf"}, ValueError, "unknown method 'banzhaf'"),
    ({"budget": 5}, ValueError, "must be even; got budget=5"),
    ({"method": "exact", "budget": 8}, ValueError, "takes no budget"),
    ({"method": "owen"}, ValueError, "method='owen' needs a hierarchy"),
    ({"method": "owen", "hierarchy": [[0, 1]]}, ValueError, r"missing players: \[2\]"),
    ({"hierarchy": [0, 1, 2]}, ValueError, "hierarchy is only used by method='owen'"),
    ({"seed": "x"}, TypeError, "seed must be an int"),
])
def test_plan_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"n_players": 3, **kwargs}
    with pytest.raises(error, match=match):
        plan(args.pop("n_players"), **args)
