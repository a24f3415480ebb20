"""Exact Shapley values: every one of the ``2**n`` coalitions, closed-form weights."""

from __future__ import annotations

import torch

from scar.shapley.base import PlanParts, ShapleyResult, bits, shapley_weights

__all__ = ["EXACT_MAX_PLAYERS", "exact_plan"]

EXACT_MAX_PLAYERS = 20
"""Largest ``n`` for ``method="exact"``: ``2**20`` (about a million) coalitions, each evaluated once."""


def exact_plan(n: int) -> PlanParts:
    """Plan rows (all ``2**n`` coalitions, row ``k`` = integer mask ``k``), budget and solver."""
    if n > EXACT_MAX_PLAYERS:
        raise ValueError(
            f"method='exact' enumerates all 2**n coalitions and is limited to n_players <= "
            f"EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS} (got n_players={n}); use a sampled method: "
            f"'permutation', 'kernel' or 'owen' (with a budget)"
        )
    members = bits(torch.arange(2**n, dtype=torch.int64), n)

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        sizes = members.sum(1)
        w = shapley_weights(n)
        # phi_i = sum over S without i of w(|S|) (v(S + i) - v(S)); the 2**(n-1) masks without
        # bit i are the integers k < 2**(n-1) with a zero bit inserted at position i.
        k = torch.arange(2 ** (n - 1), dtype=torch.int64)
        values = torch.empty(n, dtype=torch.float64)
        for i in range(n):
            low = k & ((1 << i) - 1)
            without = ((k >> i) << (i + 1)) | low
            values[i] = (w[sizes[without]] * (v[without | (1 << i)] - v[without])).sum()
        return ShapleyResult(values, None, n_evals, float(v[0]), float(v[-1]), "exact", None)

    return members, None, solve
