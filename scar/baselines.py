"""Baseline credit methods to compare SCAR against: attention-based credit (ABC) and the sparse reward.

ABC (Chan et al. 2024, "Dense Reward for Free in Reinforcement Learning from Human Feedback"): the
weights ``a_t`` are the reward model's last-layer attention from its read-out token (the last token for
causal decoders, the first token for BERT-style encoders) to each response token, averaged over heads
and normalised to sum 1 over the response tokens; then

    r_t = beta * r * a_t + (1 - beta) * r * 1[t == T]

so ``sum_t r_t == r``. Both baselines tokenize exactly like :mod:`scar.rewarder` (prompt with special
tokens ⊕ response without ⊕ ``suffix_ids``) and read the score at the same token the coalition scorer
uses, so their ``r`` equals SCAR's ``v(N)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from scar.players import Player, segment
from scar.rewarder import Encoded, check_finite, check_length, encode_pair, to_policy_tokens
from scar.rewards import DenseRewards, check_unit_interval, sparse_rewards

__all__ = ["attention_credit", "sparse_credit", "is_causal"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def is_causal(model: Any) -> bool:
    """Whether the model's self-attention is causal (decoder reward model) rather than bidirectional.

    transformers 5 attention modules carry an ``is_causal`` flag (True in GPT-2/Llama/NeoX..., False in
    BERT/DistilBERT encoders).
    """
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not flags:
        raise TypeError(f"cannot tell whether {type(model).__name__} is a causal decoder: no attention module "
                        "has an is_causal flag")
    return any(flags)


def logits_to_score(logits: torch.Tensor, score_fn: ScoreFn | None = None) -> torch.Tensor:
    """Scalar score from ``[B, K]`` classifier logits: the logit when ``K == 1``, ``logit[1] - logit[0]``
    when ``K == 2``, otherwise ``score_fn(logits)`` (required)."""
    if score_fn is not None:
        return torch.as_tensor(score_fn(logits)).reshape(-1).to(torch.float64)
    k = logits.shape[-1]
    if k == 1:
        return logits[:, 0].to(torch.float64)
    if k == 2:
        return (logits[:, 1] - logits[:, 0]).to(torch.float64)
    raise ValueError(f"the reward model has {k} output logits; pass score_fn=... to turn them into one score")


@contextlib.contextmanager
def _inference(model: Any, eager_attention: bool) -> Iterator[None]:
    """eval() + no_grad, and eager attention when attention weights are needed; all restored afterwards
    (sdpa/flash attention return no weights: transformers silently gives an empty tuple)."""
    was_training = model.training
    before = model.config._attn_implementation
    model.eval()
    try:
        if eager_attention and before != "eager":
            model.set_attn_implementation("eager")
        with torch.no_grad():
            yield
    finally:
        if eager_attention and model.config._attn_implementation != before:
            model.set_attn_implementation(before)
        model.train(was_training)


def _forward(
    model: Any,
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
    causal = is_causal(model)
    head = getattr(model, "score", None) if causal else None
    if causal and not isinstance(head, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no `score` head: expected a *ForSequenceClassification decoder")
    # Without a pad token id, transformers' decoder classifiers refuse batches larger than one.
    if model.config.pad_token_id is None:
        batch_size = 1
    device = next(model.parameters()).device
    scores: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    captured: list[torch.Tensor] = []
    # The classifier pools at the last token != pad_token_id, which is wrong when the sequence ends in a
    # token equal to the pad id (EOS used as pad); so read the per-position logits of the head instead.
    hook = head.register_forward_hook(lambda _m, _i, out: captured.append(out)) if causal else None
    try:
        with _inference(model, eager_attention=attention):
            for lo in range(0, len(encs), batch_size):
                chunk = encs[lo : lo + batch_size]
                lengths = torch.tensor([len(e.ids) for e in chunk], device=device)
                width = int(lengths.max())
                input_ids = torch.full((len(chunk), width), int(model.config.pad_token_id or 0), device=device)
                mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
                for i, e in enumerate(chunk):
                    input_ids[i, : len(e.ids)] = torch.tensor(e.ids, device=device)
                    mask[i, : len(e.ids)] = 1
                captured.clear()
                out = model(input_ids=input_ids, attention_mask=mask, output_attentions=attention)
                readout = lengths - 1 if causal else torch.zeros_like(lengths)
                if causal:
                    logits = captured[-1][torch.arange(len(chunk), device=device), readout]
                else:
                    logits = out.logits
                scores.append(logits_to_score(logits.float(), score_fn).cpu())
                if attention:
                    if not out.attentions:
                        raise RuntimeError(f"{type(model).__name__} returned no attention weights under eager attention")
                    last = out.attentions[-1].to(torch.float64).mean(dim=1)  # [b, L, L], averaged over heads
                    for i, e in enumerate(chunk):
                        p, t = len(e.prompt_ids), len(e.response_ids)
                        rows.append(last[i, int(readout[i]), p : p + t].cpu())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(scores), (rows if attention else None)


def _encode_all(
    model: Any,
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
    encs = [encode_pair(tokenizer, p, r, suffix_ids=suffix_ids) for p, r in zip(prompts, responses)]
    for i, e in enumerate(encs):
        check_length(model, e, i)
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
            (:func:`scar.rewarder.to_policy_tokens`).

    Returns:
        ``DenseRewards`` with ``method="abc"``: one player per reward-model response token (tokens without
        text join the next one, as :func:`scar.players.segment` does), ``values = beta * r * a`` summed over
        each player's tokens, ``base_values`` NaN, no stderr.
    """
    beta = check_unit_interval(beta, "beta")
    encs = _encode_all(model, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scores, rows = _forward(model, encs, attention=True, score_fn=score_fn, batch_size=batch_size)
    token_rewards, values, players = [], [], []
    for i, (e, row) in enumerate(zip(encs, rows)):
        r = check_finite(scores[i], f"response {i}")
        total = float(row.sum())
        if not total > 0.0:
            raise ValueError(f"response {i}: the read-out token puts no attention on the response tokens ({total})")
        a = row / total
        rm_rewards = beta * r * a
        rm_rewards[-1] += (1.0 - beta) * r
        ps = segment(e.text, e.offsets, "token")
        values.append(torch.stack([beta * r * a[p.start : p.end].sum() for p in ps]))
        players.append(ps)
        ids = None if completion_ids is None else completion_ids[i]
        token_rewards.append(to_policy_tokens(rm_rewards, e, policy_tokenizer, ids))
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

    One player (the whole response) whose value is ``r``; ``base_values`` NaN. Arguments as for
    :func:`attention_credit`.
    """
    encs = _encode_all(model, tokenizer, prompts, responses, suffix_ids, completion_ids)
    scores, _ = _forward(model, encs, attention=False, score_fn=score_fn, batch_size=batch_size)
    token_rewards, values, players = [], [], []
    for i, e in enumerate(encs):
        r = check_finite(scores[i], f"response {i}")
        t = len(e.response_ids)
        chars = [c for c, d in e.offsets if d > c] or [0]
        end = max(d for _, d in e.offsets)
        players.append([Player(0, t, min(chars), end, e.text[min(chars) : end])])
        values.append(torch.tensor([r], dtype=torch.float64))
        ids = None if completion_ids is None else completion_ids[i]
        token_rewards.append(to_policy_tokens(sparse_rewards(r, t), e, policy_tokenizer, ids))
    n = len(encs)
    return DenseRewards(token_rewards, scores, torch.full((n,), float("nan")), values, [None] * n, players, "sparse")
