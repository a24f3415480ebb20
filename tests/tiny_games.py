"""Cooperative games with known Shapley values, for testing the estimators.

Each game is a callable ``game(coalitions: bool Tensor[C, n]) -> float64 Tensor[C]`` with an ``n``
attribute and a ``reference()`` method giving its Shapley values: in closed form where one exists,
otherwise by brute force from the definition (average marginal contribution over all ``n!``
orderings, which is only feasible for small ``n``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

BRUTE_FORCE_MAX_PLAYERS = 7
"""Brute force over ``n!`` orderings: 7! * 8 = 40320 coalitions in one call, still fast."""


def _coalition_index(coalitions: torch.Tensor) -> torch.Tensor:
    """Integer mask (bit i = player i) of each row."""
    n = coalitions.shape[1]
    return (coalitions.long() << torch.arange(n)).sum(1)


def brute_force_shapley(game: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """Shapley values from the definition: the mean over all orderings of each player's marginal."""
    return _mean_marginals(game, n, itertools.permutations(range(n)))


def consistent_orders(hierarchy: Any) -> Iterator[tuple[int, ...]]:
    """Every ordering of the players that keeps each group of ``hierarchy`` contiguous."""
    if isinstance(hierarchy, int):
        yield (hierarchy,)
        return
    for child_order in itertools.permutations(hierarchy):
        for parts in itertools.product(*(list(consistent_orders(c)) for c in child_order)):
            yield tuple(p for part in parts for p in part)


def brute_force_owen(game: Callable[[torch.Tensor], torch.Tensor], n: int,
                     hierarchy: Any) -> torch.Tensor:
    """Owen values from the definition: mean marginal over all hierarchy-consistent orderings."""
    return _mean_marginals(game, n, consistent_orders(hierarchy))


def _mean_marginals(game: Callable[[torch.Tensor], torch.Tensor], n: int,
                    orders: Iterator[tuple[int, ...]]) -> torch.Tensor:
    if n > BRUTE_FORCE_MAX_PLAYERS:
        raise ValueError(f"brute force needs n <= {BRUTE_FORCE_MAX_PLAYERS}, got {n}")
    perms = torch.tensor(list(orders), dtype=torch.int64)
    m = perms.shape[0]
    # Row (p, k) is the set of the first k players of ordering p.
    prefixes = torch.zeros(m, n + 1, n, dtype=torch.bool)
    for k in range(1, n + 1):
        prefixes[:, k] = prefixes[:, k - 1]
        prefixes[torch.arange(m), k, perms[:, k - 1]] = True
    v = torch.as_tensor(game(prefixes.reshape(-1, n)), dtype=torch.float64).reshape(m, n + 1)
    phi = torch.zeros(n, dtype=torch.float64)
    for k in range(n):
        phi.index_add_(0, perms[:, k], v[:, k + 1] - v[:, k])
    return phi / m


