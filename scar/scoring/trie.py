"""The ``trie`` backend: every coalition of every response in one preorder prefix-tree pack.

The scorer hands it the games after :func:`scar.scoring.games.share_prompts`, so responses to the same
prompt are one tree under one prompt root.

The pack (:func:`scar.scoring.games.pack_games`) runs in as few passes of the base model as the token
budget allows (:func:`scar.scoring.passes.split_passes`), with compacted ``position_ids`` and the attention
rule of ``horizon``: either tree attention (:func:`scar.scoring.attention.packed_forward`, which never
builds an ``N x N`` mask and skips invisible key blocks: the ``scar::tree_attention`` kernel, or
FlexAttention with a block mask built from ``horizon``) or a dense float mask given to the model's own
attention. The score head is applied at the read-out rows only. A tree that does not
fit one pass has its prompt computed once into a ``DynamicCache`` that every pass of that tree attends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from scar.scoring.attention import packed_forward
from scar.scoring.config import ScorerStats
from scar.scoring.games import Game, pack_games
from scar.scoring.model import RewardModelInfo, cache_keyword, model_device, model_dtype
from scar.scoring.passes import split_passes
from scar_kernels.ops import PackLayout, dense_mask

__all__ = ["score_trie", "cacheable_prompt"]


def score_trie(
    model: nn.Module,
    info: RewardModelInfo,
    games: list[Game],
    layout: PackLayout,
    read_scores: Callable[[torch.Tensor], torch.Tensor],
    max_tokens: int,
    packed_base: nn.Module | None,
    stats: ScorerStats,
    attention: str = "kernel",
    cache_prompt: bool = True,
) -> list[torch.Tensor]:
    """Scores (float64 ``[C_r]`` per game) of every coalition.

    ``layout`` is the pack of all games with whole prompts (no cache). Whole trees that fit ``max_tokens``
    share passes; each larger tree runs its own passes on top of its prompt's KV cache, or, with
    ``cache_prompt=False`` (models whose cache the tree attention cannot read as per-head keys and values),
    recomputes its prompt in every pass, in passes that hold at least one whole coalition sequence.
    ``packed_base`` (a base model view selecting ``"scar_tree"``) runs the passes with tree attention,
    ``attention`` (``"kernel"`` or ``"flex"``) saying which; None: a dense mask through ``model``'s own attention.
    """
    sizes = torch.bincount(layout.tree, minlength=len(games)).tolist()
    small = [r for r, size in enumerate(sizes) if size <= max_tokens]
    big = [r for r, size in enumerate(sizes) if size > max_tokens]
    run = _Runner(model, info, read_scores, max_tokens, packed_base, stats, attention)
    if not big:
        return run(games, layout, 0)
    scores: list[torch.Tensor | None] = [None] * len(games)
    if small:
        sub = [games[r] for r in small]
        for r, values in zip(small, run(sub, pack_games(sub, [0] * len(sub)), 0)):
            scores[r] = values
    for r in big:
        if cache_prompt:
            cached = cacheable_prompt(games[r], info.pad_token_id)
            scores[r] = run([games[r]], pack_games([games[r]], [cached]), cached)[0]
        else:
            whole = max(max_tokens, int(games[r].source.numel()))  # room for the longest coalition's chain
            scores[r] = run([games[r]], pack_games([games[r]], [0]), 0, whole)[0]
    return scores  # type: ignore[return-value]


def cacheable_prompt(game: Game, pad_token_id: int | None) -> int:
    """Prompt tokens to serve from a KV cache: all but the last, but never past the transformers read-out
    of an all-pad continuation (the rightmost non-pad prompt token must stay in the pack)."""
    cached = game.prompt_len - 1
    if pad_token_id is not None:
        non_pad = (game.source[: game.prompt_len] != pad_token_id).nonzero()
        cached = min(cached, int(non_pad[-1]) if non_pad.numel() else 0)
    return cached


def _readouts(layout: PackLayout, last: torch.Tensor, packed_ids: torch.Tensor, pad: int | None) -> torch.Tensor:
    """Read-out rows as transformers picks them: when the config has a pad id, step back from each
    sequence's last packed token ``last`` over pad-id tokens along that sequence (within a node, then into
    the parent's last token)."""
    readout = last.clone()
    if pad is None:
        return readout
    starts = layout.node_start
    for c in (packed_ids[readout] == pad).nonzero().flatten().tolist():
        k = int(readout[c])
        node = int(torch.searchsorted(starts, k, right=True)) - 1
        while int(packed_ids[k]) == pad:
            if k > int(starts[node]):
                k -= 1
                continue
            parent = int(layout.node_parent[node])
            if parent < 0:
                break  # the first packed token of the root (position 0 when nothing is cached)
            node = parent
            k = int(starts[node] + layout.node_len[node] - 1)
        readout[c] = k
    return readout


