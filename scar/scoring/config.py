"""Settings of the coalition scorer and the cost report of each call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scar._checks import check_choice, check_positive_int

__all__ = [
    "ScorerConfig",
    "ScorerStats",
    "BACKENDS",
    "REMOVALS",
    "ATTENTIONS",
    "DEFAULT_PASS_TOKENS",
    "DEFAULT_MASK_PASS_TOKENS",
]

BACKENDS = ("auto", "loop", "batched", "trie")
"""``loop``: each coalition's deleted sequence alone (the reference); ``batched``: deleted sequences in
padded batches; ``trie``: every coalition in one packed prefix tree; ``auto``: ``trie`` where it is exact."""
REMOVALS = ("delete", "replace")
"""How a player is removed: its tokens deleted (positions compacted) or replaced by a filler token."""
ATTENTIONS = ("auto", "kernel", "mask")
"""How the ``trie`` backend applies the packed mask: the tree-attention kernel, or a dense additive mask."""
DEFAULT_PASS_TOKENS = 8192
DEFAULT_MASK_PASS_TOKENS = 1024
"""The dense mask grows with the square of the pass length, so on that path several short passes beat a
long one; ``bench/RESULTS.md`` has the measurement."""


@dataclass
class ScorerConfig:
    """How a :class:`~scar.scoring.CoalitionScorer` scores coalitions.

    Attributes:
        backend: one of :data:`BACKENDS`. ``"auto"`` picks ``trie`` for causal decoders that
            :func:`scar.scoring.model.trie_exactness` accepts and ``batched`` otherwise (with a warning
            saying why for decoders); ``"trie"`` refuses, with the reason, a model it cannot serve exactly.
        removal: one of :data:`REMOVALS`.
        attention: one of :data:`ATTENTIONS`: ``"kernel"`` (the ``scar::tree_attention`` op through
            transformers' attention registry; needs the compiled kernels on CPU or Triton on CUDA, and a
            model that supports attention backends), ``"mask"`` (a dense float mask, O(N^2) memory per pass)
            or ``"auto"`` (the kernel where it can run, else the mask). Both are exact.
        max_tokens_per_pass: token budget of one forward (batch x padded length for ``batched``, packed
            length for ``trie``); None: :data:`DEFAULT_PASS_TOKENS`, or :data:`DEFAULT_MASK_PASS_TOKENS`
            for a trie on the dense-mask path. Memory is bounded by it, never by the number of coalitions.
        filler_id: the filler token of ``removal="replace"`` (None: the config's pad id, else its mask id).
        score_fn: maps logits ``[B, num_labels]`` to scores ``[B]``; required when a model has more than
            two labels (one label: that logit; two: ``logit[1] - logit[0]``).
    """

    backend: str = "auto"
    removal: str = "delete"
    attention: str = "auto"
    max_tokens_per_pass: int | None = None
    filler_id: int | None = None
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.removal, "removal", REMOVALS)
        check_choice(self.attention, "attention", ATTENTIONS)
        if self.max_tokens_per_pass is not None:
            self.max_tokens_per_pass = check_positive_int(self.max_tokens_per_pass, "max_tokens_per_pass")
        if self.score_fn is not None and not callable(self.score_fn):
            raise TypeError(f"score_fn must be callable, got {type(self.score_fn).__name__}")


@dataclass
class ScorerStats:
    """Cost of one ``score``/``score_many`` call.

    Attributes:
        backend: the backend that ran (``loop``, ``batched`` or ``trie``).
        coalitions: number of coalitions scored (duplicates included).
        distinct_coalitions: number of distinct (response, coalition) pairs.
        tokens_computed: token-forwards actually run (padding, recomputed ancestors and cached prompt
            tokens included).
        passes: number of model forwards (cached-prompt prefill chunks included).
        trie_tokens: node-token count of the coalition trie with whole prompts as roots: the lower bound
            on tokens computed for these coalitions.
        peak_pack_tokens: the longest single forward, in tokens (batch x padded length for batches).
        plain_tokens: sum over coalitions of ``prompt + kept + suffix``: the cost of scoring each
            coalition on its own.
        prompt_cache_tokens: prompt tokens computed into a KV cache (trie only; part of tokens_computed).
    """

    backend: str
    coalitions: int = 0
    distinct_coalitions: int = 0
    tokens_computed: int = 0
    passes: int = 0
    trie_tokens: int = 0
    peak_pack_tokens: int = 0
    plain_tokens: int = 0
    prompt_cache_tokens: int = 0

    @property
    def ratio_to_lower_bound(self) -> float:
        """``tokens_computed / trie_tokens`` (1.0 is optimal)."""
        return self.tokens_computed / self.trie_tokens if self.trie_tokens else float("nan")

    @property
    def savings_vs_plain(self) -> float:
        """``plain_tokens / tokens_computed``: how many times fewer tokens than one-by-one scoring."""
        return self.plain_tokens / self.tokens_computed if self.tokens_computed else float("nan")

    def add_forward(self, tokens: int) -> None:
        """Count one model forward of ``tokens`` token-forwards."""
        self.tokens_computed += tokens
        self.passes += 1
        self.peak_pack_tokens = max(self.peak_pack_tokens, tokens)
