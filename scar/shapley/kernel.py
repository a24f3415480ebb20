"""KernelSHAP with paired sampling and the efficiency constraint imposed exactly.

Coalition sizes whose every coalition the budget can afford are enumerated with exact kernel weights (as
shap's KernelExplainer does); the rest of the budget samples the other sizes, each coalition with its
complement. Standard error: the cluster-robust sandwich (delta-method) variance of the constrained
least-squares estimate, with complementary pairs as the independent units and leave-pair-out residuals
(CR3). Like any KernelSHAP with a sampled design matrix it is consistent but slightly biased at small
budgets (the bias falls faster than the standard error, which covers the variance only). When the budget
covers every coalition the exact Shapley values are returned.
"""

from __future__ import annotations

import math

import torch

from scar.shapley.base import PlanParts, ShapleyResult, random_orders, with_ends
from scar.shapley.permutation import DEFAULT_PERMUTATIONS

__all__ = ["kernel_default_budget", "kernel_plan", "kernel_design"]


def kernel_default_budget(n: int) -> int:
    """Default ``kernel`` budget: as many coalitions as ``DEFAULT_PERMUTATIONS`` permutations plan,
    ``DEFAULT_PERMUTATIONS * (n + 1)``, capped at the ``2**n - 2`` proper non-empty coalitions (where the
    answer is exact; 0 when ``n == 1``: nothing to sample)."""
    return min(DEFAULT_PERMUTATIONS * (n + 1), 2**n - 2)


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
    """
    classes = list(range(1, n // 2 + 1))  # class s holds sizes s and n - s (just s when 2s == n)
    size_mass = {k: (n - 1) / (k * (n - k)) for k in range(1, n)}
    total = sum(size_mass.values())
    mass = {k: (size_mass[k] if 2 * k == n else 2 * size_mass[k]) / total for k in classes}
    rows, weights = [], []
    left, mass_left = budget, 1.0
    while classes:
        k = classes[0]
        count = math.comb(n, k) * (1 if 2 * k == n else 2)
        if left * mass[k] / mass_left < count - 1e-8:
            break
        members = torch.zeros(math.comb(n, k), n, dtype=torch.bool)
        members.scatter_(1, torch.combinations(torch.arange(n), r=k).view(-1, k), True)
        block = members if 2 * k == n else torch.cat([members, ~members])
        rows.append(block)
        weights.append(torch.full((count,), mass[k] / count, dtype=torch.float64))
        left -= count
        mass_left -= mass[k]
        classes.pop(0)
    pairs = left // 2 if classes else 0
    if pairs:
        class_mass = torch.tensor([mass[k] for k in classes], dtype=torch.float64)
        size = torch.tensor(classes)[torch.multinomial(class_mass, pairs, replacement=True, generator=gen)]
        # The positions holding 0 .. size-1 in a uniform random order form a uniform subset.
        picked = random_orders(pairs, n, gen) < size[:, None]
        rows.append(torch.cat([picked, ~picked]))
        weights.append(torch.full((2 * pairs,), mass_left / (2 * pairs), dtype=torch.float64))
    else:
        mass_left = 0.0
    z = torch.cat(rows) if rows else torch.zeros(0, n, dtype=torch.bool)
    w = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return z, w, pairs, mass_left


def _kernel_stderr(zf: torch.Tensor, resid: torch.Tensor, m: torch.Tensor, pairs: int, mass: float) -> torch.Tensor:
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
    """
    n = zf.shape[1]
    if pairs < 2:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    first, second = zf[-2 * pairs : -pairs], zf[-pairs:]
    r_first, r_second = resid[-2 * pairs : -pairs], resid[-pairs:]
    w = mass / (2 * pairs)
    zm_first, zm_second = w * first @ m, w * second @ m
    hat = torch.stack(
        [
            torch.stack([(zm_first * first).sum(1), (zm_first * second).sum(1)], -1),
            torch.stack([(zm_second * first).sum(1), (zm_second * second).sum(1)], -1),
        ],
        -2,
    )  # [pairs, 2, 2]
    eye_minus_hat = torch.eye(2, dtype=torch.float64) - hat
    if bool((torch.linalg.eigvalsh(eye_minus_hat)[:, 0] < 1e-9).any()):
        # Some pair alone determines part of the fit: without it the values are not identified,
        # so no finite error can be claimed.
        return torch.full((n,), float("inf"), dtype=torch.float64)
    r = torch.stack([r_first, r_second], -1)[..., None]
    r_out = torch.linalg.solve(eye_minus_hat, r)[..., 0]
    psi = 0.5 * (first * r_out[:, :1] + second * r_out[:, 1:])
    centred = psi - psi.mean(0)
    cov = mass**2 * (centred.T @ centred) / ((pairs - 1) * pairs)
    return torch.sqrt(torch.clamp(torch.diagonal(m @ cov @ m.T), min=0.0))


def kernel_plan(n: int, budget: int | None, gen: torch.Generator) -> PlanParts:
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
        budget = min(budget, 2**n - 2)
    z, w, pairs, sampled_mass = kernel_design(n, budget, gen)

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        y = v[:-2] - base
        zf = z.double()
        values, m, identified = _kkt_solve(zf.T @ (w[:, None] * zf), zf.T @ (w * y), full - base)
        # The solve meets sum(phi) = v(N) - v(∅) up to cond(KKT) * eps; spread that residue
        # evenly so efficiency holds to rounding for any conditioning.
        values += ((full - base) - values.sum()) / n
        if not identified:  # some players never separated in the sample: their split is arbitrary
            stderr = torch.full((n,), float("inf"), dtype=torch.float64)
        elif pairs == 0:  # every coalition enumerated: the exact Shapley values
            stderr = torch.zeros(n, dtype=torch.float64)
        else:
            stderr = _kernel_stderr(zf, y - zf @ values, m, pairs, sampled_mass)
        return ShapleyResult(values, stderr, n_evals, base, full, "kernel", budget)

    return with_ends(z), budget, solve
