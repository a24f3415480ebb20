"""How far regression-adjusted stratified sampling can go on a game whose every coalition value is known.

``stratified`` (:mod:`scar.shapley.stratified`) estimates Shapley values as the exact values of a fitted
surrogate plus a stratified Monte Carlo estimate on the residual game. Its error therefore has two parts:
the surrogate's fitting noise and the Monte Carlo noise of whatever the surrogate leaves. This module measures
the second part alone, the *oracle bound*: the surrogate is fitted to **all** ``2**n`` coalition values (no
fitting noise, which no sampled estimator can have), its Shapley values are exact, and only the residual is
sampled with ``stratified``'s own design (:func:`~scar.shapley.stratified.stratified_design`) and Monte Carlo
estimate (:func:`~scar.shapley.stratified.stratified_mc`). No estimator of this family, with a polynomial
surrogate of that order, can do better on average than the bound at the same number of coalitions.

Surrogates: polynomials in the membership indicators up to ``order`` (0: none, plain stratified Monte Carlo;
1: additive; 3: up to triples), fitted by least squares with each size class weighted by its Shapley-kernel
mass spread evenly over its coalitions (the weighting ``stratified`` uses), ∅ and N included. Order 2 is left
out because it cannot help: ``stratified`` samples complementary pairs and its estimate of a size class depends
on a pair only through ``v(S) - v(N \\ S)``, in which every even-degree term of the residual cancels (see
:mod:`scar.shapley.surrogate`), so an order-2 oracle gives the order-1 oracle's errors to rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from scar.shapley import shapley
from scar.shapley.stratified import stratified_design, stratified_mc

__all__ = ["BOUND_ORDERS", "BOUND_MAX_PLAYERS", "all_coalitions", "table_shapley", "oracle_surrogate",
           "residual_share", "oracle_bound_errors", "smallest_budget"]

BOUND_ORDERS = (0, 1, 3)
"""Surrogate orders of the bound: none, additive, up to triples."""

BOUND_MAX_PLAYERS = 18
"""Largest ``n`` the bound enumerates (``2**n`` coalitions times the order-3 polynomial's columns)."""


def all_coalitions(n: int) -> np.ndarray:
    """Every coalition of ``n`` players as bool ``[2**n, n]``; row ``k`` is the integer mask ``k``."""
    if not 1 <= n <= BOUND_MAX_PLAYERS:
        raise ValueError(f"the bound enumerates 2**n coalitions: 1 <= n <= {BOUND_MAX_PLAYERS}, got n={n}")
    return (np.arange(2**n)[:, None] >> np.arange(n)) & 1 == 1


def _check_table(table: np.ndarray) -> int:
    table = np.asarray(table)
    n = round(math.log2(table.shape[0])) if table.ndim == 1 and table.shape[0] > 1 else -1
    if n < 1 or table.shape[0] != 2**n:
        raise ValueError(f"a coalition table has 2**n entries (index = bitmask), got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("the coalition table holds non-finite values")
    return n


def table_shapley(table: np.ndarray) -> np.ndarray:
    """Exact Shapley values of the game whose value on the coalition with bitmask ``k`` is ``table[k]``."""
    n = _check_table(table)
    values = torch.as_tensor(np.asarray(table, dtype=np.float64))
    res = shapley(lambda c: values[(c.long() << torch.arange(n)).sum(1)], n, method="exact")
    return res.values.numpy()


def _features(z: np.ndarray, order: int) -> np.ndarray:
    """Products of up to ``order`` membership indicators, the constant first (float64 ``[rows, terms]``)."""
    zf = z.astype(np.float64)
    cols = [np.ones(z.shape[0])]
    for k in range(1, order + 1):
        cols += [zf[:, list(t)].prod(1) for t in itertools.combinations(range(z.shape[1]), k)]
    return np.stack(cols, 1)


def oracle_surrogate(table: np.ndarray, order: int) -> np.ndarray:
    """The order-``order`` polynomial fitted to every coalition value (kernel-weighted least squares), as a
    table like ``table``; order 0 is the zero game (no surrogate)."""
    n = _check_table(table)
    if order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0, 1, 2 or 3, got {order}")
    if order == 0:
        return np.zeros(2**n)
    z = all_coalitions(n)
    sizes = z.sum(1)
    mass = _class_weights(n)
    # each proper class's mass spread over its coalitions; the ends weigh as much as the heaviest coalition
    per = np.array([mass[s] / math.comb(n, s) for s in range(n + 1)])
    per[0] = per[n] = per[1:n].max()
    root = np.sqrt(per[sizes])
    x = _features(z, order)
    beta = np.linalg.lstsq(x * root[:, None], np.asarray(table, dtype=np.float64) * root, rcond=None)[0]
    return x @ beta


def _class_weights(n: int) -> np.ndarray:
    """Shapley-kernel mass of each coalition size ``0..n`` (zero for the ends), summing to 1."""
    mass = np.array([(n - 1) / (s * (n - s)) if 0 < s < n else 0.0 for s in range(n + 1)])
    return mass / mass.sum()


def residual_share(table: np.ndarray, surrogate: np.ndarray) -> float:
    """What the surrogate leaves for the Monte Carlo part to sample: the within-size variance of the residual's
    pair differences ``r(S) - r(N \\ S)`` (the only part of the residual ``stratified``'s estimate sees), each
    size weighted by its Shapley-kernel mass, as a share of the same for the game."""
    n = _check_table(table)
    sizes = all_coalitions(n).sum(1)
    mass = _class_weights(n)
    flip = (2**n - 1) - np.arange(2**n)  # the complement's bitmask

    def spread(values: np.ndarray) -> float:
        diff = values - values[flip]
        return float(sum(mass[s] * diff[sizes == s].var() for s in range(1, n)))

    game = spread(np.asarray(table, dtype=np.float64))
    left = spread(np.asarray(table, dtype=np.float64) - np.asarray(surrogate, dtype=np.float64))
    return left / game if game > 0 else 0.0


def oracle_bound_errors(table: np.ndarray, reference: np.ndarray, surrogate: np.ndarray, budgets: Sequence[int],
                        seeds: Sequence[int]) -> dict[int, list[float]]:
    """Relative L2 error to ``reference`` of the oracle estimate (see the module docs) with the ``surrogate``
    table (from :func:`oracle_surrogate`) per budget (coalitions besides ∅ and N, even) and seed:
    ``phi(surrogate)`` exact plus ``stratified``'s Monte Carlo estimate of the residual game on the coalitions
    its design draws with that seed."""
    n = _check_table(table)
    if _check_table(surrogate) != n:
        raise ValueError(f"the surrogate's table has {len(surrogate)} entries, the game's {len(table)}")
    table = np.asarray(table, dtype=np.float64)
    residual = table - np.asarray(surrogate, dtype=np.float64)
    exact_part = table_shapley(np.asarray(surrogate, dtype=np.float64))
    reference = np.asarray(reference, dtype=np.float64)
    scale = float(np.linalg.norm(reference))
    if scale == 0:
        raise ValueError("the reference values are all zero: a relative error is undefined")
    weights = 1 << np.arange(n)
    out: dict[int, list[float]] = {}
    for budget in budgets:
        errs = []
        for seed in seeds:
            z, strata, _ = stratified_design(n, budget, torch.Generator().manual_seed(seed))
            y = torch.from_numpy(residual[(z.numpy() * weights).sum(1)])
            keep = torch.ones(z.shape[0], dtype=torch.bool)
            est = exact_part + stratified_mc(z, y, strata, keep, residual[0], residual[-1]).numpy()
            errs.append(float(np.linalg.norm(est - reference)) / scale)
        out[budget] = errs
    return out


def smallest_budget(budgets: Sequence[float], errors: Sequence[float], target: float) -> float:
    """The budget at which the error curve (``errors[k]`` at ``budgets[k]``, increasing budgets) first reaches
    ``target``, interpolated log-log between the two budgets around the crossing; ``inf`` if it never does,
    the first budget if it starts there."""
    if len(budgets) != len(errors) or not budgets:
        raise ValueError("budgets and errors must be non-empty and of the same length")
    if errors[0] <= target:
        return float(budgets[0])
    for (b0, e0), (b1, e1) in itertools.pairwise(zip(budgets, errors)):
        if e1 <= target:
            if e0 == e1:
                return float(b1)
            t = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
    return math.inf
