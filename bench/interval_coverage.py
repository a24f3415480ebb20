"""Coverage of the 95% intervals ``values +- 1.96 stderr`` of the sampled estimators, on games with known values.

For every sampled method and several budgets, each game is estimated with many seeds and the coverage is the
share of (seed, player) intervals that hold the exact value. Games: sums of unanimity games (random
carriers of low, mixed and high order; Shapley and Owen values in closed form), a glove game with one left
glove (closed form) and a random table game (exact values by enumeration). With ``--adaptive`` the same is
measured at the stopping point of adaptive sampling (``tol``), where stopping when the reported error is
small could bias the intervals.

Run from the repository root::

    .venv/bin/python bench/interval_coverage.py [--seeds 200] [--adaptive] [--json PATH] [--plot PATH]

It prints a markdown table (rows: game; columns: method and budget) and the overall coverage per column, and
with ``--adaptive`` a second one over more games. Adaptive cells read ``coverage (mean budget spent, share
of runs that ended at the exact values)``. ``--json`` writes the fixed-budget cells, ``--plot`` draws them:
coverage against budget, one panel per method, one line per game, with the 0.93-0.97 target band.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from scar.shapley import METHODS, shapley

HIERARCHY10 = [[0, 1, 2], [3, [4, 5]], [6, 7, 8, 9]]
"""The Owen hierarchy of the 10-player games."""


class SumOfUnanimity:
    """``v(S) = sum_T c_T 1[T within S]`` over random carriers ``T`` of sizes ``lo..hi``.

    Shapley value: ``sum_T c_T 1[i in T] / |T|``. Owen value (hierarchy of groups): each carrier's worth is
    split equally among the top-level groups it meets, then recursively inside each group.
    """

    def __init__(self, n: int, terms: int, lo: int, hi: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.masks = torch.zeros(terms, n, dtype=torch.bool)
        for t in range(terms):
            self.masks[t, rng.choice(n, int(rng.integers(lo, hi + 1)), replace=False)] = True
        self.coef = torch.from_numpy(rng.normal(size=terms))

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        inside = (coalitions[:, None, :] | ~self.masks[None]).all(2)
        return inside.double() @ self.coef

    def shapley(self) -> torch.Tensor:
        return (self.masks.double() / self.masks.sum(1, keepdim=True)).T @ self.coef

    def owen(self, hierarchy: list[Any]) -> torch.Tensor:
        phi = torch.zeros(self.n, dtype=torch.float64)
        for mask, c in zip(self.masks, self.coef.tolist()):
            _split(hierarchy, set(torch.nonzero(mask).flatten().tolist()), c, phi)
        return phi


def _leaves(node: Any) -> set[int]:
    return {node} if isinstance(node, int) else set().union(*(_leaves(c) for c in node))


def _split(node: Any, carrier: set[int], worth: float, phi: torch.Tensor) -> None:
    """Owen value of a unanimity game: equal shares among the children that meet the carrier, recursively."""
    if isinstance(node, int):
        phi[node] += worth
        return
    met = [c for c in node if _leaves(c) & carrier]
    for child in met:
        _split(child, carrier, worth / len(met), phi)


class Glove:
    """Player 0 holds the one left glove, the other ``n - 1`` right gloves: ``v(S) = min(#left, #right)``.
    Shapley values: ``r / (r + 1)`` for the left holder and ``1 / (r (r + 1))`` for each right holder."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        left = coalitions[:, 0].long()
        return torch.minimum(left, coalitions[:, 1:].sum(1)).double()

    def shapley(self) -> torch.Tensor:
        r = self.n - 1
        return torch.tensor([r / (r + 1)] + [1 / (r * (r + 1))] * r, dtype=torch.float64)


class Table:
    """Values ``N(0, 1)`` per coalition; Shapley values by exact enumeration."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(2**n, generator=gen, dtype=torch.float64)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return self.table[(coalitions.long() << torch.arange(self.n)).sum(1)]

    def shapley(self) -> torch.Tensor:
        return shapley(self, self.n, method="exact").values


GAMES: dict[str, Any] = {
    "unanimity sum, n=10, order 1-3": SumOfUnanimity(10, 30, 1, 3, 1),
    "unanimity sum, n=10, order 1-10": SumOfUnanimity(10, 30, 1, 10, 2),
    "unanimity sum, n=10, order 6-10": SumOfUnanimity(10, 30, 6, 10, 3),
    "unanimity sum, n=16, order 1-16": SumOfUnanimity(16, 40, 1, 16, 4),
    "glove, n=12": Glove(12),
    "random table, n=10": Table(10, 7),
}

LARGER_GAMES: dict[str, Any] = {
    "unanimity sum, n=16, order 1-3": SumOfUnanimity(16, 40, 1, 3, 5),
    "unanimity sum, n=16, order 10-16": SumOfUnanimity(16, 40, 10, 16, 6),
}
"""More games of 16 players for the adaptive table, where most tolerances stop before the exact plan."""

COALITION_METHODS = [m for m in ("kernel", "stratified") if m in METHODS]
"""Methods whose budget counts coalitions (the others count permutations)."""

COLUMNS: list[tuple[str, int]] = [
    *(("permutation", b) for b in (4, 8, 16, 32, 64)),
    *(("owen", b) for b in (4, 8, 16, 32)),
    *((m, b) for m in COALITION_METHODS for b in (4, 8, 16, 32)),
]
"""(method, budget): permutations for ``permutation`` and ``owen``, multiples of ``n`` coalitions for the
:data:`COALITION_METHODS`."""

ADAPTIVE: list[tuple[str, float]] = [
    (m, tol) for m in ("permutation", "owen", "kernel", "stratified") for tol in (0.1, 0.05, 0.02)
]
"""(method, relative tol) of the adaptive columns."""


def reference(game: Any, method: str) -> torch.Tensor | None:
    if method != "owen":
        return game.shapley()
    return game.owen(HIERARCHY10) if isinstance(game, SumOfUnanimity) and game.n == 10 else None


def covered(game: Any, ref: torch.Tensor, seeds: int, **kw: Any) -> tuple[int, int, float, float]:
    """(intervals holding the exact value, intervals, mean budget, share of exact results) over ``seeds``
    seeds."""
    hit = total = 0
    budgets, exact = [], 0
    for seed in range(seeds):
        res = shapley(game, game.n, seed=seed, **kw)
        assert res.stderr is not None
        hit += int(((res.values - ref).abs() <= 1.959963984540054 * res.stderr + 1e-12).sum())
        total += game.n
        budgets.append(res.budget or 0)
        exact += int(bool((res.stderr == 0).all()))
    return hit, total, float(np.mean(budgets)), exact / seeds


def table(
    games: dict[str, Any], columns: list[tuple[str, str, dict[str, Any]]], seeds: int
) -> dict[str, dict[str, float]]:
    """Print one markdown table: a row per game, a column per (method, settings), and the overall coverage.
    Returns the coverage of each cell, ``{game: {column label: coverage}}``, the overall row as ``"all"``."""
    cover: dict[str, dict[str, float]] = {}
    totals = {label: [0, 0] for _, label, _ in columns}
    print("| game | " + " | ".join(label for _, label, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, game in games.items():
        cells = []
        for method, label, kw in columns:
            ref = reference(game, method)
            if ref is None:
                cells.append("")
                continue
            kw = dict(kw)
            if method in COALITION_METHODS and "budget" in kw:
                kw["budget"] = kw["budget"] * game.n
            hit, total, budget, exact = covered(game, ref, seeds, **kw)
            totals[label][0] += hit
            totals[label][1] += total
            cover.setdefault(name, {})[label] = hit / total
            if "tol" in kw:  # adaptive: coverage (mean budget spent, share of runs that reached the exact values)
                cells.append(f"{hit / total:.3f} ({budget:.0f}, {exact:.0%})")
            else:
                cells.append(f"{hit / total:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print("| **all** | " + " | ".join(f"**{h / t:.3f}**" if t else "" for h, t in totals.values()) + " |\n")
    cover["all"] = {label: h / t for label, (h, t) in totals.items() if t}
    return cover


TARGET = (0.93, 0.97)
"""The band the 95% intervals' coverage is meant to fall in."""


def plot(cover: dict[str, dict[str, float]], path: str) -> None:
    """Coverage against budget: a panel per method, a line per game (the overall row bold), the target band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(method for method, _ in COLUMNS))
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), sharey=True)
    for ax, method in zip(np.atleast_1d(axes), methods):
        budgets = [b for m, b in COLUMNS if m == method]
        unit = "n" if method in COALITION_METHODS else ""
        for game, cells in cover.items():
            ys = [cells.get(f"{method} {b}{unit}") for b in budgets]
            if all(y is None for y in ys):
                continue
            style = dict(color="black", linewidth=2.5, label="all games") if game == "all" else dict(label=game)
            ax.plot(budgets, [np.nan if y is None else y for y in ys], marker="o", **style)
        ax.axhspan(*TARGET, color="tab:green", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{b}{unit}" for b in budgets])
        ax.set_title(method)
        ax.set_xlabel("coalitions" if unit else "permutations")
        ax.set_ylim(min(0.8, *(v for cells in cover.values() for v in cells.values())) - 0.03, 1.01)
    np.atleast_1d(axes)[0].set_ylabel("coverage of values ± 1.96 stderr")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--adaptive", action="store_true", help="also measure at adaptive stopping points")
    parser.add_argument("--json", help="write the fixed-budget coverage cells to this JSON file")
    parser.add_argument("--plot", help="draw the fixed-budget coverage to this image file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    columns: list[tuple[str, str, dict[str, Any]]] = []
    for method, budget in COLUMNS:
        kw: dict[str, Any] = {"method": method}
        if method == "owen":
            kw["hierarchy"] = HIERARCHY10
        unit = "n" if method in COALITION_METHODS else ""
        columns.append((method, f"{method} {budget}{unit}", {**kw, "budget": budget}))
    cover = table(GAMES, columns, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "target": TARGET, "coverage": cover}, f, indent=1)
    if args.plot:
        plot(cover, args.plot)
    if args.adaptive:
        adaptive = []
        for method, tol in ADAPTIVE:
            kw = {"method": method, "tol": tol}
            if method == "owen":
                kw["hierarchy"] = HIERARCHY10
            adaptive.append((method, f"{method} tol {tol}", kw))
        table({**GAMES, **LARGER_GAMES}, adaptive, args.seeds)
    print(f"{args.seeds} seeds per cell; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
