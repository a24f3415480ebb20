"""Shapley and Owen value estimators for a batched value function.

A value function takes a bool tensor ``[C, n]`` of coalitions and returns ``C`` values; an estimator plans
every coalition it needs up front (:func:`plan`), so a caller can score them all in one packed pass, and
turns their values into Shapley values (:meth:`ShapleyPlan.finish`). :func:`shapley` does both.
"""

from scar.shapley.adaptive import ADAPTIVE_METHODS, AdaptiveRun
from scar.shapley.base import MAX_PLAN_ENTRIES, MAX_PLAN_ROWS, ShapleyPlan, ShapleyResult, ValueFn
from scar.shapley.estimate import DEFAULT_METHOD, METHODS, plan, shapley
from scar.shapley.exact import EXACT_MAX_PLAYERS
from scar.shapley.kernel import KERNEL_MAX_PLAYERS, kernel_default_budget
from scar.shapley.owen import OWEN_EXACT_MAX_TERMS
from scar.shapley.permutation import DEFAULT_PERMUTATIONS

__all__ = [
    "ADAPTIVE_METHODS",
    "AdaptiveRun",
    "DEFAULT_METHOD",
    "DEFAULT_PERMUTATIONS",
    "EXACT_MAX_PLAYERS",
    "KERNEL_MAX_PLAYERS",
    "MAX_PLAN_ENTRIES",
    "MAX_PLAN_ROWS",
    "METHODS",
    "OWEN_EXACT_MAX_TERMS",
    "ShapleyPlan",
    "ShapleyResult",
    "ValueFn",
    "kernel_default_budget",
    "plan",
    "shapley",
]
