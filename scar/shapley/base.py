"""What every estimator shares: the result and plan types, the plan dedupe, value checks, randomness.

An estimator of this package turns ``n`` players and a budget into a *plan*: the rows (coalitions) it
needs and a solver from their values to a :class:`ShapleyResult`. :func:`scar.shapley.estimate.plan`
dedupes the rows into a :class:`ShapleyPlan`, whose distinct coalitions a caller evaluates by any means.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scar._checks import check_seed

__all__ = [
    "ShapleyResult",
    "ShapleyPlan",
    "Solver",
    "ValueFn",
    "PlanParts",
    "MAX_PLAN_ROWS",
    "MAX_PLAN_ENTRIES",
    "check_plan_size",
    "plan_fits",
    "cap_at_proper_coalitions",
    "capped",
    "INTERVAL_Z",
    "VARIANCE_PRIOR_UNITS",
    "student_t_quantile",
    "sample_mean_stderr",
]

MAX_PLAN_ROWS = 2**22
"""Most coalitions (rows, ∅ and N included, before dedupe) one plan may hold: four times the largest exact
plan (``2**EXACT_MAX_PLAYERS`` rows), far more coalitions than a reward model scores for one response. Each
row also costs some tens of bytes of bookkeeping while the plan is built and deduped, whatever ``n``."""

MAX_PLAN_ENTRIES = 2**28
"""Most entries (rows x players) one plan may hold. The plan is a bool ``[rows, n]`` matrix that is built
and deduped with a few copies alive at once, so this bounds the memory of any plan to about a GiB
whatever the budget and ``n``; it admits every exact plan and the default budgets up to a few thousand
players."""

INTERVAL_Z = 1.959963984540054
"""The standard normal's 0.975 quantile: ``values +- INTERVAL_Z * stderr`` is the 95% interval every sampled
method's ``stderr`` is calibrated for."""

VARIANCE_PRIOR_UNITS = 2
"""Pseudo-units of the pooled variance in :func:`sample_mean_stderr`: each player's variance is estimated
from its own independent units plus this many units' worth of the variance pooled over all players (the
coverage measurement behind the choice is in ``bench/RESULTS.md``)."""

ValueFn = Callable[[torch.Tensor], Any]
"""``value_fn(coalitions: bool Tensor[C, n]) -> Tensor | ndarray | sequence of C numbers``."""


@dataclass(frozen=True, eq=False, repr=False)
class ShapleyResult:
    """Values of one game and how they were obtained.

    Attributes:
        values: float64 ``[n]`` Shapley (or Owen) values.
        stderr: float64 ``[n]`` standard error of each value for sampled estimates; NaN when it
            cannot be estimated (a single sampled pair), inf for ``kernel`` when the sample does
            not determine the values (raise the budget), zeros when a budget covered the exact
            plan (see ``budget``); ``None`` for ``exact`` and for ``owen`` exact by default.
        n_evals: number of distinct coalitions evaluated (rows passed to ``value_fn`` in total).
        base_value: ``v(∅)``.
        full_value: ``v(N)``.
        method: the method used.
        budget: the budget actually used: permutations for ``permutation`` and sampled ``owen``,
            planned coalitions besides ∅ and N for ``kernel`` (at most ``2**n - 2``); ``None``
            for ``exact`` and for ``owen`` exact by default. A ``permutation`` or ``owen`` budget
            whose plan would have at least as many rows as the exact plan (``2**n`` coalitions;
            the ``2 * terms`` rows of the Owen formula) is capped there: the values are exact,
            ``stderr`` is zeros, and ``budget`` is the cap, the smallest even number of
            permutations whose plan has that many rows. With adaptive stopping (``tol``): the
            budget spent over all rounds, in the same unit.
        rounds: adaptive stopping only (``tol`` given, else None): the number of sampling rounds,
            each one batch of new coalitions to evaluate.
        tol: adaptive stopping only: the absolute standard error every player had to reach (the
            relative ``tol`` times ``|v(N) - v(∅)|`` unless it was absolute).
        tol_met: adaptive stopping only: whether every player's ``stderr`` is at most :attr:`tol`
            (False when ``max_budget`` ran out first). ``stderr`` is the standard error achieved.

    Every sampled method's ``stderr`` is calibrated so that ``values +- 1.96 * stderr`` is a 95%
    interval (:data:`INTERVAL_Z`); ``bench/RESULTS.md`` has the measured coverage.
    """

    values: torch.Tensor
    stderr: torch.Tensor | None
    n_evals: int
    base_value: float
    full_value: float
    method: str
    budget: int | None
    rounds: int | None = None
    tol: float | None = None
    tol_met: bool | None = None

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.values.shape[0])

    @property
    def efficiency_gap(self) -> float:
        """``sum(values) - (v(N) - v(∅))``; zero up to rounding for every method here."""
        return float(self.values.sum()) - (self.full_value - self.base_value)

    def __repr__(self) -> str:
        max_se = "None" if self.stderr is None else f"{float(self.stderr.max()):.3g}"
        return (
            f"ShapleyResult(method={self.method!r}, n_players={self.n_players}, "
            f"budget={self.budget}, n_evals={self.n_evals}, base_value={self.base_value:.6g}, "
            f"full_value={self.full_value:.6g}, efficiency_gap={self.efficiency_gap:.3g}, "
            f"max_stderr={max_se}"
            + ("" if self.rounds is None else f", rounds={self.rounds}, tol={self.tol:.3g}, tol_met={self.tol_met}")
            + ")"
        )


