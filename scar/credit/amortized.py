"""Amortized Shapley credit: a small head on the reward model's hidden states predicts the players' values,
trained online on cheap unbiased estimates of a fraction of the responses.

Per call, every response costs one plain forward of the reward model (its score ``r = v(N)`` and the last
hidden state of each response token) and one of ``prompt ⊕ suffix`` (``v(∅)``). A linear head ``w`` maps
each token's hidden state to a contribution; a player's prediction is the sum over its tokens, and the
predictions are moved by one common shift so that they sum exactly to ``v(N) - v(∅)`` (efficiency, the
orthogonal projection onto the efficient values). A ``label_fraction`` of the responses is also scored by
the configured sampled estimator (by default one antithetic permutation pair, unbiased for every player);
those estimates are the head's regression targets. Regressing on noisy unbiased targets converges to their
expectation (stochastic amortization), so the head learns Shapley values it never sees exactly, and
every later response pays about one forward for its credit.

The projected predictions are linear in ``w``, so the head is the ridge regression of all labels seen,
solved in closed form after each call that adds labels: the sufficient statistics ``A^T A`` and ``A^T b``
(``A`` = the players' summed hidden states, centred per response; ``b`` = the labels minus the response's
mean value) are accumulated with a forgetting factor, so newer labels (of the current policy's responses)
weigh more.

Until the head has seen its first labels it predicts zero, so the credit is ``(v(N) - v(∅)) / n`` per
player: the sequence reward spread evenly. Which responses are labelled is decided by a hash of the
response, like the estimators' seeds; the head itself depends on the responses it was trained on, so
unlike :class:`~scar.credit.rewarder.SCAR`, its credit for a response depends on the call's history.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

import torch

from scar._checks import check_unit_interval
from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR, response_seed
from scar.game.players import Player
from scar.game.tokens import Encoded
from scar.scoring import ScorerStats
from scar.scoring.model import model_dtype
from scar.scoring.padded import score_padded
from scar.shapley import ShapleyResult

__all__ = ["AmortizedConfig", "AmortizedSCAR"]


@dataclass
class AmortizedConfig(CreditConfig):
    """:class:`~scar.credit.config.CreditConfig` plus the settings of the amortization head.

    ``method`` and ``budget`` choose the estimator of the labels (default: ``"permutation"`` with 2
    permutations, one antithetic pair: unbiased for every player).

    Attributes:
        label_fraction: share of the responses labelled by the estimator, in ``(0, 1]``.
        ridge: the ridge penalty, relative to the mean diagonal of ``A^T A``.
        forget: the weight of the accumulated statistics at each labelled response, in ``(0, 1]``
            (1: all labels weigh the same).
    """

    method: str = "permutation"
    budget: Any = 2
    label_fraction: float = 0.25
    ridge: float = 1e-3
    forget: float = 0.995

    def __post_init__(self) -> None:
        super().__post_init__()
        self.label_fraction = check_unit_interval(self.label_fraction, "label_fraction")
        if self.label_fraction == 0.0:
            raise ValueError("label_fraction must be > 0: the head learns from labelled responses")
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge!r}")
        self.forget = check_unit_interval(self.forget, "forget")
        if self.forget == 0.0:
            raise ValueError("forget must be > 0")


class AmortizedSCAR(SCAR):
    """:class:`~scar.credit.rewarder.SCAR` whose credit comes from an amortization head (module docstring).

    Args: as :class:`SCAR`; ``config`` is an :class:`AmortizedConfig` (keyword settings are routed to it).
    Needs a causal decoder reward model (the head reads its hidden states).

    Attributes:
        weight: the head, float64 ``[hidden size]`` on the CPU.
        labels_seen: labelled responses the head was trained on so far.
    """

    config: AmortizedConfig

    def __init__(self, reward_model: Any, tokenizer: Any, config: AmortizedConfig | None = None, **kwargs: Any):
        config_fields = {f for f in AmortizedConfig.__dataclass_fields__}
        settings = {k: v for k, v in kwargs.items() if k in config_fields}
        rest = {k: v for k, v in kwargs.items() if k not in config_fields}
        if config is None:
            config = AmortizedConfig(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        if not isinstance(config, AmortizedConfig):
            raise TypeError(f"config must be an AmortizedConfig, got {type(config).__name__}")
        super().__init__(reward_model, tokenizer, config, **rest)
        if not self.scorer.info.is_causal:
            raise ValueError("amortized credit reads a causal decoder's hidden states; this reward model is an encoder")
        hidden_size = int(getattr(self.scorer.info.base.config, "hidden_size", 0) or 0) + 1
        if hidden_size < 2:
            raise ValueError("cannot tell the reward model's hidden size (config.hidden_size)")
        self.weight = torch.zeros(hidden_size, dtype=torch.float64)
        self._gram = torch.zeros(hidden_size, hidden_size, dtype=torch.float64)
        self._moment = torch.zeros(hidden_size, dtype=torch.float64)
        self._lock = threading.Lock()
        self._stats: list[ScorerStats] = []
        self.labels_seen = 0

    def _labelled(self, enc: Encoded) -> bool:
        """Whether a response is labelled: a hash of it below ``label_fraction`` (the same in any batch)."""
        key = response_seed(self.config.seed or 0, enc.prompt_ids, enc.response_ids)
        return (key % 1_000_003) / 1_000_003 < self.config.label_fraction

    def _chunk_stats(self, n: int) -> list[ScorerStats]:
        return self._stats

    def _shapley_chunk(self, pending: list[tuple[int, Encoded, list[Player], Any, int | None]]) -> list[ShapleyResult]:
        view, info = self.scorer.view, self.scorer.info
        head = info.head
        assert head is not None  # a causal sequence classifier (checked at construction)
        encs = [p[1] for p in pending]
        with torch.no_grad():
            full = score_padded(view, info, [e.ids for e in encs], score_fn=self.scorer.score_fn, hidden=True)
            empty = score_padded(view, info, [e.prompt_ids + e.suffix_ids for e in encs], score_fn=self.scorer.score_fn)
            assert full.hidden is not None
            features = []
            for k, e in enumerate(encs):
                start, end = len(e.prompt_ids), len(e.prompt_ids) + len(e.response_ids)
                states = full.hidden[k]
                # the score head at every token from the one before the response to its last one
                prefix = head(states[start - 1 : end].to(model_dtype(view))).double()[:, 0]
                features.append(_player_features(states[start:end], prefix, pending[k][2]))
        plain = ScorerStats(
            backend="amortized",
            coalitions=2,
            distinct_coalitions=2,
            tokens_computed=full.tokens + empty.tokens,
            passes=full.passes + empty.passes,
            peak_pack_tokens=max(full.peak_tokens, empty.peak_tokens),
        )
        self._stats = [plain] * len(pending)
        labelled = [k for k, e in enumerate(encs) if self._labelled(e)]
        if labelled:
            estimates = super()._shapley_chunk([pending[k] for k in labelled])
            for k, cost in zip(labelled, super()._chunk_stats(len(labelled))):
                self._stats[k] = cost
            with self._lock:
                for k, res in zip(labelled, estimates):
                    self._add_label(features[k], res.values)
                self.labels_seen += len(labelled)
                self._solve()
        results = []
        weight = self.weight
        for k in range(len(pending)):
            r, v0 = float(full.scores[k]), float(empty.scores[k])
            raw = features[k] @ weight
            values = raw + ((r - v0) - float(raw.sum())) / raw.numel()
            results.append(ShapleyResult(values, None, 2, v0, r, "amortized", None))
        return results

    def _add_label(self, features: torch.Tensor, values: torch.Tensor) -> None:
        """Accumulate one response's equations: centred features against centred labels."""
        a = features - features.mean(0, keepdim=True)
        b = values.double() - values.double().mean()
        self._gram.mul_(self.config.forget).add_(a.T @ a)
        self._moment.mul_(self.config.forget).add_(a.T @ b)

    def _solve(self) -> None:
        d = self._gram.shape[0]
        penalty = self.config.ridge * float(torch.diagonal(self._gram).mean()) + 1e-12
        self.weight = torch.linalg.solve(self._gram + penalty * torch.eye(d, dtype=torch.float64), self._moment)


def _player_features(states: torch.Tensor, prefix: torch.Tensor, players: list[Player]) -> torch.Tensor:
    """float64 ``[n, d + 1]``: each player's hidden states summed over its tokens, and the change of the
    score head's read-out over the player's tokens (``prefix[t]``: the head at the token before response
    token ``t``; the last entry after the last token), the player's marginal in left-to-right order."""
    rows = [
        torch.cat([states[p.start : p.end].double().sum(0), (prefix[p.end] - prefix[p.start]).reshape(1)])
        for p in players
    ]
    return torch.stack(rows)
