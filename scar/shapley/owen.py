"""Owen values for a nested partition of the players (e.g. sentences > spans > tokens).

Exact by enumeration for small trees; antithetic sampling of hierarchy-consistent permutations otherwise.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

from scar.shapley.base import PlanParts, ShapleyResult, bits, shapley_weights, with_ends
from scar.shapley.permutation import DEFAULT_PERMUTATIONS, antithetic_plan, check_permutation_budget

__all__ = ["OWEN_EXACT_MAX_TERMS", "owen_plan", "parse_hierarchy"]

OWEN_EXACT_MAX_TERMS = 2**18
"""``method="owen"`` without a budget is exact when the number of (player, coalition) terms of the
Owen formula, ``sum_i prod_levels 2**(siblings of i's ancestor at that level)``, is at most this;
larger trees are sampled with ``DEFAULT_PERMUTATIONS`` hierarchy-consistent permutations."""


def parse_hierarchy(hierarchy: Any, n: int) -> list:
    """Check that ``hierarchy`` is a nested partition of ``range(n)``; return it as nested lists."""

    seen: list[int] = []

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, (bool, np.bool_)):
            raise TypeError(f"hierarchy{path} is a bool ({node!r}); players are ints")
        if isinstance(node, (list, tuple)):
            if len(node) == 0:
                raise ValueError(f"hierarchy{path} is an empty group; every group needs a player")
            return [walk(child, f"{path}[{k}]") for k, child in enumerate(node)]
        try:
            player = operator.index(node)
        except TypeError:
            raise TypeError(
                f"hierarchy{path} must be a player index (int) or a list of them, got {type(node).__name__} ({node!r})"
            ) from None
        seen.append(player)
        return player

    if not isinstance(hierarchy, (list, tuple)):
        raise TypeError(f"hierarchy must be a (nested) list of player indices, got {type(hierarchy).__name__}")
    tree = walk(hierarchy, "")
    counts = np.bincount([p for p in seen if 0 <= p < n], minlength=n)
    outside = sorted({p for p in seen if not 0 <= p < n})
    problems = []
    if outside:
        problems.append(f"players out of range(0, {n}): {outside}")
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        problems.append(f"missing players: {missing}")
    duplicated = np.flatnonzero(counts > 1).tolist()
    if duplicated:
        problems.append(f"duplicated players: {duplicated}")
    if problems:
        raise ValueError(f"hierarchy must be a partition of range({n}); " + "; ".join(problems))
    return tree


def _members(node: Any) -> list[int]:
    return [node] if isinstance(node, int) else [p for child in node for p in _members(child)]


def _owen_paths(tree: list, n: int) -> list[list[tuple[torch.Tensor, int]]]:
    """For each player, the levels from the root down: ``(sibling member masks [m-1, n], m)``."""
    paths: list[list[tuple[torch.Tensor, int]]] = [[] for _ in range(n)]

    def walk(node: list, above: list[tuple[torch.Tensor, int]]) -> None:
        groups = torch.zeros(len(node), n, dtype=torch.bool)
        for k, child in enumerate(node):
            groups[k, _members(child)] = True
        for k, child in enumerate(node):
            level = above + [(torch.cat([groups[:k], groups[k + 1 :]]), len(node))]
            if isinstance(child, int):
                paths[child] = level
            else:
                walk(child, level)

    walk(tree, [])
    return paths


def _owen_terms(tree: list) -> int:
    """Terms of the exact Owen formula: sum over players of prod over levels of 2**(siblings)."""

    def walk(node: list, factor: int) -> int:
        below = factor * 2 ** (len(node) - 1)
        return sum(below if isinstance(child, int) else walk(child, below) for child in node)

    return walk(tree, 1)


def _owen_exact(n: int, paths: list) -> PlanParts:
    """Plan rows, budget and solver of the exact Owen values.

    Owen value of player i: sum over one sibling subset R_l per level (the groups that come before
    i's group in a random consistent order) of prod_l |R_l|! (m_l-1-|R_l|)! / m_l! times i's
    marginal contribution to the union of the R_l.
    """
    befores, weights = [], []
    for path in paths:
        coal = torch.zeros(1, n, dtype=torch.bool)
        weight = torch.ones(1, dtype=torch.float64)
        for siblings, m in path:
            pick = bits(torch.arange(2 ** (m - 1), dtype=torch.int64), m - 1)
            part = (pick[:, :, None] & siblings[None, :, :]).any(1)  # union of picked groups
            w = shapley_weights(m)[pick.sum(1)]
            coal = (coal[:, None, :] | part[None, :, :]).reshape(-1, n)
            weight = (weight[:, None] * w[None, :]).reshape(-1)
        befores.append(coal)
        weights.append(weight)
    withs = []
    for i, before in enumerate(befores):
        after = before.clone()
        after[:, i] = True
        withs.append(after)
    sizes = [b.shape[0] for b in befores]

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        v_before = v[: sum(sizes)].split(sizes)
        v_with = v[sum(sizes) : 2 * sum(sizes)].split(sizes)
        values = torch.stack([(w * (hi - lo)).sum() for w, hi, lo in zip(weights, v_with, v_before)])
        return ShapleyResult(values, None, n_evals, float(v[-2]), float(v[-1]), "owen", None)

    return with_ends(torch.cat(befores + withs)), None, solve


def _owen_sampled(tree: list, n: int, budget: int, gen: torch.Generator) -> PlanParts:
    """Plan rows, budget and solver of antithetic sampling of hierarchy-consistent permutations.

    Every tree node below the root gets a uniform random key per sample; ordering players by the
    keys of their ancestors (root's child first, lexicographically) orders the children of every
    node uniformly at random and keeps each group contiguous. Reversing such a permutation reverses
    the order at every node, so it is again consistent and equally likely.
    """
    check_permutation_budget(budget, "owen")
    ancestors: list[list[int]] = [[] for _ in range(n)]
    n_nodes = 0

    def walk(node: list, chain: list[int]) -> None:
        nonlocal n_nodes
        for child in node:
            node_id = n_nodes
            n_nodes += 1
            if isinstance(child, int):
                ancestors[child] = chain + [node_id]
            else:
                walk(child, chain + [node_id])

    walk(tree, [])
    depth = max(len(a) for a in ancestors)
    # A player that is a leaf above the deepest level is alone below its last ancestor, so any
    # constant key (the extra node n_nodes, whose key is 0) is fine for the missing levels.
    anc = torch.tensor([a + [n_nodes] * (depth - len(a)) for a in ancestors], dtype=torch.int64)
    half = budget // 2
    keys = torch.rand(half, n_nodes + 1, generator=gen, dtype=torch.float64)
    keys[:, n_nodes] = 0.0
    order = torch.arange(n, dtype=torch.int64).expand(half, n).clone()
    for d in range(depth - 1, -1, -1):  # least significant level first, stable sorts
        level_keys = keys[:, anc[:, d]].gather(1, order)
        by_key = np.argsort(level_keys.numpy(), axis=1, kind="stable")
        order = order.gather(1, torch.from_numpy(by_key))
    perms = torch.cat([order, order.flip(1)])
    return antithetic_plan(perms, "owen")


def owen_plan(n: int, hierarchy: Any, budget: int | None, gen: torch.Generator) -> PlanParts:
    if hierarchy is None:
        raise ValueError(
            "method='owen' needs a hierarchy: nested lists of player indices that "
            "partition range(n_players), e.g. [[0, 1], [2, [3, 4]]]"
        )
    tree = parse_hierarchy(hierarchy, n)
    if budget is None and _owen_terms(tree) <= OWEN_EXACT_MAX_TERMS:
        return _owen_exact(n, _owen_paths(tree, n))
    budget = DEFAULT_PERMUTATIONS if budget is None else budget
    return _owen_sampled(tree, n, budget, gen)
