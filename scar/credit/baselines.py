"""Baseline credit methods to compare SCAR against: attention-based credit (ABC) and the sparse reward.

ABC (Chan et al. 2024, "Dense Reward for Free in Reinforcement Learning from Human Feedback"): the weights
``a_t`` are the reward model's last-layer attention from its read-out token to each response token,
averaged over heads and normalised to sum 1 over the response tokens; then

    r_t = beta * r * a_t + (1 - beta) * r * 1[t == T]

so ``sum_t r_t == r``. Both baselines tokenize exactly like :class:`scar.SCAR` (:mod:`scar.game.tokens`) and
read the score at the same token (:func:`scar.scoring.padded.score_padded`), so their ``r`` equals SCAR's
``v(N)``. The ``1[t == T]`` part (ABC's ``(1 - beta) * r``, the sparse ``r``) sits on the last *completion*
token of the policy: the EOS when the policy's ``completion_ids`` end in one. An empty response given with
``completion_ids`` is scored as ``prompt ⊕ suffix``; it has no players and all of its reward sits on its
last completion token. An empty response without ``completion_ids`` is a ``ValueError``.

:class:`AttentionCredit` and :class:`SparseCredit` are credit providers with :class:`scar.SCAR`'s call
signature, so a trainer or an experiment swaps one for another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from scar._checks import check_batch, check_finite, check_positive_int, check_unit_interval
from scar.credit.rewards import DenseRewards
from scar.game.players import Player, segment
from scar.game.tokens import Encoded, check_length, encode_pair, require_fast_tokenizer, to_policy_tokens
from scar.scoring.model import RewardModelInfo, inspect_model
from scar.scoring.padded import PaddedScores, score_padded
from scar.scoring.views import model_view

__all__ = ["attention_credit", "sparse_credit", "AttentionCredit", "SparseCredit"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _score(
    model: Any, encs: Sequence[Encoded], *, attention: bool, score_fn: ScoreFn | None, batch_size: int
) -> PaddedScores:
    """Score the encoded pairs on a view of ``model`` (:mod:`scar.scoring.views`): eager attention when the
    read-out token's attention is wanted (sdpa and flash attention compute no weights), the model untouched."""
    batch_size = check_positive_int(batch_size, "batch_size")
    view = model_view(model, "eager" if attention else None)
    with torch.no_grad():
        return score_padded(
            view,
            inspect_model(view),
            [e.ids for e in encs],
            score_fn=score_fn,
            batch_size=batch_size,
            attention=attention,
        )


def _encode_all(
    info: RewardModelInfo,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    responses: Sequence[str | Sequence[int]],
    suffix_ids: Sequence[int] | None,
    completion_ids: Sequence[Sequence[int]] | None,
) -> list[Encoded]:
    check_batch(prompts, responses, completion_ids)
    # an empty completion is legitimate only when it comes with the policy's ids (see the module docstring)
    allow_empty = completion_ids is not None
    encs = [
        encode_pair(tokenizer, p, r, suffix_ids=suffix_ids, allow_empty=allow_empty) for p, r in zip(prompts, responses)
    ]
    for i, e in enumerate(encs):
        check_length(info.max_positions, e, i, info.vocab_size)
    return encs


