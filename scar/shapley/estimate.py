"""Shapley and Owen value estimators for a batched value function.

A *value function* takes a bool tensor ``[C, n]`` (row ``c`` is coalition ``S_c``; column ``i`` says
whether player ``i`` is in it) and returns ``C`` values. In SCAR one call becomes one packed
reward-model pass, so every estimator here works in two phases:

1. :func:`plan` builds the whole *plan* (every coalition the method needs) with vectorised torch
   code and dedupes it: :attr:`ShapleyPlan.coalitions` holds each distinct coalition, including the
   empty coalition and the grand coalition, exactly once;
2. the caller evaluates those coalitions, in one call or many, and :meth:`ShapleyPlan.finish` turns
   the values into Shapley (or Owen) values in float64.

:func:`shapley` is the two phases with a value function in between (all distinct coalitions in one
``value_fn`` call, or in chunks of ``batch_size`` rows). Splitting them lets a caller evaluate the
plans of many games together: :func:`scar.credit.attribution.shapley_values_many` scores the plans of
a whole batch of responses in one packed reward-model forest.

Each method lives in its own module (:mod:`~scar.shapley.exact`, :mod:`~scar.shapley.permutation`,
:mod:`~scar.shapley.kernel`, :mod:`~scar.shapley.owen`, :mod:`~scar.shapley.stratified`) over the shared
:mod:`~scar.shapley.base`.

Methods (see :func:`shapley`):

``exact``
    All ``2**n`` coalitions, closed-form Shapley weights; ``n <= EXACT_MAX_PLAYERS``.
``permutation``
    Antithetic permutation sampling: each sampled permutation and its reverse. Efficiency holds
    exactly for every sampled permutation; the standard error comes from the spread of the
    antithetic pair means.
``kernel`` (the default)
    KernelSHAP with paired sampling (each coalition with its complement) and the efficiency
    constraint imposed exactly (KKT system). Coalition sizes whose every coalition the budget can
    afford are enumerated with exact kernel weights (as shap's KernelExplainer does); the rest of
    the budget samples the other sizes. Standard error: the cluster-robust sandwich
    (delta-method) variance of the constrained least-squares estimate, with complementary pairs
    as the independent units and leave-pair-out residuals (CR3). Like any KernelSHAP with a
    sampled design matrix it is consistent but slightly biased at small budgets (the bias falls
    faster than the standard error, which covers the variance only). When the budget covers every
    coalition the exact Shapley values are returned.
``owen``
    Owen values for a nested partition of the players. Exact by enumeration for small trees,
    antithetic hierarchy-consistent permutation sampling otherwise.
``stratified``
    Coalitions stratified by size (complementary pairs drawn without replacement, at least two per size
    class, the extreme sizes enumerated when affordable); the unbiased stratified estimate (each coalition
    serves every player), KernelSHAP's regression on the same coalitions and regression-adjusted
    estimates (a polynomial surrogate's closed-form values plus the cross-fitted stratified estimate of
    the residual game), combined with the weights that minimise their jackknife variance and shrunk
    towards the equal split when the noise is as large as the values. Exactly efficient; not linear in
    the values (the weights depend on them). Its finish does far more arithmetic than ``kernel``'s (a
    jackknife over groups of pairs, the order-3 surrogate's ``n + comb(n, 3)`` coefficients refitted per
    group), which matters where evaluations are cheap: prefer it when each coalition costs a reward-model
    forward that dwarfs a few hundred small linear solves.

With ``tol``, :func:`shapley` samples in rounds until every player's standard error is at most ``tol``
(:mod:`~scar.shapley.adaptive`).

All randomness comes from a private ``torch.Generator`` seeded with ``seed``; the global RNG is
never touched, and the same seed gives the same plan and therefore the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scar._checks import as_int, check_seed
from scar.shapley.adaptive import AdaptiveRun
from scar.shapley.base import ShapleyPlan, ShapleyResult, ValueFn, make_generator, to_float64, unique_rows
from scar.shapley.exact import exact_plan
from scar.shapley.kernel import kernel_plan
from scar.shapley.owen import owen_plan
from scar.shapley.permutation import permutation_plan
from scar.shapley.stratified import stratified_plan

__all__ = ["METHODS", "DEFAULT_METHOD", "plan", "shapley"]

METHODS = ("exact", "permutation", "kernel", "owen", "stratified")

DEFAULT_METHOD = "kernel"
"""The default estimator: KernelSHAP, whose finish is one small constrained solve and whose intervals cover on
every benchmark game; at its default budget it is exact up to 8 players. ``stratified`` errs less per evaluation
and per token on most benchmark games (``bench/RESULTS.md``), but its finish refits its surrogates for every
jackknife group, which costs far more than the solve."""


def plan(
    n_players: int,
    *,
    method: str = DEFAULT_METHOD,
    budget: int | None = None,
    seed: int | None = None,
    hierarchy: Sequence[Any] | None = None,
) -> ShapleyPlan:
    """Phase one of :func:`shapley`: the distinct coalitions a method needs, and how to finish.

    Evaluate ``plan(...).coalitions`` (bool ``[U, n_players]``) and pass the ``U`` values to
    :meth:`ShapleyPlan.finish`; the result is exactly what :func:`shapley` returns for the same
    arguments and a value function giving the same values.

    Args:
        n_players, method, budget, seed, hierarchy: as :func:`shapley`.

    Returns:
        A :class:`ShapleyPlan`.

    Raises:
        TypeError: ``n_players``, ``budget`` or ``seed`` not an int; malformed hierarchy entries.
        ValueError: ``n_players < 1``; unknown method; budget invalid for the method; budget given
            to ``exact``; seed outside ``[0, 2**63)``; hierarchy given to a method other than
            ``owen`` or not a partition; ``exact`` with more than ``EXACT_MAX_PLAYERS`` players,
            ``kernel`` with more than ``KERNEL_MAX_PLAYERS``; a plan above ``MAX_PLAN_ROWS``
            coalitions or ``MAX_PLAN_ENTRIES`` entries (raised before it is built).
    """
    n = as_int(n_players, "n_players")
    if n < 1:
        raise ValueError(f"n_players must be >= 1, got {n}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if budget is not None:
        budget = as_int(budget, "budget")
    if hierarchy is not None and method != "owen":
        raise ValueError(f"hierarchy is only used by method='owen', got method={method!r}")
    gen = make_generator(check_seed(seed))

    if method == "exact":
        if budget is not None:
            raise ValueError(
                f"method='exact' evaluates all 2**n coalitions and takes no budget "
                f"(got budget={budget}); use 'permutation' or 'kernel' to sample"
            )
        rows, used, solve = exact_plan(n)
    elif method == "permutation":
        rows, used, solve = permutation_plan(n, budget, gen)
    elif method == "kernel":
        rows, used, solve = kernel_plan(n, budget, gen)
    elif method == "stratified":
        rows, used, solve = stratified_plan(n, budget, gen)
    else:
        rows, used, solve = owen_plan(n, hierarchy, budget, gen)
    uniq, inverse = unique_rows(rows)
    return ShapleyPlan(uniq, method, used, inverse, solve)


def shapley(
    value_fn: ValueFn,
    n_players: int,
    *,
    method: str = DEFAULT_METHOD,
    budget: int | None = None,
    seed: int | None = None,
    hierarchy: Sequence[Any] | None = None,
    batch_size: int | None = None,
    tol: float | None = None,
    tol_absolute: bool = False,
    max_budget: int | None = None,
) -> ShapleyResult:
    """Shapley (or Owen) values of the game ``value_fn`` on ``n_players`` players.

    The two phases of :func:`plan` and :meth:`ShapleyPlan.finish` with ``value_fn`` in between.

    Args:
        value_fn: maps a bool tensor ``[C, n_players]`` of coalitions to ``C`` finite numbers
            (torch tensor, numpy array or sequence). Each distinct coalition the method needs,
            including ∅ and the grand coalition, is passed exactly once; all of them in one call
            unless ``batch_size`` is given.
        n_players: number of players, a positive int.
        method: ``"exact"``, ``"permutation"``, ``"kernel"`` (default), ``"owen"`` or ``"stratified"`` (see
            the module docs).
        budget: sampling budget. ``permutation``: number of permutations, even and >= 2 (default
            ``DEFAULT_PERMUTATIONS`` = 32); a budget whose plan (``budget * (n + 1)`` rows) has at
            least the ``2**n`` rows of the exact plan is capped there and gives the exact values
            (``stderr`` zeros, ``budget`` the cap; exact up to 8 players by default).
            ``kernel``: number of coalitions planned besides ∅ and N (enumerated size classes plus
            sampled pairs; duplicates among the sampled ones are evaluated once, so
            ``n_evals <= budget + 2``), even and >= 2 (default :func:`kernel_default_budget`,
            ``min(32 (n + 1), 2**n - 2)``; a budget >= ``2**n - 2`` gives the exact answer; at most
            ``KERNEL_MAX_PLAYERS`` players).
            ``owen``: number of hierarchy-consistent permutations, even and >= 2, capped like
            ``permutation`` where the sampled plan would have at least the rows of the exact Owen
            plan; when omitted the Owen values are exact if the tree is small
            (``OWEN_EXACT_MAX_TERMS``), else 32 permutations are sampled. ``stratified``: as
            ``kernel`` (coalitions besides ∅ and N, even, >= 2, same default and cap), drawn without
            replacement, so ``n_evals == budget + 2``. ``exact`` takes none.
            Any plan is limited to ``MAX_PLAN_ROWS`` coalitions and ``MAX_PLAN_ENTRIES``
            coalitions x players.
        seed: seed of the private generator of sampled methods, an int in ``[0, 2**63)`` (same
            seed, same result); ``None`` draws fresh entropy.
        hierarchy: ``owen`` only: nested lists of player indices partitioning ``range(n)``, e.g.
            ``[[0, 1], [2, [3, 4]]]``; a flat list of ints is singleton groups (= Shapley). Any
            depth; a group with a single child is that child.
        batch_size: at most this many coalitions per ``value_fn`` call.
        tol: adaptive stopping (:class:`~scar.shapley.adaptive.AdaptiveRun`): sample in rounds until every
            player's ``stderr`` is at most ``tol`` times ``|v(N) - v(∅)|`` (or ``tol`` itself with
            ``tol_absolute``), or ``max_budget`` is spent; each round passes only coalitions no earlier round
            passed to ``value_fn``. ``budget`` is then the first round's budget (default 8 permutations,
            ``4 (n + 1)`` coalitions for ``kernel`` and ``stratified``); the tolerance is tested from twice
            that default on (:data:`~scar.shapley.adaptive.MIN_STOP_FACTOR`), so a small first round is always
            followed by another. The result's ``rounds``, ``tol`` (absolute) and
            ``tol_met`` say how it went, ``budget`` and ``n_evals`` what it spent. ``exact`` meets any ``tol``
            in its one round. Methods: ``exact``, ``permutation``, ``kernel``, ``owen``.
        tol_absolute: ``tol`` is in the game's units instead of relative to ``|v(N) - v(∅)|``.
        max_budget: with ``tol``: the most budget to spend, in ``budget``'s unit, even (default 8 times the
            method's default budget: 256 permutations, ``256 (n + 1)`` coalitions for ``kernel``).

    Returns:
        A :class:`ShapleyResult`.

    Raises:
        TypeError: ``value_fn`` not callable; ``n_players``, ``budget``, ``seed`` or
            ``batch_size`` not an int; malformed hierarchy entries.
        ValueError: as :func:`plan`; ``value_fn`` returning the wrong shape, non-numeric, NaN or
            infinite values (the message names the coalition); ``tol`` not a finite number > 0;
            ``max_budget`` odd, below 2 or below the first round; ``max_budget`` or ``tol_absolute``
            without ``tol``; ``tol`` with a method that does not sample in rounds.
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable (bool Tensor[C, n] -> [C] values), got {type(value_fn).__name__}")
    if batch_size is not None:
        batch_size = as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tol is None:
        if max_budget is not None or tol_absolute is not False:
            raise ValueError("max_budget and tol_absolute apply to adaptive stopping: give tol as well")
    else:
        run = AdaptiveRun(
            n_players,
            method,
            tol=tol,
            tol_absolute=tol_absolute,
            max_budget=max_budget,
            budget=budget,
            seed=seed,
            hierarchy=hierarchy,
        )
        while not run.done:
            todo = run.coalitions
            step = todo.shape[0] if batch_size is None else min(batch_size, todo.shape[0])
            chunks = [to_float64(value_fn(batch), batch) for batch in todo.split(step)] if step else []
            run._feed(torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64))
        assert run.result is not None
        return run.result
    game = plan(n_players, method=method, budget=budget, seed=seed, hierarchy=hierarchy)
    coalitions = game.coalitions
    step = coalitions.shape[0] if batch_size is None else min(batch_size, coalitions.shape[0])
    chunks = [to_float64(value_fn(batch), batch) for batch in coalitions.split(step)]
    return game._finish(torch.cat(chunks))
