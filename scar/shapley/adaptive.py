"""Adaptive stopping: sample a game in rounds until every player's standard error is at most a tolerance.

Each round adds samples of the method's unit to those of the rounds before (antithetic permutation pairs for
``permutation`` and ``owen``, complementary coalition pairs for ``kernel`` and ``stratified``, whose size classes
each add pairs drawn without replacement among those not drawn yet), and the estimate of a round uses every
sample drawn so far. A round hands out only the coalitions no earlier round evaluated, so no
coalition is ever evaluated twice. Sampling stops when every player's ``stderr`` is at most the tolerance
(relative to ``|v(N) - v(∅)|`` by default, or absolute) and the budget is at least the smallest one the
tolerance is tested at (:data:`MIN_STOP_FACTOR`), when the budget would reach the exact plan (the values are
then exact), or when ``max_budget`` is spent.

The size of the next round comes from the standard error just measured: it falls like one over the square
root of the budget, so the budget that meets the tolerance is predicted and the next round reaches it, at
least one unit more (and at least the smallest budget the tolerance is tested at) and at most
:data:`MAX_GROWTH` times the budget so far (a noisy early estimate cannot send the budget far past what is
needed).

:class:`AdaptiveRun` is the round-by-round protocol (:attr:`AdaptiveRun.coalitions` to evaluate,
:meth:`AdaptiveRun.feed` their values), so a caller can evaluate the rounds of many games together, as
:func:`scar.credit.attribution.shapley_values_many` does with one packed reward-model pass per round;
:func:`scar.shapley.shapley` with ``tol`` runs it with a value function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from scar._checks import as_int, check_tolerance
from scar.shapley.base import (
    MAX_PLAN_ENTRIES,
    MAX_PLAN_ROWS,
    PlanParts,
    ShapleyResult,
    _pack_rows,
    cap_at_proper_coalitions,
    capped,
    check_plan_size,
    make_generator,
    plan_fits,
    random_orders,
    to_float64,
    unique_rows,
)
from scar.shapley.exact import EXACT_MAX_PLAYERS, exact_plan
from scar.shapley.kernel import kernel_default_budget, kernel_design_extend, kernel_parts
from scar.shapley.owen import owen_exact_cap, owen_exact_parts, owen_orders, parse_hierarchy
from scar.shapley.permutation import DEFAULT_PERMUTATIONS, antithetic_plan, exact_cap
from scar.shapley.stratified import Stratum, stratified_design, stratified_parts

__all__ = [
    "ADAPTIVE_METHODS",
    "FIRST_ROUND_PERMUTATIONS",
    "MAX_BUDGET_FACTOR",
    "MAX_GROWTH",
    "MIN_STOP_FACTOR",
    "AdaptiveRun",
    "first_round_budget",
    "default_max_budget",
]

ADAPTIVE_METHODS = ("exact", "permutation", "kernel", "owen", "stratified")
"""The methods that sample in rounds (``exact`` meets any tolerance in its one round)."""

_COALITION_METHODS = ("kernel", "stratified")  # budgets in coalitions besides ∅ and N, not permutations

FIRST_ROUND_PERMUTATIONS = 8
"""Default first round of ``permutation`` and ``owen``: 8 permutations (4 antithetic pairs), the fewest whose
standard error the calibration covers (``bench/RESULTS.md``)."""

MAX_BUDGET_FACTOR = 8
"""Default ``max_budget``: this many times the method's default budget (256 permutations; 256 ``(n + 1)``
coalitions for ``kernel`` and ``stratified``, at most the ``2**n - 2`` of the exact answer)."""

MAX_GROWTH = 4
"""A round takes the budget to at most this many times the budget so far."""

MIN_STOP_FACTOR = 2
"""The tolerance is tested only from this many times the default first round's budget on (16 permutations,
8 antithetic pairs; ``8 (n + 1)`` coalitions for ``kernel`` and ``stratified``), or from ``max_budget`` when that
is lower.

