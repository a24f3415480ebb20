"""SCAR: dense per-token RLHF rewards by Shapley credit assignment.

The reward model's single score for a response is split among the response's tokens, spans or
sentences by their Shapley values (Cao, Zhang, Chang, Precup, arXiv 2505.20417). All coalitions of a
batch are scored in one packed reward-model pass that shares the prompt and every common prefix
through a prefix tree.

Main entry points::

    scar.SCAR(reward_model, tokenizer, players="span", method="kernel")(prompts, responses)
    scar.CoalitionScorer(model, backend="auto").score(prompt_ids, response_ids, players, coalitions)
    scar.shapley_values(scorer, prompt_ids, response_ids, players, method="kernel", budget=544)
    scar.shapley_values_many(scorer, prompts_ids, responses_ids, players_list, budget=544)  # one forest
    scar.shapley(value_fn, n_players, method="exact")

Names are imported lazily so that ``import scar`` stays fast (transformers is loaded on first use);
the compiled extension is looked for at import, which warns once, naming the slower paths, when it is
not built.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "shapley": "scar.estimators",
    "plan": "scar.estimators",
    "ShapleyPlan": "scar.estimators",
    "ShapleyResult": "scar.estimators",
    "METHODS": "scar.estimators",
    "EXACT_MAX_PLAYERS": "scar.estimators",
    "Player": "scar.players",
    "segment": "scar.players",
    "segment_text": "scar.players",
    "segment_ids": "scar.players",
    "validate_players": "scar.players",
    "hierarchy": "scar.players",
    "CoalitionScorer": "scar.scorer",
    "ScorerStats": "scar.scorer",
    "shapley_values": "scar.attribution",
    "shapley_values_many": "scar.attribution",
    "ResponseError": "scar.attribution",
    "DenseRewards": "scar.rewards",
    "shape_rewards": "scar.rewards",
    "sparse_rewards": "scar.rewards",
    "map_to_tokens": "scar.rewards",
    "SCAR": "scar.rewarder",
    "attention_credit": "scar.baselines",
    "sparse_credit": "scar.baselines",
    "has_extension": "scar._ext",
    "DenseRewardFunction": "scar.integrations.trl",
    "DenseGRPOTrainer": "scar.integrations.trl",
}
_SUBMODULES = ("players", "estimators", "trie", "models", "scorer", "attribution", "rewards",
               "rewarder", "baselines", "heatmap", "integrations", "data", "cli")

__all__ = sorted(_EXPORTS) + ["__version__"]


importlib.import_module("scar._ext").load()


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
    from scar._ext import has_extension
    from scar.attribution import ResponseError, shapley_values, shapley_values_many
    from scar.baselines import attention_credit, sparse_credit
    from scar.estimators import EXACT_MAX_PLAYERS, METHODS, ShapleyPlan, ShapleyResult, plan, shapley
    from scar.players import Player, hierarchy, segment, segment_ids, segment_text, validate_players
    from scar.rewarder import SCAR
    from scar.integrations.trl import DenseGRPOTrainer, DenseRewardFunction
    from scar.rewards import DenseRewards, map_to_tokens, shape_rewards, sparse_rewards
    from scar.scorer import CoalitionScorer, ScorerStats