class AdditiveGame:
    """``v(S) = c + sum_{i in S} w_i``; Shapley value = ``w``."""

    def __init__(self, weights: list[float] | torch.Tensor, constant: float = 0.0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.constant = float(constant)
        self.n = int(self.weights.shape[0])

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return self.constant + coalitions.double() @ self.weights

    def reference(self) -> torch.Tensor:
        return self.weights.clone()


class UnanimityGame:
    """``v(S) = 1`` if ``T ⊆ S`` else 0; Shapley value ``1/|T|`` for members of ``T``, 0 otherwise."""

    def __init__(self, n: int, carrier: list[int]) -> None:
        self.n = n
        self.carrier = list(carrier)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return coalitions[:, self.carrier].all(1).double()

    def reference(self) -> torch.Tensor:
        phi = torch.zeros(self.n, dtype=torch.float64)
        phi[self.carrier] = 1.0 / len(self.carrier)
        return phi


class WeightedVotingGame:
    """``v(S) = 1`` if the weights of ``S`` reach ``quota``; reference by brute force."""

    def __init__(self, weights: list[float], quota: float) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.quota = float(quota)
        self.n = int(self.weights.shape[0])

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return (coalitions.double() @ self.weights >= self.quota).double()

    def reference(self) -> torch.Tensor:
        return brute_force_shapley(self, self.n)


class GloveGame:
    """Players ``left`` hold left gloves, the others right gloves; ``v(S)`` = pairs S can make.

    Reference by brute force; with one left glove and ``r`` right gloves the left holder gets
    ``r / (r + 1)`` and each right holder ``1 / (r (r + 1))`` (tested against the brute force).
    """

    def __init__(self, n: int, left: list[int]) -> None:
        self.n = n
        self.left = torch.zeros(n, dtype=torch.bool)
        self.left[list(left)] = True

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        n_left = (coalitions & self.left).sum(1)
        n_right = (coalitions & ~self.left).sum(1)
        return torch.minimum(n_left, n_right).double()

    def reference(self) -> torch.Tensor:
        return brute_force_shapley(self, self.n)


class TableGame:
    """Arbitrary game given by a table of ``2**n`` values indexed by coalition mask."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = torch.as_tensor(table, dtype=torch.float64)
        self.n = int(math.log2(self.table.shape[0]))
        if 2**self.n != self.table.shape[0]:
            raise ValueError(f"table length must be a power of two, got {self.table.shape[0]}")

    @classmethod
    def random(cls, n: int, seed: int) -> TableGame:
        """Values ~ N(0, 1) per coalition, from a private generator."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randn(2**n, generator=gen, dtype=torch.float64))

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return self.table[_coalition_index(coalitions)]

    def reference(self) -> torch.Tensor:
        return brute_force_shapley(self, self.n)


class LinearCombination:
    """``a * g(S) + b * h(S)``: its Shapley value is ``a phi_g + b phi_h`` (linearity axiom)."""

    def __init__(self, a: float, g: Callable, b: float, h: Callable, n: int) -> None:
        self.a, self.g, self.b, self.h, self.n = a, g, b, h, n

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return self.a * torch.as_tensor(self.g(coalitions)) + self.b * torch.as_tensor(
            self.h(coalitions))


class WithDummy:
    """Game ``g`` on players other than ``dummy``: ``dummy`` never changes the value."""

    def __init__(self, g: Callable, n: int, dummy: int) -> None:
        self.g, self.n, self.dummy = g, n, dummy
        self.keep = [i for i in range(n) if i != dummy]

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return self.g(coalitions[:, self.keep])


class CountingValueFn:
    """Wraps a game and records every batch passed to it (for dedupe and batching tests)."""

    def __init__(self, game: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.game = game
        self.batches: list[torch.Tensor] = []

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        self.batches.append(coalitions.clone())
        return self.game(coalitions)

    @property
    def rows(self) -> torch.Tensor:
        return torch.cat(self.batches)


class SumOfUnanimityGame:
    """``v(S) = sum_T c_T 1[T ⊆ S]`` over random carriers ``T`` of ``lo..hi`` players, ``c_T ~ N(0, 1)``.

    Shapley value in closed form: ``sum_T c_T 1[i ∈ T] / |T|``; Owen value (:meth:`owen_reference`): each
    carrier's worth is split equally among the children of a group that meet it, recursively.
    """

    def __init__(self, n: int, terms: int, lo: int, hi: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.n = n
        self.carriers = torch.zeros(terms, n, dtype=torch.bool)
        sizes = torch.randint(lo, hi + 1, (terms,), generator=gen)
        for t in range(terms):
            self.carriers[t, torch.randperm(n, generator=gen)[: int(sizes[t])]] = True
        self.coef = torch.randn(terms, generator=gen, dtype=torch.float64)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        inside = (coalitions[:, None, :] | ~self.carriers[None]).all(2)
        return inside.double() @ self.coef

    def reference(self) -> torch.Tensor:
        return (self.carriers.double() / self.carriers.sum(1, keepdim=True)).T @ self.coef

    def owen_reference(self, hierarchy: Any) -> torch.Tensor:
        phi = torch.zeros(self.n, dtype=torch.float64)

        def leaves(node: Any) -> set[int]:
            return {node} if isinstance(node, int) else set().union(*(leaves(c) for c in node))

        def split(node: Any, carrier: set[int], worth: float) -> None:
            if isinstance(node, int):
                phi[node] += worth
                return
            met = [c for c in node if leaves(c) & carrier]
            for child in met:
                split(child, carrier, worth / len(met))

        for carrier, c in zip(self.carriers, self.coef.tolist()):
            split(hierarchy, set(torch.nonzero(carrier).flatten().tolist()), c)
        return phi
