"""Antithetic permutation sampling: each sampled permutation and its reverse.

Efficiency holds exactly for every sampled permutation; the standard error comes from the spread of the
antithetic pair means, calibrated for 95% intervals at small numbers of pairs
(:func:`~scar.shapley.base.sample_mean_stderr`). A budget whose plan (``budget * (n + 1)`` prefixes) would
have at least the ``2**n`` rows of the exact plan is capped there (:func:`exact_cap`): all coalitions are
enumerated and the values are exact. Other plans above :data:`~scar.shapley.base.MAX_PLAN_ROWS` /
``MAX_PLAN_ENTRIES`` are refused.
"""

from __future__ import annotations

import torch

from scar.shapley.base import (
    PlanParts,
    ShapleyResult,
    capped,
    check_plan_size,
    random_orders,
    sample_mean_stderr,
    with_ends,
)
from scar.shapley.exact import EXACT_MAX_PLAYERS, exact_plan

__all__ = ["DEFAULT_PERMUTATIONS", "permutation_plan", "antithetic_plan", "check_permutation_budget", "exact_cap"]

DEFAULT_PERMUTATIONS = 32
"""Default budget of ``permutation`` and sampled ``owen``: 32 permutations (16 antithetic pairs)."""


def _prefix_plan(perms: torch.Tensor) -> torch.Tensor:
    """All prefixes of each permutation: bool ``[m * (n + 1), n]``, row ``p * (n + 1) + k`` holds
    the first ``k`` players of permutation ``p``."""
    m, n = perms.shape
    rank = torch.empty_like(perms)
    rank.scatter_(1, perms, torch.arange(n, dtype=perms.dtype).expand(m, n))
    plan = rank[:, None, :] < torch.arange(n + 1, dtype=perms.dtype)[None, :, None]
    return plan.reshape(m * (n + 1), n)


def antithetic_plan(perms: torch.Tensor, method: str) -> PlanParts:
    """Plan rows, budget and solver of the estimate from permutations ``perms[:P]`` and their
    reverses ``perms[P:]``.

    Each permutation gives one unbiased sample (its marginal contributions); the mean of a
    permutation and its reverse is one independent unit for the standard error
    (:func:`~scar.shapley.base.sample_mean_stderr`: moderated variance, Student-t calibrated).
    """
    m, n = perms.shape
    pairs = m // 2

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        chain = v[:-2].view(m, n + 1)
        samples = torch.zeros(m, n, dtype=torch.float64)
        samples.scatter_(1, perms, chain[:, 1:] - chain[:, :-1])
        pair_means = 0.5 * (samples[:pairs] + samples[pairs:])
        values = pair_means.mean(0)
        stderr = sample_mean_stderr(pair_means)
        return ShapleyResult(values, stderr, n_evals, base, full, method, m)

    return with_ends(_prefix_plan(perms)), m, solve


def check_permutation_budget(budget: int, method: str) -> None:
    if budget < 2:
        raise ValueError(f"method={method!r} needs budget >= 2 permutations (one antithetic pair); got budget={budget}")
    if budget % 2:
        raise ValueError(
            f"method={method!r} samples permutations in antithetic pairs, so budget "
            f"(number of permutations) must be even; got budget={budget}"
        )


def exact_cap(exact_rows: int, n: int) -> int:
    """The smallest even number of permutations (>= 2) of ``n`` players whose plan, ``n + 1`` prefixes
    each, has at least ``exact_rows`` rows: from that budget on, the exact plan is no larger."""
    perms = -(-exact_rows // (n + 1))
    return max(2, perms + perms % 2)


def permutation_plan(n: int, budget: int | None, gen: torch.Generator) -> PlanParts:
    budget = DEFAULT_PERMUTATIONS if budget is None else budget
    check_permutation_budget(budget, "permutation")
    if n <= EXACT_MAX_PLAYERS and budget >= (cap := exact_cap(2**n, n)):
        return capped(exact_plan(n), "permutation", cap)
    check_plan_size("permutation", n, budget, budget * (n + 1) + 2)
    half = random_orders(budget // 2, n, gen)
    perms = torch.cat([half, half.flip(1)])
    return antithetic_plan(perms, "permutation")
