"""The ``loop`` backend: delete each coalition's tokens and run the classifier on that one sequence.

The reference every other backend is tested against: nothing is shared, nothing is padded. The runtime
exactness check and the re-scoring of non-finite packed scores use the same plain forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from scar.scoring.config import ScorerStats
from scar.scoring.games import Game
from scar.scoring.model import RewardModelInfo, model_device

__all__ = ["score_loop", "plain_scores"]


def plain_scores(
    model: nn.Module,
    info: RewardModelInfo,
    sequences: Sequence[torch.Tensor],
    read_scores: Callable[[torch.Tensor], torch.Tensor],
    stats: ScorerStats | None = None,
) -> torch.Tensor:
    """Scores (float64 ``[S]``) of whole id sequences, one forward each; counted in ``stats`` when given."""
    device = model_device(model)
    values = torch.empty(len(sequences), dtype=torch.float64)
    kwargs = {"use_cache": False} if info.is_causal else {}
    for i, seq in enumerate(sequences):
        logits = model(input_ids=seq.to(device)[None], **kwargs).logits
        values[i] = read_scores(logits)[0]
        if stats is not None:
            stats.add_forward(seq.numel())
    return values


def score_loop(
    model: nn.Module,
    info: RewardModelInfo,
    games: list[Game],
    read_scores: Callable[[torch.Tensor], torch.Tensor],
    stats: ScorerStats,
) -> list[torch.Tensor]:
    """Scores (float64 ``[C_r]`` per game) of every coalition, one forward per coalition."""
    out = []
    for g in games:
        mask = g.keep_mask()
        out.append(plain_scores(model, info, [g.sequence(row) for row in mask], read_scores, stats))
    return out
