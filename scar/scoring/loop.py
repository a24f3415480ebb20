"""The ``loop`` backend: delete each coalition's tokens and run the classifier on that one sequence.

The reference every other backend is tested against: nothing is shared, nothing is padded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scar.scoring.config import ScorerStats
from scar.scoring.games import Game
from scar.scoring.model import RewardModelInfo, model_device

__all__ = ["score_loop"]


def score_loop(
    model: nn.Module,
    info: RewardModelInfo,
    games: list[Game],
    read_scores: Callable[[torch.Tensor], torch.Tensor],
    stats: ScorerStats,
) -> list[torch.Tensor]:
    """Scores (float64 ``[C_r]`` per game) of every coalition, one forward per coalition."""
    device = model_device(model)
    out = []
    for g in games:
        mask = g.keep_mask()
        values = torch.empty(mask.shape[0], dtype=torch.float64)
        for c in range(mask.shape[0]):
            seq = g.sequence(mask[c]).to(device)
            kwargs = {"use_cache": False} if info.is_causal else {}
            logits = model(input_ids=seq[None], **kwargs).logits
            values[c] = read_scores(logits)[0]
            stats.add_forward(seq.numel())
        out.append(values)
    return out
