"""The ``batched`` backend: the deleted sequences, deduplicated, length-sorted and scored in padded batches.

The only fast path for bidirectional encoders, whose coalitions share no prefix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scar.scoring.config import ScorerStats
from scar.scoring.games import Game
from scar.scoring.model import RewardModelInfo
from scar.scoring.padded import score_padded

__all__ = ["score_batched"]


def score_batched(
    model: nn.Module,
    info: RewardModelInfo,
    games: list[Game],
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    max_tokens: int,
    stats: ScorerStats,
) -> list[torch.Tensor]:
    """Scores (float64 ``[C_r]`` per game) of every coalition, each distinct sequence scored once.

    Raises:
        ValueError: one coalition's sequence is longer than ``max_tokens`` (a batch cannot split it).
    """
    seqs: list[torch.Tensor] = []
    index: list[torch.Tensor] = []
    for g in games:
        uniq, inverse = torch.unique(g.bits, dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), g.n_coalitions, dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(g.n_coalitions), reduce="amin")
        mask = g.keep_mask()
        index.append(inverse + len(seqs))
        seqs.extend(g.sequence(mask[c]) for c in first.tolist())
    longest = max(s.numel() for s in seqs)
    if longest > max_tokens:
        raise ValueError(
            f"max_tokens_per_pass={max_tokens} is smaller than one coalition's sequence "
            f"({longest} tokens); backend 'batched' cannot split a sequence"
        )
    out = score_padded(model, info, seqs, score_fn=score_fn, max_tokens=max_tokens)
    stats.tokens_computed += out.tokens
    stats.passes += out.passes
    stats.peak_pack_tokens = max(stats.peak_pack_tokens, out.peak_tokens)
    return [out.scores[ix] for ix in index]
