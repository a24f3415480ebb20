"""Plain scoring of whole sequences in right-padded batches: the one home of padding and read-out.

Sequences are right-padded with an attention mask: in a causal model real tokens never see the padding,
in an encoder it is masked as keys, so padding changes no score. A model that does not honour the mask
(:func:`padding_exactness`, probed once per model) has its rows scored one at a time, unpadded. Decoders
are run as base model plus score head at each row's read-out token (:meth:`RewardModelInfo.readout_index`),
encoders as the whole classifier (read out at the first token).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scar._checks import check_positive_int
from scar.scoring.model import (
    RewardModelInfo,
    error_summary,
    evaluation_mode,
    inspect_model,
    model_device,
    probe_error,
    probe_ids,
)

__all__ = ["pad_right", "PaddedScores", "score_padded", "padding_exactness", "honours_padding"]

logger = logging.getLogger(__name__)

_PADDING: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def pad_right(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id rows into ``(input_ids [B, W], attention_mask [B, W])`` (int64, W the longest row)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass
class PaddedScores:
    """What :func:`score_padded` computed.

    Attributes:
        scores: float64 ``[B]`` on the CPU, in the order of the rows given.
        attention: with ``attention=True``: per row, float64 ``[len(row)]``, the last layer's attention of
            the read-out token over the row's tokens, averaged over heads; else None.
        hidden: with ``hidden=True`` (decoders): per row, float32 ``[len(row), hidden size]``, the base
            model's last hidden states of the row's tokens; else None.
        tokens: token-forwards run (padding included).
        passes: model forwards run.
        peak_tokens: the largest batch, in tokens (batch x padded width).
    """

    scores: torch.Tensor
    attention: list[torch.Tensor] | None
    tokens: int
    passes: int
    peak_tokens: int
    hidden: list[torch.Tensor] | None = None


def _hidden(out: Any) -> torch.Tensor:
    return out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out[0]


def padding_exactness(model: nn.Module, info: RewardModelInfo | None = None) -> tuple[bool, str]:
    """Does right padding with an attention mask leave the real tokens unchanged?

    The padded batches assume it. A probe runs the model on a 3-token and a 7-token sequence, each alone and
    both in one right-padded batch (:func:`pad_right`), and compares the logits (encoders, which are scored
    through the whole classifier) and, where the base model keeps one hidden state per token, the real
    tokens' last hidden states. Models that mix tokens without honouring the attention mask (Fourier mixing,
    hashed or kernel-approximated attention, ...) fail it.

    Returns:
        ``(ok, reason)``; ``reason`` says why not, or what was checked when ``ok``.
    """
    if info is None:
        info = inspect_model(model)
    ids = probe_ids(info.vocab_size, 7, {t for t in (info.pad_token_id,) if t is not None})
    rows = [ids[:3], ids]
    device = model_device(model)
    batch, mask = (t.to(device) for t in pad_right(rows, info.pad_token_id if info.pad_token_id is not None else 0))
    pairs: list[tuple[str, torch.Tensor, list[torch.Tensor]]] = []
    with evaluation_mode(model), torch.no_grad():
        try:
            if not info.is_causal:
                pairs.append(
                    (
                        "logits",
                        model(input_ids=batch, attention_mask=mask).logits,
                        [model(input_ids=torch.tensor([r], device=device)).logits[0] for r in rows],
                    )
                )
            pairs.append(
                (
                    "hidden states",
                    _hidden(info.base(input_ids=batch, attention_mask=mask)),
                    [_hidden(info.base(input_ids=torch.tensor([r], device=device)))[0] for r in rows],
                )
            )
        except Exception as err:
            if not pairs:  # an encoder-decoder's base needs decoder inputs: its logits decide
                return False, f"probe: the padded forward raised {error_summary(err)}"
    for what, padded, alone in pairs:
        for i, row in enumerate(rows):
            got, want = padded[i], alone[i]
            if what == "hidden states":
                if padded.shape[1] != batch.shape[1] or want.shape[0] != len(row):
                    continue  # the base pools or downsamples: the logits decide
                got = got[: len(row)]
            gap = probe_error(model, got, want)
            if gap is not None:
                return False, (
                    f"probe: right padding changes the real tokens' {what} by {gap:.3g} "
                    f"({info.model_type or type(model).__name__} does not honour the attention mask)"
                )
    return True, "right padding with an attention mask leaves the real tokens unchanged"


def honours_padding(model: nn.Module, info: RewardModelInfo) -> bool:
    """Whether right padding leaves ``model``'s scores unchanged (:func:`padding_exactness`, cached per model;
    a model that fails is logged once)."""
    if model not in _PADDING:
        ok, reason = padding_exactness(model, info)
        if not ok:
            logger.warning("%s is scored one unpadded sequence at a time: %s", type(model).__name__, reason)
        _PADDING[model] = ok
    return _PADDING[model]


def score_padded(
    model: nn.Module,
    info: RewardModelInfo,
    rows: Sequence[Sequence[int] | torch.Tensor],
    *,
    score_fn: ScoreFn | None = None,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    attention: bool = False,
    hidden: bool = False,
) -> PaddedScores:
    """Score whole id rows with the reward model, longest first, in right-padded batches.

    A batch holds at most ``batch_size`` rows and at most ``max_tokens`` tokens (rows x padded width; a
    single row longer than ``max_tokens`` runs alone). ``attention=True`` also returns the read-out
    token's last-layer attention (the model must produce attention weights: eager attention);
    ``hidden=True`` also returns each row's last hidden states (decoders only). Rows of different lengths are
    batched only for a model that honours the padding mask (:func:`honours_padding`).

    Run it under ``torch.no_grad()`` in eval mode (:class:`scar.scoring.model.evaluation_mode`).
    """
    if max_tokens is not None:
        max_tokens = check_positive_int(max_tokens, "max_tokens")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    device = model_device(model)
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    lengths = [len(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda k: -lengths[k])
    scores = torch.empty(len(rows), dtype=torch.float64)
    weights: list[torch.Tensor | None] = [None] * len(rows)
    states: list[torch.Tensor | None] = [None] * len(rows)
    if hidden and not info.is_causal:
        raise ValueError("hidden states are returned for decoder reward models only")
    if len(set(lengths)) > 1 and not honours_padding(model, info):
        batch_size = 1  # no row is ever padded
    tokens = passes = peak = 0
    start = 0
    while start < len(order):
        width = max(1, lengths[order[start]])
        size = len(order) - start
        if max_tokens is not None:
            size = min(size, max(1, max_tokens // width))
        if batch_size is not None:
            size = min(size, batch_size)
        batch = order[start : start + size]
        ids, mask = pad_right([rows[k] for k in batch], pad)
        ids, mask = ids.to(device), mask.to(device)
        if info.is_causal:
            if info.head is None:
                raise TypeError("a causal reward model needs its `score` head to be scored in padded batches")
            out = info.base(input_ids=ids, attention_mask=mask, output_attentions=attention, use_cache=False)
            readout = torch.tensor([info.readout_index(rows[k]) for k in batch], device=device)
            logits = info.head(out.last_hidden_state[torch.arange(len(batch), device=device), readout])
        else:
            out = model(input_ids=ids, attention_mask=mask, output_attentions=attention)
            readout = torch.zeros(len(batch), dtype=torch.long, device=device)
            logits = out.logits
        scores[torch.tensor(batch)] = info.score(logits, score_fn).cpu()
        if attention:
            if not out.attentions:
                raise RuntimeError(f"{type(model).__name__} returned no attention weights (use eager attention)")
            last = out.attentions[-1].to(torch.float64).mean(dim=1)  # [b, W, W], averaged over heads
            for b, k in enumerate(batch):
                weights[k] = last[b, int(readout[b]), : lengths[k]].cpu()
        if hidden:
            for b, k in enumerate(batch):
                states[k] = out.last_hidden_state[b, : lengths[k]].float().cpu()
        tokens += len(batch) * width
        passes += 1
        peak = max(peak, len(batch) * width)
        start += size
    done_weights = [w for w in weights if w is not None] if attention else None
    done_states = [h for h in states if h is not None] if hidden else None
    return PaddedScores(scores, done_weights, tokens, passes, peak, done_states)
