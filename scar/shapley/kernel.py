"""KernelSHAP with paired sampling and the efficiency constraint imposed exactly.

Coalition sizes whose every coalition the budget can afford are enumerated with exact kernel weights (as
shap's KernelExplainer does); the rest of the budget samples the other sizes, each coalition with its
complement. Standard error: the cluster-robust sandwich (delta-method) variance of the constrained
least-squares estimate, with complementary pairs as the independent units and leave-pair-out residuals
(CR3). Like any KernelSHAP with a sampled design matrix it is consistent but slightly biased at small
budgets (the bias falls faster than the standard error, which covers the variance only). When the budget
covers every coalition the exact Shapley values are returned (a larger budget is capped at ``2**n - 2``);
other plans above :data:`~scar.shapley.base.MAX_PLAN_ROWS` / ``MAX_PLAN_ENTRIES`` are refused, and so are
more than :data:`KERNEL_MAX_PLAYERS` players.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scar.shapley.base import (
    PlanParts,
    ShapleyResult,
    cap_at_proper_coalitions,
    check_plan_size,
    random_orders,
    with_ends,
)
from scar.shapley.permutation import DEFAULT_PERMUTATIONS

__all__ = [
    "KERNEL_MAX_PLAYERS",
    "kernel_default_budget",
    "kernel_plan",
    "kernel_parts",
    "kernel_design",
    "kernel_design_extend",
]

KERNEL_MAX_PLAYERS = 4096
"""Largest ``n`` for ``method="kernel"``. Its solve eigendecomposes an ``(n + 1) x (n + 1)`` float64
system (``O(n**3)`` work, 128 MiB at this limit) and its design keeps per-size bookkeeping in Python; the
default budget reaches ``MAX_PLAN_ENTRIES`` near 2900 players already. Above it, use ``permutation``."""


def kernel_default_budget(n: int) -> int:
    """Default ``kernel`` budget: as many coalitions as ``DEFAULT_PERMUTATIONS`` permutations plan,
    ``DEFAULT_PERMUTATIONS * (n + 1)``, capped at the ``2**n - 2`` proper non-empty coalitions (where the
    answer is exact; 0 when ``n == 1``: nothing to sample)."""
    return cap_at_proper_coalitions(DEFAULT_PERMUTATIONS * (n + 1), n)


def _check_kernel_players(n: int) -> None:
    if n > KERNEL_MAX_PLAYERS:
        raise ValueError(
            f"method='kernel' solves an (n + 1) x (n + 1) system and is limited to n_players <= "
            f"KERNEL_MAX_PLAYERS = {KERNEL_MAX_PLAYERS} (got n_players={n}); use method='permutation'"
        )


def _kkt_solve(a: torch.Tensor, b: torch.Tensor, total: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Minimise ``phi' A phi - 2 b' phi`` subject to ``sum(phi) = total``.

    Solves the KKT system ``[[A, 1], [1', 0]] [phi; nu] = [b; total]`` with a pseudo-inverse, so
    players that the sample cannot tell apart (identical columns) share their credit equally
    instead of failing. Returns ``(phi, M, identified)``: ``M`` (the top-left block of the
    inverse) maps a perturbation of ``b - A phi`` to the perturbation of ``phi`` (used for the
    sandwich variance); ``identified`` is False when the system is singular, i.e. the sample does
    not determine every value.
    """
    n = a.shape[0]
    kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    kkt[:n, :n] = a
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    eig, vec = torch.linalg.eigh(kkt)
    keep = eig.abs() > eig.abs().max() * (n + 1) * torch.finfo(torch.float64).eps
    inv = (vec[:, keep] / eig[keep]) @ vec[:, keep].T
    rhs = torch.cat([b, torch.tensor([total], dtype=torch.float64)])
    return (inv @ rhs)[:n], inv[:n, :n], bool(keep.all())


_ORDER_CHUNK = 2**22  # entries of the random orders drawn at once when sampling pairs
_SOLVE_CHUNK = 2**22  # entries of the design converted to float64 at once by the solve


