"""Settings of the coalition scorer and the cost report of each call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scar._checks import as_int, check_choice, check_positive_int

__all__ = [
    "ScorerConfig",
    "ScorerStats",
    "BACKENDS",
    "REMOVALS",
    "ATTENTIONS",
    "DEFAULT_PASS_TOKENS",
    "DEFAULT_MASK_PASS_TOKENS",
    "VERIFY_TOLERANCE",
]

BACKENDS = ("auto", "loop", "batched", "trie")
"""``loop``: each coalition's deleted sequence alone (the reference); ``batched``: deleted sequences in
padded batches; ``trie``: every coalition in one packed prefix tree; ``auto``: ``trie`` where it is exact."""
REMOVALS = ("delete", "replace")
"""How a player is removed: its tokens deleted (positions compacted) or replaced by a filler token."""
ATTENTIONS = ("auto", "kernel", "flex", "mask")
"""How the ``trie`` backend applies the packed mask: the tree-attention kernel, PyTorch's FlexAttention with a
block mask built from the layout, or a dense additive mask."""
DEFAULT_PASS_TOKENS = 8192
DEFAULT_MASK_PASS_TOKENS = 1024
"""The dense mask grows with the square of the pass length, so on that path several short passes beat a
long one; ``bench/RESULTS.md`` has the measurement."""
VERIFY_TOLERANCE = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}
"""``(absolute, relative)`` tolerance of the exactness check per model dtype: a packed score ``a`` agrees
with the plain score ``b`` when ``|a - b| <= absolute + relative * |b|``. The packed forward sums in another
order than the plain one, so scores differ by the dtype's rounding, and no more; in float16 and bfloat16 that
rounding has rare large outliers on inputs where the model is ill-conditioned, which the check tolerates
once per call (:attr:`ScorerConfig.verify`)."""


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
            model that supports attention backends), ``"flex"`` (``torch.nn.attention.flex_attention``
            through the same registry, with a ``BlockMask`` built from the pack's layout in O(N); compiled
            on first use, which takes seconds to minutes once per process and shape family, see
            :data:`scar_kernels.flex.COMPILE_BY_DEVICE`; float32/float16/bfloat16 models),
            ``"mask"`` (a dense float mask, O(N^2) memory per pass) or ``"auto"`` (the mask where the
            kernel cannot run; on CUDA the faster of the kernel and ``"flex"``, timed once per process for
            the model's head layout by :func:`scar_kernels.ops.fastest_tree_attention`; on CPU the
            kernel, ahead of compiled FlexAttention in ``bench/RESULTS.md``). All are exact.
        max_tokens_per_pass: token budget of one forward (batch x padded length for ``batched``, packed
            length for ``trie``); None: :data:`DEFAULT_PASS_TOKENS`, or :data:`DEFAULT_MASK_PASS_TOKENS`
            for a trie on the dense-mask path. Memory is bounded by it, never by the number of coalitions
            (a trie that cannot run on the prompt's KV cache, :attr:`CoalitionScorer.cache_prompt` False,
            needs one whole sequence per pass and raises a smaller budget to that).
        filler_id: the filler token of ``removal="replace"`` (None: the config's pad id, else its mask id).
        score_fn: maps logits ``[B, num_labels]`` to scores ``[B]``; required when a model has more than
            two labels (one label: that logit; two: ``logit[1] - logit[0]``), and for a model that is not a
            ``*ForSequenceClassification`` (it then receives the model's logits of one unpadded sequence,
            ``[1, ...]``, and only the ``loop`` backend runs).
        verify: the runtime exactness check: after every call of a fast backend (``batched``, ``trie``), this
            many of its coalitions (drawn at random) are scored again by plain deletion, and a difference
            beyond the model dtype's tolerance (:data:`VERIFY_TOLERANCE`) raises
            :class:`~scar.scoring.scorer.ExactnessError`. In float16 and bfloat16 one disagreeing
            coalition per call is re-checked against more and tolerated when they agree (rounding on an
            ill-conditioned input, :attr:`ScorerStats.verify_tolerated`). 0 turns it off. Its cost is in
            :attr:`ScorerStats.verify_tokens`.
    """

    backend: str = "auto"
    removal: str = "delete"
    attention: str = "auto"
    max_tokens_per_pass: int | None = None
    filler_id: int | None = None
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    verify: int = 1

    def __post_init__(self) -> None:
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.removal, "removal", REMOVALS)
        check_choice(self.attention, "attention", ATTENTIONS)
        if self.max_tokens_per_pass is not None:
            self.max_tokens_per_pass = check_positive_int(self.max_tokens_per_pass, "max_tokens_per_pass")
        if self.score_fn is not None and not callable(self.score_fn):
            raise TypeError(f"score_fn must be callable, got {type(self.score_fn).__name__}")
        self.verify = as_int(self.verify, "verify")
        if self.verify < 0:
            raise ValueError(f"verify must be >= 0 (coalitions re-scored per call), got {self.verify}")


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
        trie_tokens: node-token count of the coalition trie with whole prompts as roots, one root per
            distinct prompt (responses to the same prompt share it): the lower bound on tokens computed for
            these coalitions.
        peak_pack_tokens: the longest single forward, in tokens (batch x padded length for batches).
        plain_tokens: sum over coalitions of ``prompt + kept + suffix``: the cost of scoring each
            coalition on its own.
        prompt_cache_tokens: prompt tokens computed into a KV cache (trie only; part of tokens_computed).
        batched_coalitions: coalitions a ``trie`` scorer on the dense mask scored in padded batches because their
            sequence reaches the model's sliding window (the dense mask holds no window; the tree attention applies
            it, so on ``kernel`` and ``flex`` this stays 0; part of ``coalitions``).
        rescored: coalitions whose packed score was not finite and that were scored again by plain deletion
            (a non-finite hidden state stays confined to the coalitions that contain it; part of
            tokens_computed).
        verify_coalitions, verify_tokens: what the exactness check re-scored (not in tokens_computed).
        verify_max_error: the largest difference it saw.
        verify_tolerated: coalitions (float16/bfloat16 only, at most one per call) beyond the tolerance that
            the check let through because the coalitions it re-checked after them agreed.
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
    batched_coalitions: int = 0
    rescored: int = 0
    verify_coalitions: int = 0
    verify_tokens: int = 0
    verify_max_error: float = 0.0
    verify_tolerated: int = 0

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
