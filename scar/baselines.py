"""Baseline credit methods to compare SCAR against: attention-based credit (ABC) and the sparse reward.

ABC (Chan et al. 2024, "Dense Reward for Free in Reinforcement Learning from Human Feedback"): the
weights ``a_t`` are the reward model's last-layer attention from its read-out token to each response
token, averaged over heads and normalised to sum 1 over the response tokens; then

    r_t = beta * r * a_t + (1 - beta) * r * 1[t == T]

so ``sum_t r_t == r``. Both baselines tokenize exactly like :mod:`scar.rewarder` (prompt with special
tokens ⊕ response without ⊕ ``suffix_ids``) and read the score at the same token the coalition scorer
uses, so their ``r`` equals SCAR's ``v(N)``: for causal decoders the last token, or when the config has a
pad id, the rightmost token that is not the pad id (as transformers pools; it matters when EOS doubles as
pad and ends the sequence); for BERT-style encoders the first token.

The ``1[t == T]`` part (ABC's ``(1 - beta) * r``, the sparse ``r``) sits on the last *completion* token
of the policy: the EOS when the policy's ``completion_ids`` end in one (:func:`scar.rewarder.to_policy_tokens`).
An empty response given with ``completion_ids`` (a completion that is only EOS decodes to ``""``) is
scored as ``prompt ⊕ suffix``; it has no players, and all of its reward ``r`` sits on its last completion
token. An empty response without ``completion_ids`` is a ``ValueError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from scar.models import RewardModelInfo, evaluation_mode, inspect_model, model_device
from scar.players import Player, segment
from scar.rewarder import Encoded, check_finite, check_length, encode_pair, to_policy_tokens
from scar.rewards import DenseRewards, check_unit_interval

__all__ = ["attention_credit", "sparse_credit", "readout_index", "sequence_scores"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def readout_index(ids: Sequence[int], pad_token_id: int | None) -> int:
    """Where a decoder classifier reads its score on one unpadded sequence, as transformers (and
    :class:`scar.scorer.CoalitionScorer`) pick it: the last token, or when the config has a pad id, the
    rightmost token that is not the pad id (0 if all are)."""
    if pad_token_id is not None:
        for k in range(len(ids) - 1, -1, -1):
            if ids[k] != pad_token_id:
                return k
        return 0
    return len(ids) - 1


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Eager attention while inside, the model's own implementation restored after: sdpa/flash attention
    compute no weights (transformers then silently returns an empty tuple of attentions)."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)


def _forward(
    model: Any,
    info: RewardModelInfo,
    encs: Sequence[Encoded],
    *,
    attention: bool,
    score_fn: ScoreFn | None,
    batch_size: int,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Score each encoded sequence; with ``attention``, also the head-averaged last-layer attention row of
    the read-out token over the response tokens (float64, unnormalised).

    Sequences are right-padded with an attention mask: in a causal model real tokens never see the
    padding, in an encoder it is masked as keys, so padding does not change any score or weight.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if info.is_causal and info.head is None:
        raise TypeError(f"{type(model).__name__} has no `score` head: expected a *ForSequenceClassification decoder")
    device = model_device(model)
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    scores: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    with evaluation_mode(model), (_eager_attention(model) if attention else contextlib.nullcontext()):
        for lo in range(0, len(encs), batch_size):
            chunk = encs[lo : lo + batch_size]
            width = max(len(e.ids) for e in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(chunk):
                input_ids[i, : len(e.ids)] = torch.tensor(e.ids)
                mask[i, : len(e.ids)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            if info.is_causal:
                out = info.base(input_ids=input_ids, attention_mask=mask, output_attentions=attention, use_cache=False)
                readout = torch.tensor([readout_index(e.ids, info.pad_token_id) for e in chunk], device=device)
                logits = info.head(out.last_hidden_state[torch.arange(len(chunk), device=device), readout])
            else:
                out = model(input_ids=input_ids, attention_mask=mask, output_attentions=attention)
                readout = torch.zeros(len(chunk), dtype=torch.long, device=device)  # first token (CLS)
                logits = out.logits
            scores.append(info.score(logits.float(), score_fn).cpu())
            if attention:
                if not out.attentions:
                    raise RuntimeError(f"{type(model).__name__} returned no attention weights under eager attention")
                last = out.attentions[-1].to(torch.float64).mean(dim=1)  # [b, L, L], averaged over heads
                for i, e in enumerate(chunk):
                    p, t = len(e.prompt_ids), len(e.response_ids)
                    rows.append(last[i, int(readout[i]), p : p + t].cpu())
    return torch.cat(scores), (rows if attention else None)


def sequence_scores(
    model: Any,
    encs: Sequence[Encoded],
    *,
    score_fn: ScoreFn | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """The reward model's score of each encoded sequence (``enc.ids``, no token removed), ``[B]``.

    Read out like :class:`scar.scorer.CoalitionScorer` (see the module docstring), in right-padded
    batches of ``batch_size``; the response may be empty (then ``prompt ⊕ suffix`` is scored, i.e. ``v(∅)``).
    """
    return _forward(model, inspect_model(model), encs, attention=False, score_fn=score_fn, batch_size=batch_size)[0]


def _encode_all(
    info: RewardModelInfo,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    responses: Sequence[str | Sequence[int]],
    suffix_ids: Sequence[int] | None,
    completion_ids: Sequence[Sequence[int]] | None,
) -> list[Encoded]:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if completion_ids is not None and len(completion_ids) != len(responses):
        raise ValueError(f"got {len(completion_ids)} completion_ids but {len(responses)} responses")
    # an empty completion is legitimate only when it comes with the policy's ids (see the module docstring)
    allow_empty = completion_ids is not None
    encs = [encode_pair(tokenizer, p, r, suffix_ids=suffix_ids, allow_empty=allow_empty)
            for p, r in zip(prompts, responses)]
    for i, e in enumerate(encs):
        check_length(info.max_positions, e, i)
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
        prompts, responses: strings or token ids (see :mod:`scar.rewarder` for the tokenization).
        beta: weight of the attention-distributed part, in ``[0, 1]``; default 1 (all of ``r`` spread by
            attention; 0 gives the sparse reward).
        suffix_ids: tokens the reward model's template appends after the response.
        score_fn: maps ``[B, K]`` logits to ``[B]`` scores when ``K > 2``.
        batch_size: sequences per forward pass.
        policy_tokenizer, completion_ids: map the rewards onto the policy's tokens
            (:func:`scar.rewarder.to_policy_tokens`); ``completion_ids`` without ``policy_tokenizer`` are
            decoded with ``tokenizer`` (the policy shares the reward model's tokenizer).

    Returns:
        ``DenseRewards`` with ``method="abc"``: one player per reward-model response token (tokens without
        text join the next one, as :func:`scar.players.segment` does), ``values = beta * r * a`` summed over
        each player's tokens, ``base_values`` NaN, no stderr. The ``(1 - beta) * r`` part is on the last
        completion token (the EOS of ``completion_ids`` that end in one); an empty response (allowed with
        ``completion_ids`` only) has no players and ``r`` on that token.
    """
    beta = check_unit_interval(beta, "beta")
    if completion_ids is not None and policy_tokenizer is None:
        policy_tokenizer = tokenizer
    info = inspect_model(model)
    encs = _encode_all(info, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scores, rows = _forward(model, info, encs, attention=True, score_fn=score_fn, batch_size=batch_size)
    token_rewards, values, players = [], [], []
    for i, (e, row) in enumerate(zip(encs, rows)):
        r = check_finite(scores[i], f"response {i}")
        ids = None if completion_ids is None else completion_ids[i]
        if not e.response_ids:  # nothing to attend to: all of r on the completion's last token
            values.append(torch.zeros(0, dtype=torch.float64))
            players.append([])
            token_rewards.append(to_policy_tokens(torch.zeros(0, dtype=torch.float64), e, policy_tokenizer, ids,
                                                  final_reward=r))
            continue
        total = float(row.sum())
        if not total > 0.0:
            raise ValueError(f"response {i}: the read-out token puts no attention on the response tokens ({total})")
        a = row / total
        ps = segment(e.text, e.offsets, "token")
        values.append(torch.stack([beta * r * a[p.start : p.end].sum() for p in ps]))
        players.append(ps)
        token_rewards.append(to_policy_tokens(beta * r * a, e, policy_tokenizer, ids, final_reward=(1.0 - beta) * r))
    n = len(encs)
    return DenseRewards(token_rewards, scores, torch.full((n,), float("nan")), values, [None] * n, players, "abc")


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

    The last token is the last completion token (the EOS of ``completion_ids`` that end in one). One
    player (the whole response) whose value is ``r`` (none for an empty response); ``base_values`` NaN.
    Arguments as for :func:`attention_credit`.
    """
    if completion_ids is not None and policy_tokenizer is None:
        policy_tokenizer = tokenizer
    info = inspect_model(model)
    encs = _encode_all(info, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scores, _ = _forward(model, info, encs, attention=False, score_fn=score_fn, batch_size=batch_size)
    token_rewards, values, players = [], [], []
    for i, e in enumerate(encs):
        r = check_finite(scores[i], f"response {i}")
        t = len(e.response_ids)
        if t:
            # the player's characters, as scar.players reports them: first token with text to the last end
            start = min((c for c, d in e.offsets if d > c), default=0)
            end = max(d for _, d in e.offsets)
            players.append([Player(0, t, start, end, e.text[start:end])])
            values.append(torch.tensor([r], dtype=torch.float64))
        else:
            players.append([])
            values.append(torch.zeros(0, dtype=torch.float64))
        ids = None if completion_ids is None else completion_ids[i]
        token_rewards.append(to_policy_tokens(torch.zeros(t, dtype=torch.float64), e, policy_tokenizer, ids,
                                              final_reward=r))
    n = len(encs)
    return DenseRewards(token_rewards, scores, torch.full((n,), float("nan")), values, [None] * n, players, "sparse")