def _combinations(n: int, k: int) -> torch.Tensor:
    """The ``k``-subsets of ``range(n)`` in lexicographic order (as ``torch.combinations``, whose memory
    grows like ``n**k``), int64 ``[comb(n, k), k]``: prefixes are extended one element at a time, keeping
    only those that can still be completed."""
    rows = np.arange(n - k + 1, dtype=np.int64)[:, None]
    for s in range(1, k):
        last = rows[:, -1]
        counts = (n - k + s) - last  # the next element runs from last + 1 to n - k + s
        first = np.cumsum(counts) - counts
        following = np.repeat(last + 1 - first, counts) + np.arange(int(counts.sum()))
        rows = np.concatenate([np.repeat(rows, counts, axis=0), following[:, None]], axis=1)
    return torch.from_numpy(rows)


def _class_masses(n: int) -> dict[int, float]:
    """Kernel mass of each size class ``s = 1 .. n // 2`` (sizes ``s`` and ``n - s``), summing to 1."""
    size_mass = {k: (n - 1) / (k * (n - k)) for k in range(1, n)}
    total = sum(size_mass.values())
    return {k: (size_mass[k] if 2 * k == n else 2 * size_mass[k]) / total for k in range(1, n // 2 + 1)}


def _class_count(n: int, k: int) -> int:
    """Coalitions of size class ``k``: ``comb(n, k)`` of each of sizes ``k`` and ``n - k``."""
    return math.comb(n, k) * (1 if 2 * k == n else 2)


def _enumerated_classes(n: int, budget: int) -> list[int]:
    """The size classes a budget enumerates, from the extremes inwards: a class is enumerated while the
    budget left, spread by kernel mass over the classes left, gives it at least one sample per coalition."""
    mass = _class_masses(n)
    enumerated: list[int] = []
    left, mass_left = budget, 1.0
    for k in range(1, n // 2 + 1):
        count = _class_count(n, k)
        if left * mass[k] / mass_left < count - 1e-8:
            break
        enumerated.append(k)
        left -= count
        mass_left -= mass[k]
    return enumerated


def kernel_design(n: int, budget: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Coalitions and regression weights of hybrid paired KernelSHAP (as shap's KernelExplainer).

    The Shapley kernel puts total mass ``(n - 1) / (s (n - s))`` on coalition size ``s``. Sizes
    ``s`` and ``n - s`` form one class. Classes are visited from the extremes inwards; a class is
    enumerated completely while the budget left, spread by kernel mass over the classes left,
    would give it at least one sample per coalition. The rest of the budget samples the remaining
    classes (class by kernel mass, then a uniform coalition of that size, then its complement).

    Returns ``(z [rows, n] bool, weight [rows], sampled_pairs, sampled_mass)``: the enumerated rows
    come first with their exact kernel weights; the last ``2 * sampled_pairs`` rows are the
    sampled ones (pair ``p`` is rows ``e + p`` and ``e + sampled_pairs + p``), each weighted
    ``sampled_mass / (2 * sampled_pairs)``. The weights sum to 1.

    A budget above the ``2**n - 2`` proper coalitions plans them all; a plan above the size limits
    (:func:`scar.shapley.base.check_plan_size`) or more than :data:`KERNEL_MAX_PLAYERS` players raise
    ValueError before anything is allocated.
    """
    _check_kernel_players(n)
    if budget < 0:
        raise ValueError(f"method='kernel' needs budget >= 0, got budget={budget}")
    check_plan_size("kernel", n, budget, cap_at_proper_coalitions(budget, n) + 2)
    enumerated = _enumerated_classes(n, budget)
    left = budget - sum(_class_count(n, k) for k in enumerated)
    return _design(n, enumerated, torch.zeros(0, n, dtype=torch.bool), left // 2, gen)


def kernel_design_extend(
    n: int, budget: int, previous: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """:func:`kernel_design` at a larger ``budget`` that keeps the sampled pairs of an earlier design.

    ``previous``: bool ``[p, n]``, the first coalition of each sampled pair of the earlier design (its
    rows ``e .. e + p``). Classes are enumerated as :func:`kernel_design` would, except that a class is
    left sampled when enumerating it would leave too little budget for the kept pairs. Earlier pairs of
    an enumerated class are among its enumerated coalitions; the others are kept as sampled pairs (they
    are draws from the kernel restricted to the classes still sampled), and new pairs fill the budget.
    So every coalition of the earlier design is a coalition of this one, and the design has at most
    ``budget`` rows besides the ends. Returns as :func:`kernel_design`, kept pairs before new ones.
    """
    _check_kernel_players(n)
    check_plan_size("kernel", n, budget, cap_at_proper_coalitions(budget, n) + 2)
    sizes = previous.sum(1)
    classes = torch.minimum(sizes, n - sizes)
    enumerated = _enumerated_classes(n, budget)
    while True:
        kept = previous[~torch.isin(classes, torch.tensor(enumerated, dtype=classes.dtype))]
        left = budget - sum(_class_count(n, k) for k in enumerated)
        if 2 * kept.shape[0] <= left:
            break
        enumerated.pop()  # the earlier design's own enumeration always fits
    return _design(n, enumerated, kept, left // 2 - kept.shape[0], gen)


def _design(
    n: int, enumerated: list[int], kept: torch.Tensor, new_pairs: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The design of :func:`kernel_design`: ``enumerated`` classes in full, then the sampled pairs (the
    ``kept`` first coalitions, then ``new_pairs`` drawn from the other classes)."""
    mass = _class_masses(n)
    classes = [k for k in range(1, n // 2 + 1) if k not in enumerated]
    mass_left = 1.0 - sum(mass[k] for k in enumerated)
    pairs = kept.shape[0] + new_pairs if classes else 0
    enum_rows = sum(_class_count(n, k) for k in enumerated)
    # the design is written in place: no block of it is ever held twice
    z = torch.empty(enum_rows + 2 * pairs, n, dtype=torch.bool)
    weights, at = [], 0
    for k in enumerated:
        c = math.comb(n, k)
        members = z[at : at + c]
        members.zero_()
        members.scatter_(1, _combinations(n, k), True)
        if 2 * k != n:
            torch.logical_not(members, out=z[at + c : at + 2 * c])
        count = _class_count(n, k)
        weights.append(torch.full((count,), mass[k] / count, dtype=torch.float64))
        at += count
    if pairs:
        first = kept.shape[0]
        z[at : at + first] = kept
        torch.logical_not(kept, out=z[at + pairs : at + pairs + first])
        if new_pairs:
            class_mass = torch.tensor([mass[k] for k in classes], dtype=torch.float64)
            size = torch.tensor(classes)[torch.multinomial(class_mass, new_pairs, replacement=True, generator=gen)]
            # The positions holding 0 .. size-1 in a uniform random order form a uniform subset. The orders
            # are drawn in chunks (the same draws as one call) so that only the bool result is full size.
            step = max(1, _ORDER_CHUNK // n)
            for i in range(0, new_pairs, step):
                picked = random_orders(min(step, new_pairs - i), n, gen) < size[i : i + step, None]
                lo = at + first + i
                z[lo : lo + picked.shape[0]] = picked
                torch.logical_not(picked, out=z[lo + pairs : lo + pairs + picked.shape[0]])
        weights.append(torch.full((2 * pairs,), mass_left / (2 * pairs), dtype=torch.float64))
    else:
        mass_left = 0.0
    w = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return z, w, pairs, mass_left


def _row_blocks(rows: int, n: int) -> list[slice]:
    """Consecutive row ranges of at most ``_SOLVE_CHUNK`` entries each: the float64 copies of the design
    the solve needs are made one block at a time (one block, the whole design, for most plans)."""
    step = max(1, _SOLVE_CHUNK // max(n, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _kernel_stderr(z: torch.Tensor, resid: torch.Tensor, m: torch.Tensor, pairs: int, mass: float) -> torch.Tensor:
    """Cluster-robust (CR3, jackknife-like) sandwich standard error of the hybrid KernelSHAP fit.

    Only the last ``2 * pairs`` rows (the sampled ones, each weighted ``mass / (2 pairs)``) are
    random; pairs are the independent units. Linearising the KKT system,
    ``phi_hat - phi ~= M (b_hat - A_hat phi) = mass * M mean_p(psi_p)`` with ``psi_p`` the pair's
    mean of ``z (y - z' phi)``. Plain residuals make this too small when the budget is small next
    to ``n`` (the fit is pulled towards every sample), so each pair's residuals are replaced by its
    leave-pair-out residuals ``(I - H_pp)^-1 r_p`` (``H_pp``: the pair's 2x2 block of the hat
    matrix). Infinite when leaving out some pair would leave the values undetermined. Like every
    sandwich estimate it is asymptotic: with few sampled pairs (below about ``3 n``) it can be
    too small.

    ``z`` is the bool design; blocks of pairs are converted to float64 one at a time.
    """
    n = z.shape[1]
    if pairs < 2:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    first_rows, second_rows = z[-2 * pairs : -pairs], z[-pairs:]
    r_first, r_second = resid[-2 * pairs : -pairs], resid[-pairs:]
    w = mass / (2 * pairs)
    blocks = _row_blocks(pairs, 2 * n)
    hats = []
    for b in blocks:
        first, second = first_rows[b].double(), second_rows[b].double()
        zm_first, zm_second = w * first @ m, w * second @ m
        hats.append(
            torch.stack(
                [
                    torch.stack([(zm_first * first).sum(1), (zm_first * second).sum(1)], -1),
                    torch.stack([(zm_second * first).sum(1), (zm_second * second).sum(1)], -1),
                ],
                -2,
            )
        )
    hat = torch.cat(hats)  # [pairs, 2, 2]
    eye_minus_hat = torch.eye(2, dtype=torch.float64) - hat
    if bool((torch.linalg.eigvalsh(eye_minus_hat)[:, 0] < 1e-9).any()):
        # Some pair alone determines part of the fit: without it the values are not identified,
        # so no finite error can be claimed.
        return torch.full((n,), float("inf"), dtype=torch.float64)
    r = torch.stack([r_first, r_second], -1)[..., None]
    r_out = torch.linalg.solve(eye_minus_hat, r)[..., 0]

    def psi(b: slice) -> torch.Tensor:
        return 0.5 * (first_rows[b].double() * r_out[b, :1] + second_rows[b].double() * r_out[b, 1:])

    total = torch.zeros(n, dtype=torch.float64)
    for b in blocks:
        total += psi(b).sum(0)
    mean = total / pairs
    cross = torch.zeros(n, n, dtype=torch.float64)
    for b in blocks:
        centred = psi(b) - mean
        cross += centred.T @ centred
    cov = mass**2 * cross / ((pairs - 1) * pairs)
    return torch.sqrt(torch.clamp(torch.diagonal(m @ cov @ m.T), min=0.0))


def kernel_plan(n: int, budget: int | None, gen: torch.Generator) -> PlanParts:
    _check_kernel_players(n)
    if budget is None:
        budget = kernel_default_budget(n)
    else:
        if budget < 2:
            raise ValueError(
                f"method='kernel' needs budget >= 2 sampled coalitions (one coalition "
                f"and its complement); got budget={budget}"
            )
        if budget % 2:
            raise ValueError(
                f"method='kernel' samples coalitions in complementary pairs, so "
                f"budget (number of sampled coalitions) must be even; got "
                f"budget={budget}"
            )
        budget = cap_at_proper_coalitions(budget, n)
    return kernel_parts(n, budget, *kernel_design(n, budget, gen))


def kernel_parts(n: int, budget: int, z: torch.Tensor, w: torch.Tensor, pairs: int, sampled_mass: float) -> PlanParts:
    """Plan rows, budget and solver of a :func:`kernel_design` (``z``, ``w``, ``pairs``, ``sampled_mass``)."""

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        y = v[:-2] - base
        blocks = _row_blocks(z.shape[0], n)
        a = torch.zeros(n, n, dtype=torch.float64)
        b = torch.zeros(n, dtype=torch.float64)
        for rows in blocks:
            zf = z[rows].double()
            a += zf.T @ (w[rows, None] * zf)
            b += zf.T @ (w[rows] * y[rows])
        values, m, identified = _kkt_solve(a, b, full - base)
        # The solve meets sum(phi) = v(N) - v(∅) up to cond(KKT) * eps; spread that residue
        # evenly so efficiency holds to rounding for any conditioning.
        values += ((full - base) - values.sum()) / n
        if not identified:  # some players never separated in the sample: their split is arbitrary
            stderr = torch.full((n,), float("inf"), dtype=torch.float64)
        elif pairs == 0:  # every coalition enumerated: the exact Shapley values
            stderr = torch.zeros(n, dtype=torch.float64)
        else:
            resid = torch.cat([y[rows] - z[rows].double() @ values for rows in blocks])
            stderr = _kernel_stderr(z, resid, m, pairs, sampled_mass)
        return ShapleyResult(values, stderr, n_evals, base, full, "kernel", budget)

    return with_ends(z), budget, solve
