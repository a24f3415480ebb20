"""Shapley values of responses' players, scored by a :class:`~scar.scoring.CoalitionScorer`.

:func:`shapley_values` does one response; :func:`shapley_values_many` does a batch with one scorer
call for all of it (one packed forest for the ``trie`` backend), or, with a tolerance, one scorer call per
round for the responses whose standard errors are not yet within it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scar.game.tokens import IdsLike
from scar.scoring import CoalitionScorer, ScorerStats
from scar.shapley import DEFAULT_METHOD, AdaptiveRun, ShapleyResult, plan, shapley

__all__ = ["ResponseError", "shapley_values", "shapley_values_many"]


class ResponseError(ValueError):
    """A ValueError about one response of a :func:`shapley_values_many` call.

    The message is ``"response {index}: {reason}"``.

    Attributes:
        index: the response's position in the call.
        reason: the message without the ``response {index}:`` prefix.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"response {index}: {reason}")
        self.index = index
        self.reason = reason


def shapley_values(
    scorer: CoalitionScorer,
    prompt_ids: IdsLike,
    response_ids: IdsLike,
    players: Sequence[Any] | torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
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
        method, budget, seed, hierarchy: as :func:`scar.shapley.shapley`.

    Returns:
        The :class:`scar.shapley.ShapleyResult`; ``values[j]`` is player ``j``'s credit.
    """
    if not isinstance(scorer, CoalitionScorer):
        raise TypeError(f"scorer must be a CoalitionScorer, got {type(scorer).__name__}")
    n_players = len(players.tolist() if isinstance(players, torch.Tensor) else list(players))

    def value_fn(coalitions: torch.Tensor) -> torch.Tensor:
        return scorer.score(prompt_ids, response_ids, players, coalitions, suffix_ids)

    return shapley(value_fn, n_players, method=method, budget=budget, seed=seed, hierarchy=hierarchy)


def _per_response(name: str, value: object, n: int) -> list:
    """``value`` as one entry per response: a list/tuple of length ``n``, or None for all."""
    if value is None:
        return [None] * n
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list with one entry per response (or None), got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name} needs one entry per response: got {len(value)} for {n} responses")
    return list(value)


def shapley_values_many(
    scorer: CoalitionScorer,
    prompts_ids: Sequence[IdsLike],
    responses_ids: Sequence[IdsLike],
    players_list: Sequence[Sequence[Any] | torch.Tensor],
    *,
    method: str = DEFAULT_METHOD,
    budget: int | Sequence[int | None] | None = None,
    seed: int | Sequence[int | None] | None = None,
    hierarchies: Sequence[Sequence[Any] | None] | None = None,
    suffixes_ids: Sequence[IdsLike | None] | None = None,
    tol: float | None = None,
    tol_absolute: bool = False,
    max_budget: int | Sequence[int | None] | None = None,
    round_stats: list[ScorerStats] | None = None,
    ends: Sequence[tuple[float, float]] | None = None,
) -> list[ShapleyResult]:
    """:func:`shapley_values` of a batch of responses, with ONE scorer call for all their coalitions.

    Each response's estimator plan (:func:`scar.shapley.plan`) is built first; the distinct
    coalitions of every plan go to one :meth:`CoalitionScorer.score_many` call (the ``trie`` backend
    packs them as one forest, one prefix tree per response, in as few passes as its token budget
    allows); then each plan is finished with its own values. Response ``i``'s result equals
    ``shapley_values(scorer, prompts_ids[i], responses_ids[i], players_list[i], seed=seeds[i], ...)``
    up to the float rounding of the packed forward (exactly, for the ``loop`` backend).

    Args:
        scorer: the coalition scorer; afterwards ``scorer.stats`` holds the cost of the one call.
        prompts_ids, responses_ids, players_list: one entry per response, as in :func:`shapley_values`.
        method: as :func:`scar.shapley.shapley`, shared by every response.
        budget: an int or None (used for every response), or a list with one int or None per response.
        seed: an int or None (used for every response), or a list with one int or None per response.
        hierarchies: ``owen`` only: None, or one hierarchy (or None) per response.
        suffixes_ids: None, or one suffix (token ids or None) per response.
        tol: adaptive stopping per response (:class:`scar.shapley.AdaptiveRun`, as ``tol`` of
            :func:`scar.shapley.shapley`): the responses are sampled in rounds, and each round scores the new
            coalitions of every response whose standard errors are not yet within ``tol`` in ONE scorer call;
            a response drops out of the rounds once it meets ``tol``, reaches its exact plan or spends its
            ``max_budget``. ``budget`` is then each response's first round.
        tol_absolute, max_budget: as :func:`scar.shapley.shapley` (``max_budget``: an int or None for every
            response, or one per response).
        round_stats: when a list, the :class:`~scar.scoring.ScorerStats` of every scorer call is appended
            to it (one call without ``tol``; one per round with it).
        ends: None, or one ``(v(∅), v(N))`` per response, known already (e.g. scored in the reward model's
            own dtype while ``scorer`` scores in a cheaper one): every empty and full coalition of the plans
            takes these values instead of being scored, so the results' ``base_value`` and ``full_value``
            are these and, by efficiency, the values sum to ``v(N) - v(∅)``.

    Returns:
        One :class:`scar.shapley.ShapleyResult` per response, in order (an empty list for no
        responses, without calling the scorer); with ``tol`` each has ``rounds``, ``tol`` and ``tol_met``
        set, and ``budget`` and ``n_evals`` are what that response spent.

    Raises:
        TypeError: ``scorer`` is not a CoalitionScorer; a per-response argument is not a list; bad
            estimator argument types (the message names the response).
        ValueError: lists of different lengths; :class:`ResponseError` (a ValueError) when a
            response's plan is invalid or its scores are not finite; the scorer's errors on bad ids
            or players (which name the response).
    """
    if not isinstance(scorer, CoalitionScorer):
        raise TypeError(f"scorer must be a CoalitionScorer, got {type(scorer).__name__}")
    for name, value in (("prompts_ids", prompts_ids), ("responses_ids", responses_ids), ("players_list", players_list)):
        if isinstance(value, (str, torch.Tensor)) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list with one entry per response, got {type(value).__name__}")
    n = len(responses_ids)
    if len(prompts_ids) != n or len(players_list) != n:
        raise ValueError(
            f"prompts_ids, responses_ids and players_list need one entry per response; got "
            f"{len(prompts_ids)}, {n} and {len(players_list)}"
        )
    seeds = [seed] * n if seed is None or not isinstance(seed, (list, tuple)) else _per_response("seed", seed, n)
    budgets = (
        [budget] * n if budget is None or not isinstance(budget, (list, tuple)) else _per_response("budget", budget, n)
    )
    trees = _per_response("hierarchies", hierarchies, n)
    suffixes = _per_response("suffixes_ids", suffixes_ids, n)
    known = _per_response("ends", ends, n)
    if tol is None and (max_budget is not None or tol_absolute is not False):
        raise ValueError("max_budget and tol_absolute apply to adaptive stopping: give tol as well")
    if n == 0:
        return []
    if tol is not None:
        caps = _per_response("max_budget", max_budget, n) if isinstance(max_budget, (list, tuple)) else [max_budget] * n
        return _adaptive_many(
            scorer,
            list(prompts_ids),
            list(responses_ids),
            list(players_list),
            suffixes,
            [
                dict(method=method, budget=b, seed=s, hierarchy=tree, max_budget=cap)
                for s, b, tree, cap in zip(seeds, budgets, trees, caps)
            ],
            tol,
            tol_absolute,
            round_stats,
            known,
        )
    plans = []
    for i, (players, s, b, tree) in enumerate(zip(players_list, seeds, budgets, trees)):
        try:
            n_players = len(players.tolist() if isinstance(players, torch.Tensor) else list(players))
            plans.append(plan(n_players, method=method, budget=b, seed=s, hierarchy=tree))
        except ValueError as err:
            raise ResponseError(i, str(err)) from err
        except TypeError as err:
            raise TypeError(f"response {i}: {err}") from err
    scores = _score_many(
        scorer,
        list(prompts_ids),
        list(responses_ids),
        list(players_list),
        [p.coalitions for p in plans],
        suffixes,
        known,
    )
    if round_stats is not None:
        round_stats.append(scorer.stats)
    results = []
    for i, (p, values) in enumerate(zip(plans, scores)):
        try:
            results.append(p.finish(values))
        except ValueError as err:  # e.g. NaN scores from the reward model
            raise ResponseError(i, str(err)) from err
    return results


def _score_many(
    scorer: CoalitionScorer,
    prompts: list[IdsLike],
    responses: list[IdsLike],
    players: list[Any],
    coalitions: list[torch.Tensor],
    suffixes: list[IdsLike | None],
    known: list[tuple[float, float] | None],
) -> list[torch.Tensor]:
    """``scorer.score_many`` of the coalitions, except that a response's empty and full coalitions take its
    ``known`` ``(v(∅), v(N))`` when given, unscored."""
    if all(k is None for k in known):
        return scorer.score_many(prompts, responses, players, coalitions, suffixes)
    ends: list[tuple[torch.Tensor, torch.Tensor, tuple[float, float]] | None] = []  # (empty rows, full rows, k)
    asked = []
    for c, k in zip(coalitions, known):
        rows = torch.as_tensor(c, dtype=torch.bool)
        if k is None or rows.dim() != 2 or rows.shape[1] == 0:
            ends.append(None)
            asked.append(c)
            continue
        empty, full = ~rows.any(1), rows.all(1)
        ends.append((empty, full, k))
        asked.append(rows[~(empty | full)])
    scored = scorer.score_many(prompts, responses, players, asked, suffixes)
    out = []
    for got, end in zip(scored, ends):
        if end is None:
            out.append(got)
            continue
        empty, full, (v_empty, v_full) = end
        values = torch.empty(empty.shape[0], dtype=torch.float64)
        values[empty], values[full] = float(v_empty), float(v_full)
        values[~(empty | full)] = got
        out.append(values)
    return out


def _adaptive_many(
    scorer: CoalitionScorer,
    prompts: list[IdsLike],
    responses: list[IdsLike],
    players: list[Any],
    suffixes: list[IdsLike | None],
    settings: list[dict[str, Any]],
    tol: float,
    tol_absolute: bool,
    round_stats: list[ScorerStats] | None,
    known: list[tuple[float, float] | None],
) -> list[ShapleyResult]:
    """:func:`shapley_values_many` with ``tol``: one :class:`AdaptiveRun` per response, and per round ONE
    scorer call for the new coalitions of the responses that are not done."""
    runs = []
    for i, (p, kw) in enumerate(zip(players, settings)):
        try:
            n_players = len(p.tolist() if isinstance(p, torch.Tensor) else list(p))
            runs.append(AdaptiveRun(n_players, tol=tol, tol_absolute=tol_absolute, **kw))
        except ValueError as err:
            raise ResponseError(i, str(err)) from err
        except TypeError as err:
            raise TypeError(f"response {i}: {err}") from err
    while True:
        active = [i for i, run in enumerate(runs) if not run.done]
        if not active:
            break
        scored = [i for i in active if runs[i].coalitions.shape[0]]
        values: dict[int, Any] = {}
        if scored:
            scores = _score_many(
                scorer,
                [prompts[i] for i in scored],
                [responses[i] for i in scored],
                [players[i] for i in scored],
                [runs[i].coalitions for i in scored],
                [suffixes[i] for i in scored],
                [known[i] for i in scored],
            )
            if round_stats is not None:
                round_stats.append(scorer.stats)
            values = dict(zip(scored, scores))
        for i in active:
            try:
                runs[i].feed(values.get(i, torch.zeros(0, dtype=torch.float64)))
            except ValueError as err:  # e.g. NaN scores from the reward model
                raise ResponseError(i, str(err)) from err
    return [run.result for run in runs if run.result is not None]