class _Runner:
    """Runs the passes of one layout (on top of a prompt KV cache of ``cached`` tokens when > 0)."""

    def __init__(
        self,
        model: nn.Module,
        info: RewardModelInfo,
        read_scores: Callable[[torch.Tensor], torch.Tensor],
        max_tokens: int,
        packed_base: nn.Module | None,
        stats: ScorerStats,
        attention: str = "kernel",
    ) -> None:
        self.model, self.info, self.read_scores = model, info, read_scores
        self.max_tokens, self.packed_base, self.stats = max_tokens, packed_base, stats
        self.attention = attention

    def __call__(
        self, games: list[Game], layout: PackLayout, cached: int, max_tokens: int | None = None
    ) -> list[torch.Tensor]:
        """Scores per game of ``layout``'s passes of at most ``max_tokens`` tokens (the runner's by default)."""
        max_tokens = max_tokens or self.max_tokens
        device, dtype = model_device(self.model), model_dtype(self.model)
        base, stats = self.info.base, self.stats
        source = torch.cat([g.source for g in games])
        packed_ids = source[layout.gather]
        # Score each distinct coalition once (duplicates then agree bit for bit).
        n_distinct = layout.n_distinct
        last = torch.zeros(n_distinct, dtype=torch.int64).scatter_(0, layout.inverse, layout.readout)
        readout = _readouts(layout, last, packed_ids, self.info.pad_token_id)
        # A coalition is delivered by the pass that owns the node holding its (unadjusted) last token.
        last_node = torch.searchsorted(layout.node_start, last, right=True) - 1
        passes = split_passes(layout, max_tokens)
        node_pass = torch.full((layout.n_nodes,), -1, dtype=torch.int64)
        for p_idx, p in enumerate(passes):
            node_pass[p.owned] = p_idx
        distinct_pass = node_pass[last_node]
        values = torch.empty(n_distinct, dtype=torch.float64)

        cache = None
        cache_kwargs: dict[str, Any] = {}  # the cache under the keyword this transformers takes
        if cached:
            from transformers import DynamicCache

            # Layers of the full kind keep the whole prompt: a sliding-window layer's own cache would drop the keys
            # past its window, while the passes read every cached key by its position (the tree attention) or
            # append more tokens than the window and crop them again (the dense mask).
            cache = DynamicCache()
            cache_kwargs = {cache_keyword(base): cache}
            prompt = games[0].source[:cached]
            for s in range(0, cached, max_tokens):
                e = min(cached, s + max_tokens)
                # the prompt is one plain sequence: the model's own masks, its sliding windows included
                base(
                    input_ids=prompt[None, s:e].to(device),
                    position_ids=torch.arange(s, e, device=device)[None],
                    use_cache=True,
                    **cache_kwargs,
                )
                if cache.get_seq_length() != e:
                    raise RuntimeError(
                        f"{type(base).__name__} did not fill the prompt KV cache passed as {list(cache_kwargs)} "
                        f"({cache.get_seq_length()} of {e} tokens)"
                    )
                stats.add_forward(e - s)
                stats.prompt_cache_tokens += e - s

        for p_idx, p in enumerate(passes):
            n = p.n_tokens
            ids = packed_ids[p.tokens][None].to(device)
            positions = layout.position_ids[p.tokens][None].to(device)
            if self.packed_base is not None:
                # The cache is only read by tree attention: nothing to crop.
                hidden = packed_forward(
                    self.packed_base, ids, positions, p.horizon, past_key_values=cache, attention=self.attention
                )[0]
            else:
                hidden = base(
                    input_ids=ids,
                    position_ids=positions,
                    attention_mask=dense_mask(p.horizon.to(device), cached, dtype=dtype)[None, None],
                    use_cache=cache is not None,
                    **cache_kwargs,
                ).last_hidden_state[0]
                if cache is not None:
                    cache.crop(-n)  # drop this pass's keys/values; the prompt stays for the next pass
            members = (distinct_pass == p_idx).nonzero().flatten()
            rows = torch.searchsorted(p.tokens, readout[members]).to(device)
            assert self.info.head is not None
            values[members] = self.read_scores(self.info.head(hidden[rows]))
            stats.add_forward(n)

        counts = [g.n_coalitions for g in games]
        return list(values[layout.inverse].split(counts))
