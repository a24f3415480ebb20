"""Settings of Shapley credit: what a player is, how values are estimated, how they become rewards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from scar._checks import check_choice, check_positive_int, check_seed, check_tolerance, check_unit_interval
from scar.credit.rewards import PLACEMENTS
from scar.game.players import KINDS
from scar.game.tokens import as_token_ids
from scar.scoring.precision import SCORE_DTYPES
from scar.shapley import ADAPTIVE_METHODS, DEFAULT_METHOD, METHODS

__all__ = ["CreditConfig"]


@dataclass
class CreditConfig:
    """How :class:`scar.SCAR` turns a reward model's score into dense per-token rewards.

    Attributes:
        players: what a player is: ``"token"``, ``"span"`` or ``"sentence"`` (:func:`scar.game.players.segment`).
        max_span_tokens: the span length cap of ``players="span"`` (None: the segmenter's default).
        method: the Shapley estimator, one of :data:`scar.shapley.METHODS` (default ``"kernel"``);
            ``"owen"`` uses the sentence > span (> token) hierarchy of each response.
        budget: the estimator's sampling budget: an int, a function of the response's number of players
            ``n`` (e.g. ``lambda n: n + 1`` coalitions for ``kernel``), or None for the estimator's default.
        seed: the base seed of the estimators' sampling. Each response's sampling is drawn from
            ``(seed, prompt ids, response ids)``, so its credit does not depend on which other responses
            share the call, nor on the call's order or process. None draws fresh entropy per response.
        alpha: weight of the credit in ``R_t = alpha * phi_t + (1 - alpha) * 1[t == T] * r``, in ``[0, 1]``;
            default 1 (pure credit: the rewards sum to ``r - v(∅)``, which differs from ``r`` by a
            prompt-only constant and so keeps the optimal policy).
        placement: ``"last"`` (a player's credit on its last token) or ``"spread"`` (evenly over its tokens).
        suffix_ids: tokens the reward model's template appends after each response (e.g. ``[eos]``).
        batch_size: responses whose coalitions are scored in one scorer call (one packed forest, split into
            passes by the scorer's token budget).
        progress: show a progress bar over responses.
        tol: adaptive stopping (None: off): each response is sampled in rounds until every player's standard
            error is at most ``tol`` times ``|r - v(∅)|`` (absolute with ``tol_absolute``), its exact plan is
            reached or ``max_budget`` is spent; ``budget`` is then the first round (the tolerance is tested
            from twice the default first round on, :data:`scar.shapley.adaptive.MIN_STOP_FACTOR`). Each round scores the
            unfinished responses of a chunk of ``batch_size`` together (:func:`scar.shapley.shapley` and
            :func:`scar.credit.attribution.shapley_values_many` say more). Methods: those of
            :data:`scar.shapley.ADAPTIVE_METHODS`.
        tol_absolute: ``tol`` is in the reward model's units.
        max_budget: with ``tol``: the most budget one response may spend (the estimator's unit): an even int,
            a function of the response's number of players, or None for 8 times the estimator's default.
        score_dtype: the dtype the coalitions are scored in: None (the reward model's own, the default),
            ``"bfloat16"`` or ``"float16"`` (a copy of the reward model cast to it, which follows the model's
            weights: what changed since the previous call is cast again before the next), or ``"auto"``
            (``bfloat16`` when the model is ``float32``, ``method`` is not ``"exact"`` and ``bfloat16``
            matrix products are measured faster on its device, else the model's own:
            :mod:`scar.scoring.precision`). With a copy, ``r`` and ``v(∅)`` still come from the reward model
            itself (its full and empty coalitions, one scorer call per chunk) and enter the estimate as its
            empty and full coalitions, so the values sum to ``r - v(∅)``: only the coalitions in between are
            scored in the lower precision. Its rounding is usually far below the sampling noise of a sampled
            estimate but has a heavy tail (a rare coalition of an ill-conditioned input scored far off): fine
            for RL, where the noise averages away; keep None to read one response's values.
    """

    players: str = "span"
    max_span_tokens: int | None = None
    method: str = DEFAULT_METHOD
    budget: int | Callable[[int], int] | None = None
    seed: int | None = None
    alpha: float = 1.0
    placement: str = "last"
    suffix_ids: Sequence[int] | None = None
    batch_size: int = 8
    progress: bool = True
    tol: float | None = None
    tol_absolute: bool = False
    max_budget: int | Callable[[int], int] | None = None
    score_dtype: str | None = None

    def __post_init__(self) -> None:
        check_choice(self.players, "player kind", KINDS)
        if self.max_span_tokens is not None:
            if self.players != "span":
                raise ValueError(f"max_span_tokens applies to players='span' only, got players={self.players!r}")
            self.max_span_tokens = check_positive_int(self.max_span_tokens, "max_span_tokens")
        check_choice(self.method, "method", METHODS)
        if self.budget is not None and not callable(self.budget):
            self.budget = check_positive_int(self.budget, "budget")
        self.seed = check_seed(self.seed)
        self.alpha = check_unit_interval(self.alpha, "alpha")
        check_choice(self.placement, "placement", PLACEMENTS)
        if self.suffix_ids is not None:
            self.suffix_ids = as_token_ids(self.suffix_ids, "suffix_ids")
        self.batch_size = check_positive_int(self.batch_size, "batch_size")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be a bool, got {type(self.progress).__name__}")
        if not isinstance(self.tol_absolute, bool):
            raise TypeError(f"tol_absolute must be a bool, got {type(self.tol_absolute).__name__}")
        if self.tol is None:
            if self.max_budget is not None or self.tol_absolute:
                raise ValueError("max_budget and tol_absolute apply to adaptive stopping: set tol as well")
        else:
            self.tol = check_tolerance(self.tol, "tol")
            if self.method not in ADAPTIVE_METHODS:
                raise ValueError(
                    f"tol (adaptive stopping) works with methods {', '.join(ADAPTIVE_METHODS)}; "
                    f"got method={self.method!r}"
                )
            if self.max_budget is not None and not callable(self.max_budget):
                self.max_budget = check_positive_int(self.max_budget, "max_budget")
        if self.score_dtype is not None:
            check_choice(self.score_dtype, "score_dtype", SCORE_DTYPES)

    def budget_for(self, n_players: int) -> int | None:
        """The estimator budget for a response of ``n_players`` players (see :attr:`budget`)."""
        if self.budget is None or not callable(self.budget):
            return self.budget
        return check_positive_int(self.budget(n_players), "budget(n_players)")

    def max_budget_for(self, n_players: int) -> int | None:
        """The adaptive ``max_budget`` for a response of ``n_players`` players (see :attr:`max_budget`)."""
        if self.max_budget is None or not callable(self.max_budget):
            return self.max_budget
        return check_positive_int(self.max_budget(n_players), "max_budget(n_players)")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the settings (what ``SCAR(**kwargs)`` routes here)."""
        return frozenset(f.name for f in fields(cls))
