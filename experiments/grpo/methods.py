"""The credit methods the GRPO experiment compares: a name, what it is, and how to build its provider.

Every provider has the call signature of :class:`scar.SCAR`, ``(prompts, responses, completion_ids) ->
DenseRewards``, and reads the world's reward model with its template (``BOS ⊕ prompt ⊕ response ⊕ EOS``), so
all methods train on the same sequence reward ``r``. ``sparse`` trains with TRL's ``GRPOTrainer``, every other
method with :class:`scar.integrations.trl.DenseGRPOTrainer` (the library's default advantages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scar.credit.amortized import AmortizedSCAR
from scar.credit.baselines import AttentionCredit, SparseCredit
from scar.credit.rewarder import SCAR

__all__ = ["Method", "METHODS", "method", "LEVERS", "COMPARISON"]


@dataclass(frozen=True)
class Method:
    """One credit method of the experiment.

    Attributes:
        name: its name in tables and plots.
        description: what it is, in a few words.
        dense: trains with per-token advantages (``DenseGRPOTrainer``); False for plain GRPO.
        settings: keyword arguments of the provider (SCAR's :class:`~scar.credit.config.CreditConfig` and
            :class:`~scar.scoring.ScorerConfig` fields, or the baselines' arguments).
        build: ``build(reward_model, tokenizer, seed, **settings) -> provider``.
        trainer: extra :class:`~scar.integrations.trl.DenseGRPOConfig` fields (the advantages' settings).
    """

    name: str
    description: str
    dense: bool
    build: Callable[..., Any]
    settings: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def make(self, reward_model: Any, tokenizer: Any, seed: int) -> Any:
        """The method's credit provider for the world's reward model (EOS is the template's suffix)."""
        return self.build(reward_model, tokenizer, seed, suffix_ids=[tokenizer.eos_token_id], **self.settings)


def _sparse(rm: Any, tok: Any, seed: int, **kw: Any) -> Any:
    return SparseCredit(rm, tok, **kw)


def _abc(rm: Any, tok: Any, seed: int, **kw: Any) -> Any:
    return AttentionCredit(rm, tok, **kw)


def _scar(rm: Any, tok: Any, seed: int, **kw: Any) -> Any:
    return SCAR(rm, tok, seed=seed, progress=False, **kw)


def _amortized(rm: Any, tok: Any, seed: int, **kw: Any) -> Any:
    return AmortizedSCAR(rm, tok, seed=seed, progress=False, **kw)


def _scar_for_training(rm: Any, tok: Any, seed: int, **kw: Any) -> Any:
    return SCAR.for_training(rm, tok, seed=seed, progress=False, **kw)


def _coalitions(per_player: int) -> Callable[[int], int]:
    """A ``kernel`` budget of ``per_player * (n + 1)`` coalitions for a response of ``n`` players (even)."""

    def budget(n: int) -> int:
        b = per_player * (n + 1)
        return b + b % 2

    budget.__name__ = f"{per_player}(n+1)"
    return budget


_SPAN = {"players": "span"}
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sparse", "GRPO on the sequence reward r", False, _sparse),
        Method("abc", "attention-based credit, beta = 1 (all of r by attention)", True, _abc, {"beta": 1.0}),
        Method(
            "abc-0.5", "attention-based credit, beta = 0.5 (half of r on the last token)", True, _abc, {"beta": 0.5}
        ),
        Method(
            "scar-perm16",
            "SCAR, spans, 16 permutations (the earlier experiment's setting)",
            True,
            _scar,
            {**_SPAN, "method": "permutation", "budget": 16},
        ),
        Method(
            "scar-perm4", "SCAR, spans, 4 permutations", True, _scar, {**_SPAN, "method": "permutation", "budget": 4}
        ),
        Method(
            "scar-perm2",
            "SCAR, spans, 2 permutations (one antithetic pair)",
            True,
            _scar,
            {**_SPAN, "method": "permutation", "budget": 2},
        ),
        Method(
            "scar-perm2-eos-credit",
            "as scar-perm2, the ending EOS token with its own return-to-go advantage (eos_advantage='credit')",
            True,
            _scar,
            {**_SPAN, "method": "permutation", "budget": 2},
            {"eos_advantage": "credit"},
        ),
        Method(
            "scar-kernel-1",
            "SCAR, spans, KernelSHAP with n+1 coalitions",
            True,
            _scar,
            {**_SPAN, "method": "kernel", "budget": _coalitions(1)},
        ),
        Method(
            "scar-kernel-2",
            "SCAR, spans, KernelSHAP with 2(n+1) coalitions",
            True,
            _scar,
            {**_SPAN, "method": "kernel", "budget": _coalitions(2)},
        ),
        Method(
            "scar-kernel-4",
            "SCAR, spans, KernelSHAP with 4(n+1) coalitions",
            True,
            _scar,
            {**_SPAN, "method": "kernel", "budget": _coalitions(4)},
        ),
        Method("scar-default", "SCAR with the library's defaults (kernel, 32(n+1) coalitions)", True, _scar, _SPAN),
        Method(
            "scar-owen",
            "SCAR, Owen values over sentences > spans, 2 permutations",
            True,
            _scar,
            {**_SPAN, "method": "owen", "budget": 2},
        ),
        Method(
            "scar-adaptive",
            "SCAR, spans, 4 permutations, then more in rounds until every stderr <= 0.5 |r - v(empty)| (at most 16)",
            True,
            _scar,
            {**_SPAN, "method": "permutation", "budget": 4, "tol": 0.5, "max_budget": 16},
        ),
        Method(
            "scar-sentence-perm2",
            "SCAR, sentence players, 2 permutations (exact up to 3 sentences)",
            True,
            _scar,
            {"players": "sentence", "method": "permutation", "budget": 2},
        ),
        Method(
            "scar-amortized",
            "SCAR, spans, amortized: a head on the reward model's hidden states, "
            "trained on one antithetic permutation pair of 25% of the responses",
            True,
            _amortized,
            _SPAN,
        ),
        Method(
            "scar-amortized-0.5",
            "as scar-amortized, 50% of the responses labelled",
            True,
            _amortized,
            {**_SPAN, "label_fraction": 0.5},
        ),
        Method("scar-training", "SCAR.for_training: the recommended configuration for RL", True, _scar_for_training),
        Method(
            "scar-training-fp32",
            "SCAR.for_training with the coalitions scored in the reward model's own float32 (score_dtype=None)",
            True,
            _scar_for_training,
            {"score_dtype": None},
        ),
    )
}

LEVERS = (
    "sparse",
    "scar-perm16",
    "scar-perm4",
    "scar-perm2",
    "scar-perm2-eos-credit",
    "scar-kernel-4",
    "scar-kernel-2",
    "scar-kernel-1",
    "scar-owen",
    "scar-amortized",
    "scar-amortized-0.5",
)
"""The budget-versus-benefit sweep."""

COMPARISON = ("sparse", "abc", "abc-0.5", "scar-training", "scar-amortized-0.5")
"""The headline comparison: GRPO, both ABC settings, the recommended SCAR configuration and amortised credit."""


def method(name: str) -> Method:
    """The method called ``name``; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
