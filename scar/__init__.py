"""SCAR: dense per-token RLHF rewards by Shapley credit assignment.

The reward model's single score for a response is split among the response's tokens, spans or
sentences by their Shapley values (Cao, Zhang, Chang, Precup, arXiv 2505.20417). All coalitions of a
batch are scored in one packed reward-model pass that shares the prompt and every common prefix
through a prefix tree.

The package is layered; each layer imports only the ones above it in this list:

- :mod:`scar.game`: players (tokens, spans, sentences, their hierarchy) and the one tokenization and
  character-offset convention;
- :mod:`scar.shapley`: the estimators (value function in, Shapley values out);
- :mod:`scar.scoring`: :class:`CoalitionScorer`, which scores coalitions with a reward model (backends
  ``loop``, ``batched``, ``trie``) on top of the kernels of :mod:`scar_kernels`;
- :mod:`scar.credit`: Shapley values of responses, dense rewards, :class:`SCAR`, the baselines and the
  per-token group advantages;
- :mod:`scar.integrations` (TRL), :mod:`scar.demo` and :mod:`scar.cli`.

Main entry points::

    scar.SCAR(reward_model, tokenizer, players="span")(prompts, responses)       # -> DenseRewards
    scar.CoalitionScorer(model).score(prompt_ids, response_ids, players, coalitions)
    scar.shapley_values(scorer, prompt_ids, response_ids, players, method="kernel")
    scar.shapley(value_fn, n_players, method="exact")

Names are imported lazily, so ``import scar`` stays fast (transformers is loaded on first use). The
compiled kernels are looked for at import, which warns once, naming the slower paths, when they are
not built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scar_kernels.ops import has_extension

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "shapley": "scar.shapley",
    "plan": "scar.shapley",
    "ShapleyPlan": "scar.shapley",
    "ShapleyResult": "scar.shapley",
    "METHODS": "scar.shapley",
    "EXACT_MAX_PLAYERS": "scar.shapley",
    "Player": "scar.game.players",
    "segment": "scar.game.players",
    "segment_text": "scar.game.players",
    "segment_ids": "scar.game.players",
    "validate_players": "scar.game.players",
    "hierarchy": "scar.game.players",
    "map_to_tokens": "scar.game.tokens",
    "CoalitionScorer": "scar.scoring",
    "ScorerConfig": "scar.scoring",
    "ScorerStats": "scar.scoring",
    "shapley_values": "scar.credit.attribution",
    "shapley_values_many": "scar.credit.attribution",
    "ResponseError": "scar.credit.attribution",
    "DenseRewards": "scar.credit.rewards",
    "shape_rewards": "scar.credit.rewards",
    "sparse_rewards": "scar.credit.rewards",
    "CreditConfig": "scar.credit.config",
    "SCAR": "scar.credit.rewarder",
    "AmortizedSCAR": "scar.credit.amortized",
    "AmortizedConfig": "scar.credit.amortized",
    "AttentionCredit": "scar.credit.baselines",
    "SparseCredit": "scar.credit.baselines",
    "attention_credit": "scar.credit.baselines",
    "sparse_credit": "scar.credit.baselines",
    "dense_group_advantages": "scar.credit.advantages",
}
_SUBMODULES = ("game", "shapley", "scoring", "credit", "integrations", "demo", "heatmap", "cli")

__all__ = [
    "AmortizedConfig",
    "AmortizedSCAR",
    "AttentionCredit",
    "CoalitionScorer",
    "CreditConfig",
    "DenseRewards",
    "EXACT_MAX_PLAYERS",
    "METHODS",
    "Player",
    "ResponseError",
    "SCAR",
    "ScorerConfig",
    "ScorerStats",
    "ShapleyPlan",
    "ShapleyResult",
    "SparseCredit",
    "__version__",
    "attention_credit",
    "dense_group_advantages",
    "has_extension",
    "hierarchy",
    "map_to_tokens",
    "plan",
    "segment",
    "segment_ids",
    "segment_text",
    "shape_rewards",
    "shapley",
    "shapley_values",
    "shapley_values_many",
    "sparse_credit",
    "sparse_rewards",
    "validate_players",
]

has_extension()  # warns once when the compiled kernels are not built


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"scar.{name}")
    raise AttributeError(f"module 'scar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from scar.credit.advantages import dense_group_advantages
    from scar.credit.amortized import AmortizedConfig, AmortizedSCAR
    from scar.credit.attribution import ResponseError, shapley_values, shapley_values_many
    from scar.credit.baselines import AttentionCredit, SparseCredit, attention_credit, sparse_credit
    from scar.credit.config import CreditConfig
    from scar.credit.rewarder import SCAR
    from scar.credit.rewards import DenseRewards, shape_rewards, sparse_rewards
    from scar.game.players import Player, hierarchy, segment, segment_ids, segment_text, validate_players
    from scar.game.tokens import map_to_tokens
    from scar.scoring import CoalitionScorer, ScorerConfig, ScorerStats
    from scar.shapley import EXACT_MAX_PLAYERS, METHODS, ShapleyPlan, ShapleyResult, plan, shapley
