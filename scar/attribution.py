"""Shapley values of one response's players, scored by a :class:`~scar.scorer.CoalitionScorer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scar.estimators import ShapleyResult, shapley
from scar.scorer import CoalitionScorer, IdsLike

__all__ = ["shapley_values"]


def shapley_values(
    scorer: CoalitionScorer,
    prompt_ids: IdsLike,
    response_ids: IdsLike,
    players: object,
    *,
    method: str = "permutation",
    budget: int | None = None,
    seed: int | None = None,
    hierarchy: Sequence[Any] | None = None,
    suffix_ids: IdsLike | None = None,
) -> ShapleyResult:
    """Shapley (or Owen) values of ``players`` for the reward of ``prompt ⊕ response ⊕ suffix``.

    The value of a coalition is ``scorer``'s score of the response with only that coalition's players
    (and the gap tokens) kept. The estimator hands its whole plan of coalitions to the value function
    at once, and the value function scores it with ONE scorer call, so the ``trie`` backend shares
    every common prefix of the plan in as few passes as its budget allows.

    Args:
        scorer: the coalition scorer (its backend, removal mode and budget apply).
        prompt_ids, response_ids, players, suffix_ids: as :meth:`CoalitionScorer.score`.
        method, budget, seed, hierarchy: as :func:`scar.estimators.shapley`.

    Returns:
        The :class:`scar.estimators.ShapleyResult`; ``values[j]`` is player ``j``'s credit.
    """
    if not isinstance(scorer, CoalitionScorer):
        raise TypeError(f"scorer must be a CoalitionScorer, got {type(scorer).__name__}")
    n_players = len(players.tolist() if isinstance(players, torch.Tensor) else list(players))

    def value_fn(coalitions: torch.Tensor) -> torch.Tensor:
        return scorer.score(prompt_ids, response_ids, players, coalitions, suffix_ids)

    return shapley(value_fn, n_players, method=method, budget=budget, seed=seed, hierarchy=hierarchy)