def attention_credit(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    responses: Sequence[str | Sequence[int]],
    *,
    beta: float = 1.0,
    suffix_ids: Sequence[int] | None = None,
    score_fn: ScoreFn | None = None,
    batch_size: int = 8,
    policy_tokenizer: Any | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
) -> DenseRewards:
    """ABC dense rewards (see the module docstring) for a batch of responses.

    Args:
        model: a ``transformers`` ``*ForSequenceClassification`` reward model.
        tokenizer: its fast tokenizer.
        prompts, responses: strings or token ids (:func:`scar.game.tokens.encode_pair`).
        beta: weight of the attention-distributed part, in ``[0, 1]``; default 1 (all of ``r`` spread by
            attention; 0 gives the sparse reward).
        suffix_ids: tokens the reward model's template appends after the response.
        score_fn: maps ``[B, K]`` logits to ``[B]`` scores when ``K > 2``.
        batch_size: sequences per forward pass.
        policy_tokenizer, completion_ids: map the rewards onto the policy's tokens
            (:func:`scar.game.tokens.to_policy_tokens`); ``completion_ids`` without ``policy_tokenizer`` are
            decoded with ``tokenizer`` (the policy shares the reward model's tokenizer).

    Returns:
        ``DenseRewards`` with ``method="abc"``: one player per reward-model response token (tokens without
        text join the next one, as :func:`scar.game.players.segment` does), ``values = beta * r * a`` summed
        over each player's tokens, ``base_values`` NaN, no stderr.
    """
    beta = check_unit_interval(beta, "beta")
    if completion_ids is not None and policy_tokenizer is None:
        policy_tokenizer = tokenizer
    info = inspect_model(model)
    encs = _encode_all(info, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scored = _score(model, encs, attention=True, score_fn=score_fn, batch_size=batch_size)
    assert scored.attention is not None
    token_rewards: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    players: list[list[Player]] = []
    for i, (e, row) in enumerate(zip(encs, scored.attention)):
        r = check_finite(scored.scores[i], f"response {i}")
        ids = None if completion_ids is None else completion_ids[i]
        if not e.response_ids:  # nothing to attend to: all of r on the completion's last token
            values.append(torch.zeros(0, dtype=torch.float64))
            players.append([])
            token_rewards.append(
                to_policy_tokens(torch.zeros(0, dtype=torch.float64), e, policy_tokenizer, ids, final_reward=r)
            )
            continue
        p = len(e.prompt_ids)
        weights = row[p : p + len(e.response_ids)]
        total = float(weights.sum())
        if not total > 0.0:
            raise ValueError(f"response {i}: the read-out token puts no attention on the response tokens ({total})")
        a = weights / total
        ps = segment(e.text, e.offsets, "token")
        values.append(torch.stack([beta * r * a[q.start : q.end].sum() for q in ps]))
        players.append(ps)
        token_rewards.append(to_policy_tokens(beta * r * a, e, policy_tokenizer, ids, final_reward=(1.0 - beta) * r))
    n = len(encs)
    return DenseRewards(
        token_rewards, scored.scores, torch.full((n,), float("nan")), values, [None] * n, players, "abc"
    )


def sparse_credit(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    responses: Sequence[str | Sequence[int]],
    *,
    suffix_ids: Sequence[int] | None = None,
    score_fn: ScoreFn | None = None,
    batch_size: int = 8,
    policy_tokenizer: Any | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
) -> DenseRewards:
    """The ordinary sparse reward as ``DenseRewards`` (``method="sparse"``): ``r`` on the last token.

    The last token is the last completion token (the EOS of ``completion_ids`` that end in one). One player
    (the whole response) whose value is ``r`` (none for an empty response); ``base_values`` NaN. Arguments as
    for :func:`attention_credit`.
    """
    if completion_ids is not None and policy_tokenizer is None:
        policy_tokenizer = tokenizer
    info = inspect_model(model)
    encs = _encode_all(info, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scored = _score(model, encs, attention=False, score_fn=score_fn, batch_size=batch_size)
    token_rewards: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    players: list[list[Player]] = []
    for i, e in enumerate(encs):
        r = check_finite(scored.scores[i], f"response {i}")
        t = len(e.response_ids)
        if t:
            # the player's characters, as scar.game.players reports them: first token with text to the last end
            start = min((c for c, d in e.offsets if d > c), default=0)
            end = max(d for _, d in e.offsets)
            players.append([Player(0, t, start, end, e.text[start:end])])
            values.append(torch.tensor([r], dtype=torch.float64))
        else:
            players.append([])
            values.append(torch.zeros(0, dtype=torch.float64))
        ids = None if completion_ids is None else completion_ids[i]
        token_rewards.append(
            to_policy_tokens(torch.zeros(t, dtype=torch.float64), e, policy_tokenizer, ids, final_reward=r)
        )
    n = len(encs)
    return DenseRewards(
        token_rewards, scored.scores, torch.full((n,), float("nan")), values, [None] * n, players, "sparse"
    )


class _Baseline:
    """A baseline as a credit provider: settings at construction, ``(prompts, responses, completion_ids)`` per call."""

    method: str

    def __init__(
        self,
        reward_model: Any,
        tokenizer: Any,
        *,
        suffix_ids: Sequence[int] | None = None,
        score_fn: ScoreFn | None = None,
        batch_size: int = 8,
        policy_tokenizer: Any | None = None,
    ) -> None:
        require_fast_tokenizer(tokenizer, "reward-model")
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.suffix_ids = None if suffix_ids is None else list(suffix_ids)
        self.score_fn = score_fn
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.policy_tokenizer = policy_tokenizer

    def _kwargs(self, completion_ids: Sequence[Sequence[int]] | None) -> dict[str, Any]:
        return dict(
            suffix_ids=self.suffix_ids,
            score_fn=self.score_fn,
            batch_size=self.batch_size,
            policy_tokenizer=self.policy_tokenizer,
            completion_ids=completion_ids,
        )


class AttentionCredit(_Baseline):
    """ABC as a credit provider: ``AttentionCredit(rm, tok, beta=0.5)(prompts, responses, completion_ids)``.

    Args: ``beta`` and the keyword arguments of :func:`attention_credit`.
    """

    method = "abc"

    def __init__(self, reward_model: Any, tokenizer: Any, *, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(reward_model, tokenizer, **kwargs)
        self.beta = check_unit_interval(beta, "beta")

    def __call__(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> DenseRewards:
        """:func:`attention_credit` of the batch."""
        return attention_credit(
            self.reward_model, self.tokenizer, prompts, responses, beta=self.beta, **self._kwargs(completion_ids)
        )


class SparseCredit(_Baseline):
    """The sparse reward as a credit provider: ``SparseCredit(rm, tok)(prompts, responses, completion_ids)``.

    Args: the keyword arguments of :func:`sparse_credit`.
    """

    method = "sparse"

    def __call__(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> DenseRewards:
        """:func:`sparse_credit` of the batch."""
        return sparse_credit(self.reward_model, self.tokenizer, prompts, responses, **self._kwargs(completion_ids))