A standard error estimated from the few samples of a first round is itself noisy. Where a game needs more
than one round, the runs whose first round meets the tolerance are those whose error came out too small by
chance, and their intervals are too short (optional stopping). From this budget on the estimate is steady
enough that stopping on it keeps the intervals' coverage; a first round of at least this budget (``budget``)
can stop at once."""


def first_round_budget(method: str, n: int) -> int:
    """The default budget of the first round: :data:`FIRST_ROUND_PERMUTATIONS` permutations, or ``4 (n + 1)``
    coalitions for ``kernel`` and ``stratified`` (at most ``2**n - 2``), the smallest budget whose ``kernel``
    standard error covers in the calibration measurement; 0 for ``exact``."""
    if method in _COALITION_METHODS:
        return cap_at_proper_coalitions(4 * (n + 1), n)
    return 0 if method == "exact" else FIRST_ROUND_PERMUTATIONS


def default_max_budget(method: str, n: int) -> int:
    """The default ``max_budget``: :data:`MAX_BUDGET_FACTOR` times the method's default budget."""
    if method in _COALITION_METHODS:
        return cap_at_proper_coalitions(MAX_BUDGET_FACTOR * kernel_default_budget(n), n)
    return 0 if method == "exact" else MAX_BUDGET_FACTOR * DEFAULT_PERMUTATIONS


def _check_even_budget(value: int, name: str, method: str) -> None:
    unit = "coalitions" if method in _COALITION_METHODS else "permutations"
    if value < 2:
        raise ValueError(f"method={method!r} needs {name} >= 2 {unit} (one pair); got {name}={value}")
    if value % 2:
        raise ValueError(f"method={method!r} samples {unit} in pairs, so {name} must be even; got {name}={value}")


