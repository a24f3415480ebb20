"""Stratified sampling by coalition size, combined with KernelSHAP's regression and regression-adjusted
estimates on the same coalitions.

The Shapley value of player ``i`` splits by coalition size ``s``:

    phi_i = (v(N) - v(∅)) / n + (1 / n) sum_{s=1}^{n-1} D_{i,s},
    D_{i,s} = E[v(S) | i in S, |S| = s] - E[v(S) | i not in S, |S| = s] = Cov(v, z_i) / (p (1 - p))

with ``S`` uniform among the coalitions of size ``s``, ``z_i`` its membership indicator and ``p = s / n``.

Plan. Coalition sizes ``s`` and ``n - s`` form one class. Classes are visited from the extremes inwards and
enumerated while the budget left, spread over the classes left by Shapley-kernel mass, affords every
coalition of the class (as :func:`scar.shapley.kernel.kernel_design` does). The remaining budget is split
among the remaining classes: two complementary pairs each first (one for the middle class, whose pair is two
coalitions of size ``n / 2``), the rest by kernel mass. Each class draws its coalitions uniformly *without
replacement* and plans each with its complement, so every size stratum holds a simple random sample.

Finish. Up to six estimates from the same values, each exactly efficient:

- the stratified Monte Carlo estimate (every coalition of size ``s`` serves every player: members as
  ``i in S`` and the others as ``i not in S``): ``D_{i,s}`` is the stratum's sample covariance of ``v`` and
  ``z_i`` over ``p (1 - p)``, with the finite-population factor ``(N_s - 1) / N_s`` (``N_s`` the stratum's
  coalitions), which makes it unbiased under sampling without replacement and exact for an enumerated
  stratum. A stratum with one sampled coalition is centred on the mean value of the strata outside its
  class instead. Its sum over players is ``v(N) - v(∅)`` exactly (every stratum's covariances sum to zero).
  Unbiased whenever every class is sampled (from about ``n`` coalitions on); below that, the strata never
  sampled contribute nothing;
- KernelSHAP's constrained weighted least squares, each stratum's rows weighted by its kernel mass over its
  sampled rows (consistent, slightly biased at small budgets, and very accurate when the game is close to
  additive);
- the regression-adjusted estimates of :mod:`scar.shapley.surrogate`, one per surrogate in
  :data:`STRATIFIED_SURROGATES` (order 1, order 3, and order 1 with size-dependent terms): a polynomial surrogate
  of the pairs' differences ``v(S) - v(N \\ S)``, whose contribution to each class is closed form, plus the
  stratified Monte Carlo estimate of the residual game,
  cross-fitted over the jackknife groups so that the estimate stays unbiased whenever every class is
  sampled. They join only when every sampled class holds pairs of at least :data:`STRATIFIED_ADJUST_GROUPS`
  groups, and only surrogates of at most :data:`~scar.shapley.surrogate.SURROGATE_MAX_FEATURES`
  coefficients are fitted (order 3 up to 20 players).

They are combined as ``sum_k w_k estimate_k`` with weights ``w_k >= 0`` summing to 1, the same for all players
(so the sum stays ``v(N) - v(∅)``), that minimise the summed variance, estimated by a grouped jackknife over the
sampled pairs (:data:`STRATIFIED_GROUPS` groups; the enumerated strata are fixed; a replicate refits the
regression and the surrogates without the deleted group). The regression wins on games close to additive, the
stratified estimate on games with high-order interactions and the adjusted estimates where the surrogate
captures much of the game; the combination follows whichever the sample shows to vary less. The result is
then shrunk towards the equal split ``(v(N) - v(∅)) / n`` by a James-Stein factor (:data:`STRATIFIED_SHRINK`),
which only acts when the noise is as large as the values' spread. ``stderr`` is the grouped jackknife's
standard error of the combined estimate before shrinking, scaled by Student's quantile at the jackknife's
degrees of freedom (groups sampled minus one) over the normal's, so that ``values +- 1.96 stderr`` is meant as
a 95% interval (NaN with fewer than two groups sampled, zeros when every coalition is enumerated). The
combination and the shrinkage make the result slightly biased at small budgets and not linear in the values;
the stratified estimate alone (:func:`stratified_mc`) and each adjusted estimate alone are unbiased once every
class is sampled.

A budget of ``2**n - 2`` or more enumerates every coalition and gives the exact values; plans above
:data:`~scar.shapley.base.MAX_PLAN_ROWS` / ``MAX_PLAN_ENTRIES`` and more than
:data:`~scar.shapley.kernel.KERNEL_MAX_PLAYERS` players are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from scar.shapley.base import (
    INTERVAL_Z,
    PlanParts,
    ShapleyResult,
    cap_at_proper_coalitions,
    check_plan_size,
    random_orders,
    student_t_quantile,
    unique_rows,
    with_ends,
)
from scar.shapley.kernel import KERNEL_MAX_PLAYERS, _class_masses, _combinations, _kkt_solve, kernel_default_budget
from scar.shapley.surrogate import SURROGATE_MAX_FEATURES, RegressionAdjustment, surrogate_feature_count

__all__ = [
    "STRATIFIED_GROUPS",
    "STRATIFIED_SURROGATES",
    "STRATIFIED_ADJUST_GROUPS",
    "STRATIFIED_SHRINK",
    "Stratum",
    "stratified_design",
    "stratified_plan",
    "stratified_parts",
    "stratified_mc",
    "stratified_fit",
]

STRATIFIED_GROUPS = 8
"""Groups of sampled pairs in the grouped jackknife that weighs the estimates, cross-fits the surrogates and
gives ``stderr``."""

STRATIFIED_SURROGATES = ((1, None), (3, None), (1, "class"), (1, "trend"))
"""``(order, size_terms)`` of the odd surrogates (:mod:`scar.shapley.surrogate`) whose regression-adjusted
estimates join the combination: order 1, order 3, and order 1 with degree-one terms that depend on the size
class (:data:`~scar.shapley.surrogate.SIZE_TERMS`: each class's own, or a linear trend in the size), for games
whose players' effects change with the coalition's size, as high-order interactions make them. A surrogate is
skipped above :data:`~scar.shapley.surrogate.SURROGATE_MAX_FEATURES` coefficients and order 3 below 3
players."""

STRATIFIED_ADJUST_GROUPS = 3
"""The regression-adjusted estimates join the combination only when every sampled size holds pairs of at
least this many jackknife groups (below, the jackknife cannot tell their variance reliably)."""

STRATIFIED_SHRINK = 0.5
"""The combined estimate ``phi`` is shrunk towards the equal split ``e = (v(N) - v(∅)) / n``:
``e + max(0, 1 - STRATIFIED_SHRINK * V / |phi - e|^2) (phi - e)``, with ``V`` the jackknife variance summed
over players. ``1`` would be the positive-part James-Stein factor; half of it, because the grouped jackknife
overstates the variance when deleting a group leaves strata with one coalition or none (small budgets). The
shrinkage matters only where the noise is comparable to the spread of the values (budgets of a few
coalitions per player); it vanishes as the budget grows."""


@dataclass(frozen=True)
class Stratum:
    """The planned coalitions of one size: rows ``start:stop`` of the design.

    Attributes:
        size: coalition size ``s`` (``1 <= s <= n - 1``).
        start, stop: the stratum's rows in the design.
        population: ``N_s = comb(n, s)``, the coalitions of that size.
    """

    size: int
    start: int
    stop: int
    population: int

    @property
    def rows(self) -> int:
        """Coalitions planned in the stratum."""
        return self.stop - self.start

    @property
    def enumerated(self) -> bool:
        """Whether the stratum holds every coalition of its size (no sampling error)."""
        return self.rows == self.population


def _pair_population(n: int, k: int) -> int:
    """Distinct complementary pairs of class ``k``."""
    return math.comb(n, k) // 2 if 2 * k == n else math.comb(n, k)


def _allocate(n: int, classes: list[int], pairs: int, mass: dict[int, float]) -> list[int]:
    """Pairs per class: two each (one for the middle class) while they last, then by mass (largest
    remainder), never more than a class's distinct pairs; what a full class cannot take goes to the others."""
    cap = [_pair_population(n, k) for k in classes]
    base = [min(c, 1 if 2 * k == n else 2) for k, c in zip(classes, cap)]
    if pairs < sum(base):  # too few for every class: one pair per class from the extremes inwards
        count = [0] * len(classes)
        for i in range(pairs):
            count[i % len(classes)] += 1
        return [min(c, p) for c, p in zip(count, cap)]
    count = list(base)
    left = pairs - sum(base)
    while left > 0:
        open_ = [j for j in range(len(classes)) if count[j] < cap[j]]
        if not open_:
            break
        weight = np.array([mass[classes[j]] for j in open_])
        share = weight / weight.sum() * left
        whole = np.floor(share).astype(np.int64)
        for j in np.argsort(-(share - whole), kind="stable")[: left - int(whole.sum())]:
            whole[j] += 1
        for j, extra in zip(open_, whole.tolist()):
            add = min(extra, cap[j] - count[j])
            count[j] += add
            left -= add
    return count


def _distinct_subsets(
    n: int, k: int, count: int, gen: torch.Generator, taken: torch.Tensor | None = None
) -> torch.Tensor:
    """``count`` distinct uniform ``k``-subsets of ``range(n)`` (bool ``[count, n]``) that are not rows of
    ``taken``: a simple random sample without replacement of the subsets not drawn before. For the middle class
    (``2k == n``) a subset and its complement count as one: each subset is drawn as the member of its pair
    holding player 0 (as ``taken``'s rows must be)."""
    middle = 2 * k == n
    population = _pair_population(n, k)
    if taken is None:
        taken = torch.zeros(0, n, dtype=torch.bool)
    before = taken.shape[0]
    if 2 * (count + before) > population:  # a large share of a small class: enumerate the rest, draw from it
        every = torch.zeros(math.comb(n, k), n, dtype=torch.bool)
        every.scatter_(1, _combinations(n, k), True)
        if middle:
            every = every[every[:, 0]]
        if before:
            _, inverse = unique_rows(torch.cat([taken, every]))
            seen = set(inverse[:before].tolist())
            every = every[torch.tensor([int(c) not in seen for c in inverse[before:].tolist()], dtype=torch.bool)]
        return every[torch.randperm(every.shape[0], generator=gen)[:count]]
    drawn = taken
    while True:
        fresh = random_orders(count + before - drawn.shape[0] + 8, n, gen) < k
        if middle:
            fresh = torch.where(fresh[:, :1], fresh, ~fresh)
        drawn = torch.cat([drawn, fresh])
        _, inverse = unique_rows(drawn)
        first = np.unique(inverse.numpy(), return_index=True)[1]
        keep = torch.from_numpy(np.sort(first))  # the first draw of each subset, in drawing order
        drawn = drawn[keep]
        if drawn.shape[0] >= count + before:
            return drawn[before : before + count]


def stratified_design(
    n: int,
    budget: int,
    gen: torch.Generator,
    extend: tuple[torch.Tensor, list[Stratum], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[Stratum], torch.Tensor]:
    """Coalitions of the stratified plan (see the module docs).

    Returns ``(z [rows, n] bool, strata, group [rows] int64)``: the rows of each stratum are contiguous
    (:class:`Stratum`); ``group[r]`` is the jackknife group of row ``r`` (a coalition and its complement
    share one), ``-1`` for the rows of enumerated classes.

    ``extend``: an earlier design (what this function returned for a smaller budget) whose sampled pairs are
    kept, with their groups: each class draws only the pairs it adds, without replacement among the pairs it
    has not drawn, so every class still holds a simple random sample. A class that holds more pairs than the
    budget would give it keeps them all and the classes with the most new pairs draw fewer; a class the budget
    now enumerates holds every coalition.
    """
    if n > KERNEL_MAX_PLAYERS:
        raise ValueError(
            f"method='stratified' solves an (n + 1) x (n + 1) system and is limited to n_players <= "
            f"KERNEL_MAX_PLAYERS = {KERNEL_MAX_PLAYERS} (got n_players={n}); use method='permutation'"
        )
    check_plan_size("stratified", n, budget, cap_at_proper_coalitions(budget, n) + 2)
    earlier = _sampled_pairs(extend) if extend is not None else {}
    mass = _class_masses(n)
    classes = list(range(1, n // 2 + 1))
    enumerated: list[int] = []
    left, mass_left = budget, 1.0
    while classes:
        k = classes[0]
        count = math.comb(n, k) * (1 if 2 * k == n else 2)
        if left < count or left * mass[k] / mass_left < count - 1e-8:
            break
        enumerated.append(k)
        left -= count
        mass_left -= mass[k]
        classes.pop(0)
    counts = _allocate(n, classes, left // 2, mass) if classes else []
    if earlier:  # a class keeps every pair it drew; the others give up as many new ones (largest share first)
        have = [earlier[k][0].shape[0] if k in earlier else 0 for k in classes]
        wanted = sum(counts)
        counts = [max(c, h) for c, h in zip(counts, have)]
        while sum(counts) > wanted:
            j = max(range(len(classes)), key=lambda i: counts[i] - have[i])
            if counts[j] <= have[j]:
                break
            counts[j] -= 1
    blocks: list[torch.Tensor] = []
    groups: list[torch.Tensor] = []
    strata: list[Stratum] = []
    at = 0
    pair_id = sum(rows.shape[0] for rows, _ in earlier.values())

    def add(size: int, rows: torch.Tensor, group: torch.Tensor) -> None:
        nonlocal at
        blocks.append(rows)
        groups.append(group)
        strata.append(Stratum(size, at, at + rows.shape[0], math.comb(n, size)))
        at += rows.shape[0]

    for k in enumerated:
        rows = torch.zeros(math.comb(n, k), n, dtype=torch.bool)
        rows.scatter_(1, _combinations(n, k), True)
        fixed = torch.full((rows.shape[0],), -1, dtype=torch.int64)
        add(k, rows, fixed)
        if 2 * k != n:
            add(n - k, ~rows, fixed)
    for k, c in zip(classes, counts):
        kept, kept_group = earlier.get(k, (torch.zeros(0, n, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)))
        c = max(c, kept.shape[0])
        if c == 0:
            continue
        fresh = _distinct_subsets(n, k, c - kept.shape[0], gen, kept)
        group = torch.cat([kept_group, (pair_id + torch.arange(fresh.shape[0], dtype=torch.int64)) % STRATIFIED_GROUPS])
        pair_id += fresh.shape[0]
        rows = torch.cat([kept, fresh])
        if 2 * k == n:
            add(k, torch.cat([rows, ~rows]), torch.cat([group, group]))
        else:
            add(k, rows, group)
            add(n - k, ~rows, group)
    z = torch.cat(blocks) if blocks else torch.zeros(0, n, dtype=torch.bool)
    group = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.int64)
    return z, strata, group


def _sampled_pairs(
    design: tuple[torch.Tensor, list[Stratum], torch.Tensor],
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per sampled class ``k`` (the smaller size) of a design: its pairs' first members, in drawing order, and
    their groups."""
    z, strata, group = design
    n = z.shape[1]
    out = {}
    for st in strata:
        if 2 * st.size > n or int(group[st.start]) < 0:
            continue
        stop = st.start + st.rows // 2 if 2 * st.size == n else st.stop
        out[st.size] = (z[st.start : stop], group[st.start : stop])
    return out


def _row_strata(strata: list[Stratum], rows: int) -> torch.Tensor:
    """The index in ``strata`` of each of the design's ``rows`` rows."""
    index = torch.full((rows,), -1, dtype=torch.int64)
    for i, st in enumerate(strata):
        index[st.start : st.stop] = i
    return index


def stratified_mc(
    z: torch.Tensor, y: torch.Tensor, strata: list[Stratum], keep: torch.Tensor, base: float, full: float
) -> torch.Tensor:
    """The stratified Monte Carlo estimate from the rows ``keep`` (bool ``[rows]``) of the design ``z``
    with values ``y`` (``v(S)``, float64); exactly efficient (see the module docs)."""
    n = z.shape[1]
    total = torch.full((n,), (full - base) / n, dtype=torch.float64)
    index = _row_strata(strata, z.shape[0])[keep]
    zs, ys = z[keep].double(), y[keep]
    count = torch.bincount(index, minlength=len(strata)).double()
    means = torch.zeros(len(strata), dtype=torch.float64).index_add_(0, index, ys) / count.clamp(min=1)
    # sum over each stratum's rows of (y - its mean) z, which is the sum of (y - mean) (z - mean of z)
    cross = torch.zeros(len(strata), n, dtype=torch.float64).index_add_(0, index, (ys - means[index])[:, None] * zs)
    p = torch.tensor([st.size / n for st in strata], dtype=torch.float64)
    finite = torch.tensor([(st.population - 1) / st.population for st in strata], dtype=torch.float64)
    many = count >= 2
    cov = cross[many] / (count[many] - 1)[:, None] * finite[many][:, None]
    total += (cov / (p[many] * (1 - p[many]))[:, None]).sum(0) / n
    for i in (count == 1).nonzero()[:, 0].tolist():  # centred on the strata outside the class
        st = strata[i]
        others = [j for j, o in enumerate(strata) if o.size not in (st.size, n - st.size) and count[j] > 0]
        rows = torch.isin(index, torch.tensor(others, dtype=torch.int64))
        centre = float(ys[rows].mean()) if others else 0.5 * (base + full)
        own = index == i
        total += ((ys[own] - centre)[:, None] * (zs[own] - p[i]))[0] / (p[i] * (1 - p[i])) / n
    return total


def stratified_fit(
    z: torch.Tensor, y: torch.Tensor, strata: list[Stratum], keep: torch.Tensor, base: float, full: float
) -> tuple[torch.Tensor, bool]:
    """KernelSHAP's efficiency-constrained weighted least squares on the rows ``keep``: each stratum's kept
    rows share its Shapley-kernel mass. Returns ``(values, identified)``."""
    n = z.shape[1]
    mass = _class_masses(n)
    index = _row_strata(strata, z.shape[0])
    count = torch.bincount(index[keep], minlength=len(strata)).double()
    share = torch.tensor(
        [mass[min(st.size, n - st.size)] / (1 if 2 * st.size == n else 2) for st in strata], dtype=torch.float64
    )
    w = torch.where(keep, share[index] / count[index].clamp(min=1), 0.0)
    zf = z.double()
    zw = zf * w[:, None]
    values, _, identified = _kkt_solve(zw.T @ zf, zw.T @ (y - base), full - base)
    values += ((full - base) - values.sum()) / n
    return values, identified


def _simplex_weights(cov: torch.Tensor) -> torch.Tensor:
    """Weights ``w >= 0`` summing to 1 that minimise ``w' C w`` (every support tried; ties to the first)."""
    k = cov.shape[0]
    best, best_w = math.inf, torch.zeros(k, dtype=torch.float64)
    best_w[min(range(k), key=lambda j: float(cov[j, j]))] = 1.0
    for mask in range(1, 2**k):
        idx = [j for j in range(k) if mask >> j & 1]
        sub = cov[idx][:, idx]
        sol = torch.linalg.pinv(sub) @ torch.ones(len(idx), dtype=torch.float64)
        tot = float(sol.sum())
        if not tot > 0:
            continue
        w = sol / tot
        if bool((w < -1e-12).any()):
            continue
        full_w = torch.zeros(k, dtype=torch.float64)
        full_w[idx] = w.clamp(min=0)
        full_w /= full_w.sum()
        obj = float(full_w @ cov @ full_w)
        if obj < best:
            best, best_w = obj, full_w
    return best_w


def stratified_plan(n: int, budget: int | None, gen: torch.Generator) -> PlanParts:
    """Plan rows, budget and solver of ``method="stratified"`` (budget: coalitions besides ∅ and N, even,
    at least 2; default :func:`~scar.shapley.kernel.kernel_default_budget`)."""
    if budget is None:
        budget = kernel_default_budget(n)
    else:
        if budget < 2:
            raise ValueError(
                f"method='stratified' needs budget >= 2 sampled coalitions (one coalition and its "
                f"complement); got budget={budget}"
            )
        if budget % 2:
            raise ValueError(
                f"method='stratified' samples coalitions in complementary pairs, so budget (number of "
                f"sampled coalitions) must be even; got budget={budget}"
            )
        budget = cap_at_proper_coalitions(budget, n)
    z, strata, group = stratified_design(n, budget, gen)
    return stratified_parts(n, budget, z, strata, group)


def stratified_parts(n: int, budget: int, z: torch.Tensor, strata: list[Stratum], group: torch.Tensor) -> PlanParts:
    """Plan rows, budget and solver of the stratified estimate on the design ``(z, strata, group)`` of
    :func:`stratified_design`."""
    sampled_groups = [len(set(group[st.start : st.stop].tolist())) for st in strata if int(group[st.start]) >= 0]
    adjust = bool(sampled_groups) and min(sampled_groups) >= STRATIFIED_ADJUST_GROUPS

    def estimates(y: torch.Tensor, keep: torch.Tensor, base: float, full: float) -> tuple[torch.Tensor, torch.Tensor]:
        fit, _ = stratified_fit(z, y, strata, keep, base, full)
        return fit, stratified_mc(z, y, strata, keep, base, full)

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        y = v[:-2]
        if n == 1:
            values = torch.tensor([full - base], dtype=torch.float64)
            return ShapleyResult(values, torch.zeros(1, dtype=torch.float64), n_evals, base, full, "stratified", budget)
        everything = torch.ones(z.shape[0], dtype=torch.bool)
        fit, mc = estimates(y, everything, base, full)
        used = sorted(set(group[group >= 0].tolist()))
        if not used:  # every coalition enumerated: both estimates are the exact values
            zeros = torch.zeros(n, dtype=torch.float64)
            return ShapleyResult(mc, zeros, n_evals, base, full, "stratified", budget)
        if len(used) < 2:
            nan = torch.full((n,), float("nan"), dtype=torch.float64)
            return ShapleyResult(mc, nan, n_evals, base, full, "stratified", budget)
        mass = _class_masses(n)
        adjusters = [
            RegressionAdjustment(z, y, strata, group, base, full, order, mass, size_terms)
            for order, size_terms in STRATIFIED_SURROGATES
            if surrogate_feature_count(n, order, size_terms) <= SURROGATE_MAX_FEATURES and order <= n and adjust
        ]
        full_est = torch.stack([fit, mc] + [a.estimate() for a in adjusters])
        reps_list = []
        for g in used:
            f_g, mc_g = estimates(y, group != g, base, full)
            reps_list.append(torch.stack([f_g, mc_g] + [a.estimate(g) for a in adjusters]))
        reps = torch.stack(reps_list)  # [groups, estimates, n]
        scale = (len(used) - 1) / len(used)
        dev = reps - reps.mean(0)
        cov = scale * torch.einsum("gkn,gln->kl", dev, dev)
        weights = _simplex_weights(cov)
        values = weights @ full_est
        d = torch.einsum("k,gkn->gn", weights, dev)
        jackknife = torch.sqrt(scale * (d**2).sum(0))
        # shrunk towards the equal split, which is efficient and has no variance (see STRATIFIED_SHRINK)
        equal = (full - base) / n
        signal = float(((values - equal) ** 2).sum())
        kept = max(0.0, 1.0 - STRATIFIED_SHRINK * float((jackknife**2).sum()) / signal) if signal > 0 else 0.0
        values = equal + kept * (values - equal)
        values += ((full - base) - values.sum()) / n
        # the jackknife's variance has len(used) - 1 degrees of freedom: Student's quantile, not the normal's
        stderr = jackknife * (student_t_quantile(len(used) - 1) / INTERVAL_Z)
        return ShapleyResult(values, stderr, n_evals, base, full, "stratified", budget)

    return with_ends(z), budget, solve
