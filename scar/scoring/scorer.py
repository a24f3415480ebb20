""":class:`CoalitionScorer`: scores coalitions of response players with a sequence-classification reward model.

The facade inspects the model once, picks the backend (``loop``, ``batched`` or ``trie``; see
:data:`scar.scoring.config.BACKENDS`), normalises each call's inputs once (:mod:`scar.scoring.games`) and
reports the cost of every call in :attr:`CoalitionScorer.stats`. Scores are float64 (computed in the
model's dtype) so that the Shapley sums are not limited by float32 accumulation.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scar.game.tokens import IdsLike, as_token_ids
from scar.scoring.batched import score_batched
from scar.scoring.config import DEFAULT_MASK_PASS_TOKENS, DEFAULT_PASS_TOKENS, ScorerConfig, ScorerStats
from scar.scoring.games import Game, build_game, pack_games
from scar.scoring.loop import score_loop
from scar.scoring.model import RewardModelInfo, evaluation_mode, inspect_model, model_device, trie_exactness
from scar.scoring.trie import score_trie
from scar_kernels.ops import implementation

__all__ = ["CoalitionScorer"]

logger = logging.getLogger(__name__)


def _tree_kernel_support(base: nn.Module) -> tuple[bool, str]:
    """Whether the tree-attention kernel can run ``base``'s attention: (ok, reason when not)."""
    if not getattr(base, "_supports_attention_backend", False):
        return False, f"{type(base).__name__} does not support transformers' attention registry"
    device = model_device(base)
    impl = implementation("tree_attention", device)
    if device.type == "cpu":
        return (True, "") if impl == "c++" else (False, "the compiled kernels (scar_kernels._C) are not built")
    if device.type == "cuda":
        return (True, "") if impl == "triton" else (False, "Triton is not available")
    return False, f"no tree-attention kernel for device {device.type!r}"