Solver = Callable[[torch.Tensor, int], ShapleyResult]
"""``solve(values of the planned rows [M] float64, n_evals) -> ShapleyResult`` of one method."""

PlanParts = tuple[torch.Tensor, "int | None", Solver]
"""What an estimator module plans: ``(rows [M, n] bool, budget used, solver)``."""


@dataclass(frozen=True, eq=False, repr=False)
class ShapleyPlan:
    """The coalitions one game needs, and the way from their values to a :class:`ShapleyResult`.

    Built by :func:`scar.shapley.plan`. Evaluate :attr:`coalitions` by any means (for instance together with the
    plans of other games in one packed reward-model pass) and hand the values to :meth:`finish`.

    Attributes:
        coalitions: bool ``[U, n]``, the distinct coalitions to evaluate, each once, ∅ and the
            grand coalition N included (rows in the order of their packed bit pattern).
        method: the method planned.
        budget: the budget the plan uses, as :attr:`ShapleyResult.budget`.
    """

    coalitions: torch.Tensor
    method: str
    budget: int | None
    _inverse: torch.Tensor  # int64 [M]: the row of `coalitions` of each planned row
    _solve: Solver

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.coalitions.shape[1])

    @property
    def n_evals(self) -> int:
        """Number of distinct coalitions to evaluate (rows of :attr:`coalitions`)."""
        return int(self.coalitions.shape[0])

    def finish(self, values: Any) -> ShapleyResult:
        """The Shapley (or Owen) values from the values of :attr:`coalitions`.

        Args:
            values: ``U`` finite numbers (torch tensor on any device, numpy array or sequence);
                ``values[u]`` is the value of ``coalitions[u]``.

        Raises:
            ValueError: values of the wrong shape, non-numeric, NaN or infinite (the message names
                the coalition).
        """
        return self._finish(to_float64(values, self.coalitions, from_value_fn=False))

    def _finish(self, values: torch.Tensor) -> ShapleyResult:
        """:meth:`finish` for float64 ``[U]`` values that are already validated."""
        return self._solve(values[self._inverse], self.n_evals)

    def __repr__(self) -> str:
        return (
            f"ShapleyPlan(method={self.method!r}, n_players={self.n_players}, "
            f"budget={self.budget}, n_evals={self.n_evals})"
        )


def make_generator(seed: int | None) -> torch.Generator:
    """A private generator: seeded with ``seed`` (an int in ``[0, 2**63)``), or fresh entropy for None
    (the global RNG is left alone)."""
    gen = torch.Generator()
    seed = check_seed(seed)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def plan_fits(n: int, rows: int) -> bool:
    """Whether a plan of ``rows`` coalitions (∅ and N included, before dedupe) of ``n`` players is within
    :data:`MAX_PLAN_ROWS` and :data:`MAX_PLAN_ENTRIES`."""
    return rows <= MAX_PLAN_ROWS and rows * n <= MAX_PLAN_ENTRIES


