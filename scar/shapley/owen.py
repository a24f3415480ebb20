"""Owen values for a nested partition of the players (e.g. sentences > spans > tokens).

Exact by enumeration for small trees; antithetic sampling of hierarchy-consistent permutations otherwise.
A budget whose sampled plan would have at least as many rows as the exact one is capped there (exact
values). Hierarchies of any depth are handled without recursion; a group with a single child is the same
game as that child.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import numpy as np
import torch

from scar.shapley.base import (
    MAX_PLAN_ROWS,
    PlanParts,
    ShapleyResult,
    bits,
    capped,
    check_plan_size,
    plan_fits,
    shapley_weights,
    with_ends,
)
from scar.shapley.permutation import DEFAULT_PERMUTATIONS, antithetic_plan, check_permutation_budget, exact_cap

__all__ = [
    "OWEN_EXACT_MAX_TERMS",
    "owen_plan",
    "parse_hierarchy",
    "owen_orders",
    "owen_exact_cap",
    "owen_exact_parts",
]

OWEN_EXACT_MAX_TERMS = 2**18
"""``method="owen"`` without a budget is exact when the number of (player, coalition) terms of the
Owen formula, ``sum_i prod_levels 2**(siblings of i's ancestor at that level)``, is at most this;
larger trees are sampled with ``DEFAULT_PERMUTATIONS`` hierarchy-consistent permutations."""

_LISTED = 10  # players named in a partition error; the rest are counted


def _path(loc: Any) -> str:
    """``[i][j]...`` of a location kept as nested ``(parent location, index)`` pairs (None: the root)."""
    parts = []
    while loc is not None:
        loc, k = loc
        parts.append(f"[{k}]")
    return "".join(reversed(parts))


def _some(players: list[int], total: int) -> str:
    if total <= _LISTED:
        return str(players)
    return f"[{', '.join(map(str, players[:_LISTED]))}, ...] ({total} in all)"


def _missing(present: list[int], n: int) -> tuple[list[int], int]:
    """The first few of ``range(n)`` absent from the sorted distinct ``present``, and how many are absent."""
    first: list[int] = []
    expected = 0
    for p in [*present, n]:
        if p > expected and len(first) < _LISTED:
            first.extend(range(expected, min(p, expected + _LISTED - len(first))))
        expected = p + 1
    return first, n - len(present)


def parse_hierarchy(hierarchy: Any, n: int) -> list:
    """Check that ``hierarchy`` is a nested partition of ``range(n)``; return it as nested lists.

    Walks the tree with an explicit stack (any depth); a list that appears twice (a group containing
    itself, or the same list object used for two groups) is refused.
    """
    if not isinstance(hierarchy, (list, tuple)):
        raise TypeError(f"hierarchy must be a (nested) list of player indices, got {type(hierarchy).__name__}")
    if len(hierarchy) == 0:
        raise ValueError("hierarchy is an empty group; every group needs a player")
    seen: list[int] = []
    tree: list = []
    visited = {id(hierarchy)}
    # (children left to read, the copy being built, location of the group)
    stack: list[tuple[Any, list, Any]] = [(iter(enumerate(hierarchy)), tree, None)]
    while stack:
        children, out, loc = stack[-1]
        step = next(children, None)
        if step is None:
            stack.pop()
            continue
        k, child = step
        here = (loc, k)
        if isinstance(child, (bool, np.bool_)):
            raise TypeError(f"hierarchy{_path(here)} is a bool ({child!r}); players are ints")
        if isinstance(child, (list, tuple)):
            if len(child) == 0:
                raise ValueError(f"hierarchy{_path(here)} is an empty group; every group needs a player")
            if id(child) in visited:
                raise ValueError(
                    f"hierarchy{_path(here)} is the same list as an enclosing or earlier group (a group that "
                    "contains itself, or one list used twice); groups must be distinct lists"
                )
            visited.add(id(child))
            group: list = []
            out.append(group)
            stack.append((iter(enumerate(child)), group, here))
            continue
        try:
            player = operator.index(child)
        except TypeError:
            raise TypeError(
                f"hierarchy{_path(here)} must be a player index (int) or a list of them, got "
                f"{type(child).__name__} ({child!r})"
            ) from None
        seen.append(player)
        out.append(player)
    counts = Counter(seen)
    outside = sorted(p for p in counts if not 0 <= p < n)
    inside = sorted(p for p in counts if 0 <= p < n)
    duplicated = sorted(p for p in inside if counts[p] > 1)
    missing, n_missing = _missing(inside, n)
    problems = []
    if outside:
        problems.append(f"players out of range(0, {n}): {_some(outside, len(outside))}")
    if n_missing:
        problems.append(f"missing players: {_some(missing, n_missing)}")
    if duplicated:
        problems.append(f"duplicated players: {_some(duplicated, len(duplicated))}")
    if problems:
        raise ValueError(f"hierarchy must be a partition of range({n}); " + "; ".join(problems))
    return tree


def _leaves(node: Any) -> list[int]:
    """The players under ``node``, in order."""
    if isinstance(node, int):
        return [node]
    out: list[int] = []
    stack = [iter(node)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, int):
            out.append(child)
        else:
            stack.append(iter(child))
    return out


def _owen_paths(tree: list, n: int) -> list[list[tuple[torch.Tensor, int]]]:
    """For each player, the levels from the root down: ``(sibling member masks [m-1, n], m)``.

    Levels where the group has a single child are left out: they add the factor ``2**0 = 1`` and the
    weight 1 to every term, and no sibling to any coalition.
    """
    paths: list[list[tuple[torch.Tensor, int]]] = [[] for _ in range(n)]
    stack: list[tuple[list, list[tuple[torch.Tensor, int]]]] = [(tree, [])]
    while stack:
        node, above = stack.pop()
        levels = [above] * len(node)
        if len(node) > 1:
            groups = torch.zeros(len(node), n, dtype=torch.bool)
            for k, child in enumerate(node):
                groups[k, _leaves(child)] = True
            levels = [above + [(torch.cat([groups[:k], groups[k + 1 :]]), len(node))] for k in range(len(node))]
        for child, level in zip(node, levels):
            if isinstance(child, int):
                paths[child] = level
            else:
                stack.append((child, level))
    return paths


def _owen_terms(tree: list, cap: int) -> int:
    """Terms of the exact Owen formula (sum over players of prod over levels of 2**(siblings)), or
    ``cap + 1`` when there are more than ``cap`` (the count stays a small int for any tree)."""
    total = 0
    stack: list[tuple[list, int]] = [(tree, 1)]
    while stack:
        node, factor = stack.pop()
        below = min(factor << min(len(node) - 1, cap.bit_length() + 1), cap + 1)
        for child in node:
            if isinstance(child, int):
                total += below
                if total > cap:
                    return cap + 1
            else:
                stack.append((child, below))
    return total


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
    """Plan rows, budget and solver of antithetic sampling of hierarchy-consistent permutations."""
    order = owen_orders(tree, n, budget // 2, gen)
    return antithetic_plan(torch.cat([order, order.flip(1)]), "owen")


def owen_orders(tree: list, n: int, half: int, gen: torch.Generator) -> torch.Tensor:
    """``half`` uniform hierarchy-consistent permutations of the players of ``tree`` (a parsed hierarchy),
    int64 ``[half, n]``; their reverses are the antithetic halves.

    Every tree node below the root gets a uniform random key per sample; ordering players by the
    keys of their ancestors (root's child first, lexicographically) orders the children of every
    node uniformly at random and keeps each group contiguous. Reversing such a permutation reverses
    the order at every node, so it is again consistent and equally likely.

    Nodes are numbered in preorder and each draws its key, but an only child is left out of its
    players' key chains: it is shared by exactly the players of its parent, so it never decides their
    order, and the chains are at most as long as the number of branching levels.
    """
    ancestors: list[list[int]] = [[] for _ in range(n)]
    n_nodes = 0
    # (children left to read, key chain of the group's players, number of children)
    stack: list[tuple[Any, list[int], int]] = [(iter(tree), [], len(tree))]
    while stack:
        children, chain, width = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        node_id = n_nodes
        n_nodes += 1
        link = chain + [node_id] if width > 1 else chain
        if isinstance(child, int):
            ancestors[child] = link
        else:
            stack.append((iter(child), link, len(child)))
    depth = max(len(a) for a in ancestors)
    # A player that is a leaf above the deepest level is alone below its last ancestor, so any
    # constant key (the extra node n_nodes, whose key is 0) is fine for the missing levels.
    anc = torch.tensor([a + [n_nodes] * (depth - len(a)) for a in ancestors], dtype=torch.int64)
    keys = torch.rand(half, n_nodes + 1, generator=gen, dtype=torch.float64)
    keys[:, n_nodes] = 0.0
    order = torch.arange(n, dtype=torch.int64).expand(half, n).clone()
    for d in range(depth - 1, -1, -1):  # least significant level first, stable sorts
        level_keys = keys[:, anc[:, d]].gather(1, order)
        by_key = np.argsort(level_keys.numpy(), axis=1, kind="stable")
        order = order.gather(1, torch.from_numpy(by_key))
    return order


def owen_exact_cap(tree: list, n: int) -> int | None:
    """The number of permutations from which the sampled plan of ``tree`` would have at least the rows of
    the exact Owen plan (see :func:`owen_plan`), or None when the exact plan is beyond the plan limits."""
    terms = _owen_terms(tree, MAX_PLAN_ROWS)
    if terms <= MAX_PLAN_ROWS and plan_fits(n, 2 * terms + 2):
        return exact_cap(2 * terms, n)
    return None


def owen_exact_parts(tree: list, n: int) -> PlanParts:
    """Plan rows, budget (None) and solver of the exact Owen values of ``tree`` (a parsed hierarchy)."""
    return _owen_exact(n, _owen_paths(tree, n))


def owen_plan(n: int, hierarchy: Any, budget: int | None, gen: torch.Generator) -> PlanParts:
    """Exact Owen values when no budget is given and the tree is small (``OWEN_EXACT_MAX_TERMS``), or
    when the budget's sampled plan would be at least as large as the exact one (capped, see
    :class:`~scar.shapley.base.ShapleyResult`); sampled otherwise, within the plan size limits."""
    if hierarchy is None:
        raise ValueError(
            "method='owen' needs a hierarchy: nested lists of player indices that "
            "partition range(n_players), e.g. [[0, 1], [2, [3, 4]]]"
        )
    tree = parse_hierarchy(hierarchy, n)
    terms = _owen_terms(tree, MAX_PLAN_ROWS)
    exact_fits = terms <= MAX_PLAN_ROWS and plan_fits(n, 2 * terms + 2)
    if budget is None:
        if terms <= OWEN_EXACT_MAX_TERMS and exact_fits:
            return _owen_exact(n, _owen_paths(tree, n))
        budget = DEFAULT_PERMUTATIONS
    check_permutation_budget(budget, "owen")
    if exact_fits and budget >= (cap := exact_cap(2 * terms, n)):
        return capped(_owen_exact(n, _owen_paths(tree, n)), "owen", cap)
    check_plan_size("owen", n, budget, budget * (n + 1) + 2)
    return _owen_sampled(tree, n, budget, gen)