class AdaptiveRun:
    """One game sampled in rounds until every player's standard error is at most a tolerance.

    The protocol: while not :attr:`done`, evaluate :attr:`coalitions` (the coalitions of this round that no
    earlier round evaluated; ∅ and N in the first) and pass their values to :meth:`feed`. Then
    :attr:`result` is the estimate from every sample drawn, with ``rounds``, ``tol`` (absolute) and
    ``tol_met`` set; ``budget`` is the budget spent and ``n_evals`` the distinct coalitions evaluated. The
    tolerance is tested from :data:`MIN_STOP_FACTOR` times the default first round's budget on (or from
    ``max_budget``, when lower), so a small first round is always followed by another.

    Args:
        n_players: number of players, a positive int.
        method: one of :data:`ADAPTIVE_METHODS`.
        tol: the standard error every player must reach: a finite number > 0, relative to
            ``|v(N) - v(∅)|`` unless ``tol_absolute`` (a relative ``tol`` of a game with ``v(N) = v(∅)`` is
            met by exact values only).
        tol_absolute: ``tol`` is absolute (in the game's units).
        max_budget: the most budget to spend, in the method's unit (permutations; ``kernel`` and
            ``stratified``: coalitions besides ∅ and N), even and at least the first round; default
            :func:`default_max_budget`.
        budget: the first round's budget (default :func:`first_round_budget`); ``exact`` takes none.
        seed: seed of the private generator (same seed, same rounds and result); None draws fresh entropy.
        hierarchy: ``owen`` only, as :func:`scar.shapley.shapley`.

    Raises:
        TypeError / ValueError: as :func:`scar.shapley.plan` for ``n_players``, ``budget``, ``seed`` and
            ``hierarchy``; ``tol`` not a finite number > 0; ``max_budget`` not an even int >= 2, or below the
            first round; a method that does not sample in rounds.
    """

    def __init__(
        self,
        n_players: int,
        method: str,
        *,
        tol: float,
        tol_absolute: bool = False,
        max_budget: int | None = None,
        budget: int | None = None,
        seed: int | None = None,
        hierarchy: Sequence[Any] | None = None,
    ) -> None:
        n = as_int(n_players, "n_players")
        if n < 1:
            raise ValueError(f"n_players must be >= 1, got {n}")
        if not isinstance(method, str) or method not in ADAPTIVE_METHODS:
            raise ValueError(
                f"tol (adaptive stopping) works with methods {', '.join(ADAPTIVE_METHODS)}; got method={method!r}"
            )
        self.tol = check_tolerance(tol, "tol")
        if not isinstance(tol_absolute, bool):
            raise TypeError(f"tol_absolute must be a bool, got {type(tol_absolute).__name__}")
        self.tol_absolute = tol_absolute
        if hierarchy is not None and method != "owen":
            raise ValueError(f"hierarchy is only used by method='owen', got method={method!r}")
        self.n_players, self.method = n, method
        self._gen = make_generator(seed)
        self._tree: list | None = None
        self._owen_cap: int | None = None
        if method == "owen":
            if hierarchy is None:
                raise ValueError(
                    "method='owen' needs a hierarchy: nested lists of player indices that "
                    "partition range(n_players), e.g. [[0, 1], [2, [3, 4]]]"
                )
            self._tree = parse_hierarchy(hierarchy, n)
            self._owen_cap = owen_exact_cap(self._tree, n)
        if method == "exact":
            for name, value in (("budget", budget), ("max_budget", max_budget)):
                if value is not None:
                    raise ValueError(
                        f"method='exact' evaluates all 2**n coalitions in one round and takes no {name} "
                        f"(got {name}={value})"
                    )
            first, self.max_budget = 0, 0
        else:
            if budget is None:
                first = first_round_budget(method, n)
            else:
                first = as_int(budget, "budget")
                _check_even_budget(first, "budget", method)
            if max_budget is None:
                self.max_budget = max(min(default_max_budget(method, n), self._largest_plan()), first)
            else:
                self.max_budget = as_int(max_budget, "max_budget")
                _check_even_budget(self.max_budget, "max_budget", method)
                if self.max_budget < first:
                    raise ValueError(
                        f"max_budget={self.max_budget} is below the first round's budget={first}; "
                        "raise max_budget or lower budget"
                    )
                if self.max_budget > self._largest_plan():  # refused before anything is evaluated
                    check_plan_size(method, n, self.max_budget, self._rows(self.max_budget))
        self._halves = torch.zeros(0, n, dtype=torch.int64)  # permutation / owen: the sampled halves
        self._kernel_pairs = torch.zeros(0, n, dtype=torch.bool)  # kernel: first coalition of each pair
        self._design: tuple[torch.Tensor, list[Stratum], torch.Tensor] | None = None  # stratified: the design
        self._index: dict[bytes, int] = {}  # packed coalition -> its slot in _values
        self._values = torch.zeros(0, dtype=torch.float64)
        self._spent = 0
        self._exact = False
        self.rounds = 0
        self.done = False
        self.result: ShapleyResult | None = None
        self._min_stop = min(MIN_STOP_FACTOR * first_round_budget(method, n), self.max_budget)
        self._plan_round(first)

    def _exact_cap(self) -> int | None:
        """The budget from which the method's plan is the exact one (None: never, or ``kernel`` and
        ``stratified``, whose designs say so themselves)."""
        if self.method == "permutation":
            return exact_cap(2**self.n_players, self.n_players) if self.n_players <= EXACT_MAX_PLAYERS else None
        return self._owen_cap if self.method == "owen" else None

    def _rows(self, total: int) -> int:
        """Rows (∅ and N included, before dedupe) of the plan of a budget of ``total``."""
        if self.method in _COALITION_METHODS:
            return cap_at_proper_coalitions(total, self.n_players) + 2
        return total * (self.n_players + 1) + 2

    def _largest_plan(self) -> int:
        """The largest even budget whose plan is within the plan limits (any budget, when the exact plan caps
        it first)."""
        n, cap = self.n_players, self._exact_cap()
        if cap is not None or (self.method in _COALITION_METHODS and plan_fits(n, self._rows(2**62))):
            return 2**62
        per_budget = 1 if self.method in _COALITION_METHODS else n + 1
        largest = (min(MAX_PLAN_ROWS, MAX_PLAN_ENTRIES // n) - 2) // per_budget
        return max(2, largest - largest % 2)

    @property
    def n_evals(self) -> int:
        """Distinct coalitions evaluated so far."""
        return len(self._index)

    def _plan_round(self, total: int) -> None:
        """Plan the samples of a budget of ``total`` (in the method's unit, including earlier rounds)."""
        n = self.n_players
        if self.method == "exact":
            parts: PlanParts = exact_plan(n)
            self._exact = True
        elif self.method == "kernel":
            total = cap_at_proper_coalitions(total, n)
            z, w, pairs, mass = kernel_design_extend(n, total, self._kernel_pairs, self._gen)
            start = z.shape[0] - 2 * pairs
            self._kernel_pairs = z[start : start + pairs].clone()
            parts = kernel_parts(n, total, z, w, pairs, mass)
            self._exact = pairs == 0
        elif self.method == "stratified":
            self._design = stratified_design(n, cap_at_proper_coalitions(total, n), self._gen, self._design)
            z, strata, group = self._design
            total = z.shape[0]  # a class keeps every pair it drew, which can exceed the budget's share
            parts = stratified_parts(n, total, z, strata, group)
            self._exact = bool((group < 0).all())
        else:
            cap = self._exact_cap()
            if cap is not None and total >= cap:
                exact = exact_plan(n) if self.method == "permutation" else owen_exact_parts(self._tree or [], n)
                parts = capped(exact, self.method, cap)
                total, self._exact = cap, True
            else:
                check_plan_size(self.method, n, total, total * (n + 1) + 2)
                half = (total - 2 * self._halves.shape[0]) // 2
                if self.method == "permutation":
                    new = random_orders(half, n, self._gen)
                else:
                    new = owen_orders(self._tree or [], n, half, self._gen)
                self._halves = torch.cat([self._halves, new])
                parts = antithetic_plan(torch.cat([self._halves, self._halves.flip(1)]), self.method)
        rows, _, self._solve = parts
        self._spent = total
        uniq, self._inverse = unique_rows(rows)
        keys = [row.tobytes() for row in _pack_rows(uniq)]
        self._keys = keys
        fresh = [k not in self._index for k in keys]
        self._fresh = torch.tensor(fresh, dtype=torch.bool)
        self.coalitions = uniq[self._fresh]  # what this round needs that no earlier round evaluated

    def feed(self, values: Any) -> None:
        """Give the values of :attr:`coalitions` (``U`` finite numbers, any tensor, array or sequence): the
        round is finished, :attr:`result` updated, and either :attr:`done` set or the next round planned.

        Raises:
            RuntimeError: the run is done.
            ValueError: values of the wrong shape, non-numeric, NaN or infinite (the message names the
                coalition).
        """
        self._feed(to_float64(values, self.coalitions, from_value_fn=False, receiver="AdaptiveRun"))

    def _feed(self, values: torch.Tensor) -> None:
        """:meth:`feed` for float64 ``[U]`` values that are already validated."""
        if self.done:
            raise RuntimeError("this AdaptiveRun is done: read .result")
        start = len(self._index)
        for offset, key in enumerate(k for k, f in zip(self._keys, self._fresh.tolist()) if f):
            self._index[key] = start + offset
        self._values = torch.cat([self._values, values])
        slots = torch.tensor([self._index[k] for k in self._keys], dtype=torch.int64)
        res = self._solve(self._values[slots][self._inverse], len(self._index))
        self.rounds += 1
        target = self.tol if self.tol_absolute else self.tol * abs(res.full_value - res.base_value)
        se = res.stderr
        if se is not None and self.method in ("permutation", "owen") and not self._exact and not bool(se.any()):
            # No player's antithetic pairs varied: the sample cannot tell an exact answer from a rare
            # event it never drew, so it meets no tolerance (the budget grows until one varies).
            se = torch.full_like(se, math.inf)
        met = se is None or bool((se <= target).all())
        if met and not self._exact and self._spent < self._min_stop:
            met = False
        res = dataclasses.replace(res, rounds=self.rounds, tol=target, tol_met=met)
        self.result = res
        if met or self._exact or self._spent >= self.max_budget:
            self.done = True
            self.coalitions = torch.zeros(0, self.n_players, dtype=torch.bool)
            return
        self._plan_round(self._next_total(se, target))

    def _next_total(self, se: torch.Tensor | None, target: float) -> int:
        """The budget after the next round: the one predicted to meet ``target`` (standard errors fall like
        one over the square root of the budget), at least one unit more and at least the smallest budget the
        tolerance is tested at, at most :data:`MAX_GROWTH` times."""
        spent = self._spent
        worst = float(se.max()) if se is not None and not bool(torch.isnan(se).any()) else math.inf
        if target > 0 and math.isfinite(worst):
            predicted = spent * (worst / target) ** 2
        else:
            predicted = math.inf
        total = min(max(predicted, spent + 2, self._min_stop), MAX_GROWTH * spent, self.max_budget)
        total = math.ceil(total)
        return min(total + total % 2, self.max_budget)

    def __repr__(self) -> str:
        return (
            f"AdaptiveRun(method={self.method!r}, n_players={self.n_players}, rounds={self.rounds}, "
            f"budget={self._spent}, n_evals={self.n_evals}, done={self.done})"
        )