def check_plan_size(method: str, n: int, budget: int | None, rows: int) -> None:
    """ValueError, before anything is allocated, when a plan of ``rows`` coalitions (∅ and N included,
    before dedupe) of ``n`` players exceeds :data:`MAX_PLAN_ROWS` or :data:`MAX_PLAN_ENTRIES`."""
    if plan_fits(n, rows):
        return
    raise ValueError(
        f"method={method!r} with n_players={n} and budget={budget} would plan {rows} coalitions "
        f"({rows * n} entries, coalitions x players); a plan is limited to MAX_PLAN_ROWS = {MAX_PLAN_ROWS} "
        f"coalitions and MAX_PLAN_ENTRIES = {MAX_PLAN_ENTRIES} entries: lower the budget"
        + ("" if rows > MAX_PLAN_ROWS else " or the number of players")
    )


def capped(parts: PlanParts, method: str, budget: int) -> PlanParts:
    """An exact plan standing in for a sampled ``method`` whose ``budget`` would plan at least as many
    rows: the result carries ``method``, the capped ``budget`` and zero standard errors."""
    rows, _, solve = parts

    def solve_capped(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        res = solve(v, n_evals)
        zeros = torch.zeros(res.n_players, dtype=torch.float64)
        return dataclasses.replace(res, stderr=zeros, method=method, budget=budget)

    return rows, budget, solve_capped


def cap_at_proper_coalitions(count: int, n: int) -> int:
    """``min(count, 2**n - 2)`` for ``count >= 0``, without forming ``2**n`` when ``n`` is large."""
    return min(count, 2**n - 2) if n <= count.bit_length() else count


def _pack_rows(coalitions: torch.Tensor) -> np.ndarray:
    """Pack bool rows ``[M, n]`` into int64 keys ``[M, ceil(n / 64)]`` (one bit per player)."""
    m = coalitions.shape[0]
    packed = np.packbits(coalitions.contiguous().numpy(), axis=1)
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((m, pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(np.int64)


def unique_rows(coalitions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of a bool ``[M, n]`` plan and, for each row, the index of its distinct row.

    Sorts the packed keys with numpy's lexsort (torch's row-wise sorts and ``unique(dim=0)`` are
    several times slower on CPU) and keeps the first row of each run of equal keys.
    """
    keys = _pack_rows(coalitions)
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(1)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return coalitions[torch.from_numpy(order[starts])], torch.from_numpy(inverse)


def random_orders(rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``rows`` independent uniform permutations of ``range(n)``, int64 ``[rows, n]``.

    The randomness comes from ``gen``; the row-wise argsort runs in numpy, about ten times faster
    than torch's CPU sort on many short rows.
    """
    keys = torch.rand(rows, n, generator=gen, dtype=torch.float64).numpy()
    return torch.from_numpy(np.argsort(keys, axis=1).astype(np.int64, copy=False))


def _players(row: torch.Tensor) -> list[int]:
    return torch.nonzero(row).flatten().tolist()


def to_float64(
    raw: Any, batch: torch.Tensor, *, from_value_fn: bool = True, receiver: str = "ShapleyPlan"
) -> torch.Tensor:
    """Validate the values of the coalitions ``batch`` and return them as float64 ``[C]`` on the CPU.

    ``from_value_fn``: the values are one ``value_fn`` answer (inside :func:`shapley`), else the
    values handed to :meth:`ShapleyPlan.finish` for the whole plan (or to ``AdaptiveRun.feed`` for a round,
    ``receiver="AdaptiveRun"``); only the messages differ.
    """
    c = batch.shape[0]
    if from_value_fn:
        got, needs = "value_fn returned", "value_fn must return"
        where = f"the batch of {c} coalitions starting with coalition {_players(batch[0])}"
    else:
        method = "finish" if receiver == "ShapleyPlan" else "feed"
        got, needs = f"{receiver}.{method} got", f"{receiver}.{method} needs"
        where = f"the {c} coalitions of {receiver}.coalitions"
    if isinstance(raw, torch.Tensor):
        if raw.is_complex():
            raise ValueError(f"{got} non-numeric values (dtype {raw.dtype}) for {where}")
        out = raw.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            arr = np.asarray(raw)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(
                f"{got} something that is not an array of numbers ({type(raw).__name__}) for {where}: {exc}"
            ) from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{got} non-numeric values (dtype {arr.dtype}) for {where}")
        out = torch.from_numpy(arr.astype(np.float64, copy=False).copy())
    if out.shape != (c,):
        raise ValueError(
            f"{needs} one value per coalition, shape ({c},), but "
            f"{'returned' if from_value_fn else 'got'} shape {tuple(out.shape)} "
            f"for {where}"
        )
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        row = "" if from_value_fn else f"row {k} of the plan, "
        raise ValueError(
            f"{got} {float(out[k])} (not finite) for coalition "
            f"{_players(batch[k])} ({row}players in the coalition, of "
            f"{batch.shape[1]})"
        )
    return out


def with_ends(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with ∅ and N appended as its last two rows (dedupe keeps each once)."""
    n = rows.shape[1]
    ends = torch.stack([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    return torch.cat([rows, ends])


def bits(masks: torch.Tensor, n: int) -> torch.Tensor:
    """Bool ``[len(masks), n]`` membership of the integer coalition masks."""
    return ((masks[:, None] >> torch.arange(n, dtype=torch.int64)) & 1).bool()


def shapley_weights(n: int) -> torch.Tensor:
    """``w[s] = s! (n - 1 - s)! / n!`` for ``s = 0 .. n - 1`` (the weight of a coalition of size s)."""
    return torch.tensor([1.0 / (n * math.comb(n - 1, s)) for s in range(n)], dtype=torch.float64)


def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with an integer ``df >= 1`` (the finite sums of Abramowitz and
    Stegun 26.7.3-4; exact to rounding)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        if df == 1:
            return 2.0 * theta / math.pi
        term = total = math.cos(theta)
        for k in range(3, df - 1, 2):
            term *= cos2 * (k - 1) / k
            total += term
        return 2.0 / math.pi * (theta + sin * total)
    term = total = 1.0
    for k in range(2, df - 1, 2):
        term *= cos2 * (k - 1) / k
        total += term
    return sin * total


@functools.lru_cache(maxsize=4096)
def student_t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (``df >= 1``):
    ``P(|T| <= q) = level``. Above 10**5 degrees of freedom the normal quantile is returned (they agree
    to about 1e-5 relative)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    if df > 100_000:
        return float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < level:
        hi *= 2.0
    for _ in range(200):  # bisection to the last bit
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_two_sided(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return hi


def sample_mean_stderr(units: torch.Tensor) -> torch.Tensor:
    """Calibrated standard error of the per-player means of ``units`` (float64 ``[k, n]``: ``k`` independent,
    identically distributed unit estimates of ``n`` players' values).

    With few units the plain ``std / sqrt(k)`` is too small for a 95% interval twice over: its variance
    estimate is noisy (often zero for games with discrete marginals), and ``1.96`` is the normal quantile,
    not Student's. Here each player's variance is moderated towards the mean variance of the players whose
    units vary (:data:`VARIANCE_PRIOR_UNITS` pseudo-units, an empirical-Bayes estimate: a player whose units
    all agree gets a share of the others' spread instead of a zero), and the standard error is scaled by
    ``t / 1.96`` with ``t`` the Student quantile at the moderated degrees of freedom, so that
    ``values +- 1.96 stderr`` is a 95% interval. Both corrections vanish as ``k`` grows. A player whose
    marginal contribution is non-zero in only a small share of the units (rarer than about ``1 / k``) can
    still be under-covered: no sample shows an event it never drew. NaN for ``k < 2``; zeros when no
    player's units vary beyond rounding.
    """
    k, n = units.shape
    if k < 2:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    df = k - 1
    var = units.var(0, correction=1)
    prior = VARIANCE_PRIOR_UNITS
    # players whose units vary beyond rounding; the others say nothing about the spread
    varies = var > (64 * torch.finfo(torch.float64).eps * float(units.abs().max())) ** 2
    var = torch.where(varies, var, 0.0)
    pooled = var[varies].mean() if bool(varies.any()) else torch.zeros((), dtype=torch.float64)
    moderated = (df * var + prior * pooled) / (df + prior)
    scale = student_t_quantile(df + prior) / INTERVAL_Z
    return torch.sqrt(moderated / k) * scale
