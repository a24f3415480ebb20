"""Settings of Shapley credit: what a player is, how values are estimated, how they become rewards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from scar._checks import check_choice, check_positive_int, check_seed, check_unit_interval
from scar.credit.rewards import PLACEMENTS
from scar.game.players import KINDS
from scar.game.tokens import as_token_ids
from scar.shapley import DEFAULT_METHOD, METHODS

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

    def budget_for(self, n_players: int) -> int | None:
        """The estimator budget for a response of ``n_players`` players (see :attr:`budget`)."""
        if self.budget is None or not callable(self.budget):
            return self.budget
        return check_positive_int(self.budget(n_players), "budget(n_players)")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the settings (what ``SCAR(**kwargs)`` routes here)."""
        return frozenset(f.name for f in fields(cls))