class CoalitionScorer:
    """Scores coalitions of response players with a ``transformers`` ``*ForSequenceClassification`` model.

    ``CoalitionScorer(model, backend="trie")`` and ``CoalitionScorer(model, ScorerConfig(backend="trie"))``
    are the same; keyword arguments override the fields of ``config`` (see :class:`ScorerConfig`).

    Args:
        model: a ``*ForSequenceClassification`` model (decoder or encoder).
        config: the settings (defaults when None).
        **overrides: fields of :class:`ScorerConfig`.

    Attributes:
        config: the settings as given; ``backend``, ``attention``, ``max_tokens_per_pass`` and
            ``filler_id`` hold what they resolved to.
        info: what :func:`scar.scoring.model.inspect_model` found.
        stats: the :class:`ScorerStats` of the last call.

    Raises:
        TypeError / ValueError: bad settings, a model the chosen backend cannot serve, or a model with
            more than two labels and no ``score_fn``.
    """

    def __init__(self, model: nn.Module, config: ScorerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = ScorerConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, ScorerConfig):
            raise TypeError(f"config must be a ScorerConfig, got {type(config).__name__}")
        self.config = config
        self.model = model
        self.info: RewardModelInfo = inspect_model(model)
        if config.score_fn is None and self.info.num_labels > 2:
            raise ValueError(f"the model has {self.info.num_labels} labels: pass score_fn(logits) -> scores")
        if config.removal == "replace":
            filler = (
                config.filler_id
                if config.filler_id is not None
                else (self.info.pad_token_id if self.info.pad_token_id is not None else self.info.mask_token_id)
            )
            if filler is None:
                raise ValueError("removal='replace' needs filler_id: the model config has no pad or mask token id")
            self.filler_id: int | None = as_token_ids([filler], "filler_id", vocab_size=self.info.vocab_size)[0]
        else:
            self.filler_id = None
        self.backend = self._resolve_backend(config.backend)
        self.attention = self._resolve_attention(config.attention)
        default = DEFAULT_MASK_PASS_TOKENS if self.attention == "mask" else DEFAULT_PASS_TOKENS
        self.max_tokens_per_pass: int = config.max_tokens_per_pass or default
        self.stats = ScorerStats(backend=self.backend)

    @property
    def score_fn(self):
        """The config's ``score_fn`` (None: the model's one or two logits)."""
        return self.config.score_fn

    def _resolve_attention(self, attention: str) -> str:
        """The trie's attention path: ``kernel`` or ``mask`` (``none`` for the other backends)."""
        if self.backend != "trie":
            return "none"
        ok, reason = _tree_kernel_support(self.info.base)
        if attention == "kernel" and not ok:
            raise ValueError(f"attention='kernel' is not available: {reason}")
        if attention == "auto":
            if not ok:
                logger.info("CoalitionScorer: the trie uses a dense mask: %s", reason)
            return "kernel" if ok else "mask"
        return attention

    def _resolve_backend(self, backend: str) -> str:
        if backend == "loop":
            return backend
        if backend == "batched":
            if self.info.is_causal and self.info.head is None:
                raise ValueError(
                    f"backend='batched' needs the decoder's `score` head; "
                    f"{type(self.model).__name__} has none (use backend='loop')"
                )
            return backend
        ok, reason = trie_exactness(self.model)
        if backend == "trie":
            if not ok:
                raise ValueError(f"backend='trie' cannot score {type(self.model).__name__} exactly: {reason}")
            return backend
        if ok:
            return "trie"
        fallback = "batched" if (not self.info.is_causal or self.info.head is not None) else "loop"
        if self.info.is_causal:
            warnings.warn(f"CoalitionScorer: backend 'auto' uses {fallback!r}, not 'trie': {reason}", stacklevel=3)
        else:
            logger.info("CoalitionScorer: backend 'auto' uses %r: %s", fallback, reason)
        return fallback

    # ------------------------------------------------------------------ public API

    def score(
        self,
        prompt_ids: IdsLike,
        response_ids: IdsLike,
        players: object,
        coalitions: torch.Tensor,
        suffix_ids: IdsLike | None = None,
    ) -> torch.Tensor:
        """Score ``coalitions`` (bool ``[C, n_players]``) of one response; returns float64 ``[C]``.

        Args:
            prompt_ids: prompt token ids (>= 1 token; always kept).
            response_ids: response token ids (>= 1 token).
            players: sorted, non-overlapping ``(start, end)`` token ranges of the response (or
                :class:`scar.game.players.Player` objects, or an ``[n, 2]`` int tensor); tokens in no
                player are always kept.
            coalitions: bool ``[C, n_players]``; ``coalitions[c, j]`` keeps player ``j``.
            suffix_ids: tokens appended after the response (e.g. EOS); always kept.
        """
        return self.score_many(
            [prompt_ids], [response_ids], [players], [coalitions], None if suffix_ids is None else [suffix_ids]
        )[0]

    def score_many(
        self,
        prompts: Sequence[IdsLike],
        responses: Sequence[IdsLike],
        players: Sequence[object],
        coalitions: Sequence[torch.Tensor],
        suffixes: Sequence[IdsLike | None] | None = None,
    ) -> list[torch.Tensor]:
        """Score the coalitions of several responses at once (one forest for ``trie``).

        Each argument holds one entry per response, as in :meth:`score`. Returns one float64 ``[C_r]``
        tensor per response.
        """
        n = len(responses)
        if suffixes is None:
            suffixes = [None] * n
        if not (len(prompts) == len(players) == len(coalitions) == len(suffixes) == n):
            raise ValueError(
                f"prompts, responses, players, coalitions and suffixes need one entry per response; "
                f"got {len(prompts)}, {n}, {len(players)}, {len(coalitions)}, {len(suffixes)}"
            )
        games = [
            build_game(i, *args, vocab_size=self.info.vocab_size, filler_id=self.filler_id)
            for i, args in enumerate(zip(prompts, responses, players, coalitions, suffixes))
        ]
        lengths = [g.keep_mask().sum(1) for g in games]
        longest = max((int(ln.max()) for ln in lengths if ln.numel()), default=0)
        if self.info.max_positions is not None and longest > self.info.max_positions:
            raise ValueError(
                f"a coalition's sequence has {longest} tokens, more than the model's position "
                f"limit of {self.info.max_positions}"
            )
        stats = ScorerStats(
            backend=self.backend,
            coalitions=sum(g.n_coalitions for g in games),
            distinct_coalitions=sum(int(torch.unique(g.bits, dim=0).shape[0]) if g.n_coalitions else 0 for g in games),
            plain_tokens=sum(int(ln.sum()) for ln in lengths),
        )
        # The trie of whole prompts is the lower bound on tokens computed; the trie backend runs it.
        layout = pack_games(games, [0] * n) if stats.coalitions else None
        stats.trie_tokens = layout.n_tokens if layout is not None else 0
        with evaluation_mode(self.model):
            scores = self._run(games, layout, stats)
        self.stats = stats
        return scores

    def _read_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.info.score(logits, self.config.score_fn).cpu()

    def _run(self, games: list[Game], layout: Any, stats: ScorerStats) -> list[torch.Tensor]:
        if stats.coalitions == 0:
            return [torch.zeros(0, dtype=torch.float64) for _ in games]
        if self.backend == "loop":
            return score_loop(self.model, self.info, games, self._read_scores, stats)
        if self.backend == "batched":
            return score_batched(self.model, self.info, games, self.config.score_fn, self.max_tokens_per_pass, stats)
        return score_trie(
            self.model, self.info, games, layout, self._read_scores, self.max_tokens_per_pass, self.attention, stats
        )
