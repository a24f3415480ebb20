"""Accuracy per evaluation on benchmark games with known Shapley values: this project's estimators against
shapiq's approximators.

The games are sums of unanimity games (:class:`SumOfUnanimity`): ``v(S) = sum_k c_k [T_k ⊆ S]``, whose Shapley
values are closed-form (each term gives ``c_k / |T_k|`` to every member of ``T_k``). The carriers' sizes set
the order of the interactions: low (sizes 1-3, close to additive), mixed (any size) and high (at least half
the players). :data:`GAMES` holds the benchmark's games, :data:`TINY_GAMES` one small game for
correctness-only runs.

Every method gets the same budget ``B`` of evaluations (``B = multiplier * n``), counted honestly: the
distinct coalitions it asks the game for, ∅ and N included (:class:`CountingGame`). This project's estimators
are given the largest budget whose plan stays within ``B`` (``kernel`` and ``stratified``: ``B - 2``
coalitions besides ∅ and N; ``permutation``: the largest even number of permutations ``P`` with
``P (n - 1) + 2 <= B``); shapiq's approximators get ``B`` itself, and so do shap's explainers
(:data:`SHAP_METHODS`). The study records the distinct evaluations of every run and refuses a run that used
more than ``B``.

The error is the relative L2 distance to the exact values; the summary is the median over seeds per
(game, method, budget), with each method's ratio to the best shapiq approximator at that game and budget.
"""

from __future__ import annotations

import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scar.shapley import shapley

__all__ = [
    "GameSpec",
    "SumOfUnanimity",
    "CountingGame",
    "GAMES",
    "TINY_GAMES",
    "MULTIPLIERS",
    "TINY_MULTIPLIERS",
    "SCAR_METHODS",
    "SHAPIQ_METHODS",
    "SHAP_METHODS",
    "GAME_METHODS",
    "scar_budget",
    "runs_at",
    "run_game_method",
    "game_study",
    "summarize_games",
    "format_games_table",
    "format_ratio_table",
    "plot_games",
]


@dataclass(frozen=True)
class GameSpec:
    """A sum of unanimity games: ``terms`` carriers of ``min_size..max_size`` players (uniform size, then a
    uniform carrier of that size) among ``n``, coefficients uniform in ``[-1, 1]``, all drawn from ``seed``."""

    name: str
    n: int
    terms: int
    min_size: int
    max_size: int
    seed: int = 0

    def build(self) -> SumOfUnanimity:
        """The game."""
        rng = np.random.default_rng(self.seed)
        carriers = np.zeros((self.terms, self.n), dtype=bool)
        for k in range(self.terms):
            size = int(rng.integers(self.min_size, self.max_size + 1))
            carriers[k, rng.choice(self.n, size, replace=False)] = True
        return SumOfUnanimity(carriers, rng.uniform(-1.0, 1.0, self.terms))


class SumOfUnanimity:
    """``v(S) = sum_k c_k [T_k ⊆ S]`` over bool coalitions ``[C, n]`` (numpy or torch; one coalition ``[n]``
    also works); :meth:`shapley_values` in closed form."""

    def __init__(self, carriers: np.ndarray, coefficients: np.ndarray) -> None:
        self.carriers = np.asarray(carriers, dtype=bool)
        self.coefficients = np.asarray(coefficients, dtype=np.float64)
        if self.carriers.ndim != 2 or self.coefficients.shape != (self.carriers.shape[0],):
            raise ValueError("carriers must be [terms, n] and coefficients [terms]")
        if not self.carriers.any(1).all():
            raise ValueError("every carrier needs at least one player")
        self.n = int(self.carriers.shape[1])
        self._sizes = self.carriers.sum(1)

    def __call__(self, coalitions: np.ndarray | torch.Tensor) -> np.ndarray:
        x = coalitions.numpy() if isinstance(coalitions, torch.Tensor) else np.asarray(coalitions)
        x = np.atleast_2d(x).astype(np.float64)
        covered = (x @ self.carriers.T.astype(np.float64)) >= self._sizes
        return covered.astype(np.float64) @ self.coefficients

    def shapley_values(self) -> np.ndarray:
        """Exact Shapley values: each term gives ``c_k / |T_k|`` to each member of ``T_k``."""
        return (self.coefficients / self._sizes) @ self.carriers.astype(np.float64)


class CountingGame:
    """Wraps a game and counts the distinct coalitions asked for (∅ and N included, each once)."""

    def __init__(self, game: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        self.game = game
        self.n = n
        self._seen: set[bytes] = set()
        self.calls = 0

    def __call__(self, coalitions: np.ndarray | torch.Tensor) -> np.ndarray:
        x = coalitions.numpy() if isinstance(coalitions, torch.Tensor) else np.asarray(coalitions)
        x = np.atleast_2d(x).astype(bool)
        if x.shape[1] != self.n:
            raise ValueError(f"coalitions of {x.shape[1]} players, expected {self.n}")
        self._seen.update(row.tobytes() for row in np.packbits(x, axis=1))
        self.calls += 1
        return self.game(x)

    @property
    def evaluations(self) -> int:
        """Distinct coalitions evaluated so far."""
        return len(self._seen)


GAMES = (
    GameSpec("low_n16", 16, 60, 1, 3, seed=1),
    GameSpec("low_n20", 20, 100, 1, 3, seed=1),
    GameSpec("mixed_n12", 12, 40, 1, 12, seed=1),
    GameSpec("mixed_n16", 16, 60, 1, 16, seed=1),
    GameSpec("high_n16", 16, 40, 8, 16, seed=1),
    GameSpec("high_n20", 20, 40, 10, 20, seed=1),
)
"""The benchmark's games: low-, mixed- and high-order interactions, 12 to 20 players."""

TINY_GAMES = (GameSpec("tiny_mixed_n8", 8, 12, 1, 8, seed=0),)
"""One small game for correctness-only runs (seconds)."""

MULTIPLIERS = (2, 4, 8, 32, 128)
"""Budgets in evaluations per player: ``B = multiplier * n``."""

TINY_MULTIPLIERS = (2, 8)

SCAR_METHODS = ("scar-kernel", "scar-permutation", "scar-stratified")
SHAP_METHODS = ("shap-kernel", "shap-permutation")
"""shap's ``KernelExplainer`` (``nsamples = B - 2``, its default regularisation) and ``PermutationExplainer``
(``max_evals = B``; it needs ``B >= 2n + 1``, so it has no 2n row)."""
SHAPIQ_METHODS = (
    "shapiq-kernel",
    "shapiq-kernel-paired",
    "shapiq-kadd",
    "shapiq-svarm",
    "shapiq-unbiased-kernel",
    "shapiq-permutation",
)
GAME_METHODS = SCAR_METHODS + SHAPIQ_METHODS + SHAP_METHODS


def scar_budget(method: str, n: int, evaluations: int) -> int:
    """The budget argument of this project's ``method`` whose plan stays within ``evaluations`` distinct
    coalitions (∅ and N included); at least the method's smallest budget (2)."""
    if method in ("kernel", "stratified"):
        return max(2, (evaluations - 2) // 2 * 2)
    if method == "permutation":
        return max(2, (evaluations - 2) // (n - 1) // 2 * 2) if n > 1 else 2
    raise ValueError(f"unknown method {method!r}")


def _shapiq(method: str, n: int, seed: int) -> Any:
    import shapiq  # optional peer (bench extra); slow to import

    makers = {
        "shapiq-kernel": lambda: shapiq.KernelSHAP(n=n, random_state=seed),
        "shapiq-kernel-paired": lambda: shapiq.KernelSHAP(n=n, pairing_trick=True, random_state=seed),
        "shapiq-kadd": lambda: shapiq.kADDSHAP(n=n, random_state=seed),
        "shapiq-svarm": lambda: shapiq.SVARM(n=n, random_state=seed),
        "shapiq-unbiased-kernel": lambda: shapiq.UnbiasedKernelSHAP(n=n, random_state=seed),
        "shapiq-permutation": lambda: shapiq.PermutationSamplingSV(n=n, random_state=seed),
    }
    return makers[method]()


def runs_at(method: str, n: int, evaluations: int) -> bool:
    """Whether ``method`` can run within ``evaluations`` (shap's Permutation explainer needs ``2n + 1``)."""
    return not (method == "shap-permutation" and evaluations < 2 * n + 1)


def _shap_run(method: str, counter: CountingGame, n: int, evaluations: int, seed: int) -> np.ndarray:
    import shap  # optional peer (bench extra); slow to import

    np.random.seed(seed)  # shap's samplers draw from numpy's global generator

    def model(x: np.ndarray) -> np.ndarray:
        return counter(np.asarray(x) > 0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "shap-kernel":
            explainer = shap.KernelExplainer(model, np.zeros((1, n)))
            return np.asarray(explainer.shap_values(np.ones((1, n)), nsamples=evaluations - 2, silent=True),
                              dtype=np.float64).reshape(-1)
        masker = shap.maskers.Independent(np.zeros((1, n)), max_samples=1)
        explanation = shap.PermutationExplainer(model, masker, seed=seed)(np.ones((1, n)), max_evals=evaluations,
                                                                          silent=True)
        return np.asarray(explanation.values, dtype=np.float64).reshape(-1)


def run_game_method(game: SumOfUnanimity, method: str, evaluations: int, seed: int) -> tuple[np.ndarray, int]:
    """One run of ``method`` on ``game`` within ``evaluations`` distinct coalitions: ``(values, distinct
    coalitions evaluated)``. RuntimeError if the run used more."""
    counter = CountingGame(game, game.n)
    if method in SCAR_METHODS:
        name = method.removeprefix("scar-")
        res = shapley(lambda c: counter(c), game.n, method=name, budget=scar_budget(name, game.n, evaluations),
                      seed=seed)
        values = res.values.numpy()
    elif method in SHAPIQ_METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            iv = _shapiq(method, game.n, seed).approximate(evaluations, counter)
        values = np.asarray(iv.get_n_order_values(1), dtype=np.float64).reshape(-1)
    elif method in SHAP_METHODS:
        values = _shap_run(method, counter, game.n, evaluations, seed)
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(GAME_METHODS)}")
    if counter.evaluations > evaluations:
        raise RuntimeError(f"{method} evaluated {counter.evaluations} distinct coalitions, budget {evaluations}")
    return values, counter.evaluations


def game_study(games: Sequence[GameSpec] = GAMES, *, methods: Sequence[str] = GAME_METHODS,
               multipliers: Sequence[int] = MULTIPLIERS, seeds: Sequence[int] = range(10)) -> list[dict]:
    """Relative L2 error of every (game, method, budget, seed); one dict each: game, n, method, multiplier,
    budget (evaluations allowed), evaluations (distinct coalitions used), seed, rel_l2_error. Budgets a method
cannot run at (:func:`runs_at`) have no rows."""
    rows = []
    for spec in games:
        game = spec.build()
        ref = game.shapley_values()
        for method in methods:
            for mult in multipliers:
                budget = mult * spec.n
                if not runs_at(method, spec.n, budget):
                    continue
                for seed in seeds:
                    values, used = run_game_method(game, method, budget, seed)
                    rows.append({"game": spec.name, "n": spec.n, "method": method, "multiplier": mult,
                                 "budget": budget, "evaluations": used, "seed": seed,
                                 "rel_l2_error": float(np.linalg.norm(values - ref) / np.linalg.norm(ref))})
    return rows


def summarize_games(rows: Sequence[dict]) -> list[dict]:
    """Median error (and evaluations) over seeds per (game, method, budget), with ``ratio_to_best_shapiq``:
    the median error over the lowest median error of shapiq's approximators at that game and budget, and
    ``best_shapiq`` naming that approximator."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["game"], r["method"], r["multiplier"]), []).append(r)
    out = [{"game": g, "n": rs[0]["n"], "method": m, "multiplier": k, "budget": rs[0]["budget"], "seeds": len(rs),
            "evaluations": statistics.median(r["evaluations"] for r in rs),
            "rel_l2_error": statistics.median(r["rel_l2_error"] for r in rs)}
           for (g, m, k), rs in groups.items()]
    for r in out:
        peers = [p for p in out if p["game"] == r["game"] and p["multiplier"] == r["multiplier"]
                 and p["method"] in SHAPIQ_METHODS]
        if peers:
            best = min(peers, key=lambda p: p["rel_l2_error"])
            r["best_shapiq"] = best["method"]
            r["ratio_to_best_shapiq"] = (r["rel_l2_error"] / best["rel_l2_error"] if best["rel_l2_error"] > 0
                                         else float("nan"))
    out.sort(key=lambda r: (r["game"], r["method"], r["multiplier"]))
    return out


def format_games_table(summary: Sequence[dict], *, methods: Sequence[str] | None = None) -> str:
    """Markdown: one row per (game, method), one column per budget, each cell ``median error (ratio to the
    best shapiq approximator)``; a last row per game names the best shapiq approximator per budget."""
    mults = sorted({r["multiplier"] for r in summary})
    games = list(dict.fromkeys(r["game"] for r in summary))
    methods = list(methods) if methods is not None else list(dict.fromkeys(r["method"] for r in summary))
    cell = {(r["game"], r["method"], r["multiplier"]): r for r in summary}
    lines = ["| game | method | " + " | ".join(f"{m}n" for m in mults) + " |", "|---|---|" + "---|" * len(mults)]
    for g in games:
        for m in methods:
            parts = []
            for k in mults:
                r = cell.get((g, m, k))
                if r is None:
                    parts.append("")
                    continue
                ratio = r.get("ratio_to_best_shapiq", float("nan"))
                err = f"{r['rel_l2_error']:.4f}"
                parts.append(f"{err} ({ratio:.2f}x)" if ratio == ratio else err)
            lines.append(f"| {g} | {m} | " + " | ".join(parts) + " |")
        best = [cell.get((g, methods[0], k), {}).get("best_shapiq", "") for k in mults]
        lines.append(f"| {g} | *best shapiq* | " + " | ".join(b.removeprefix("shapiq-") for b in best) + " |")
    return "\n".join(lines)


def format_ratio_table(summary: Sequence[dict], methods: Sequence[str] = SCAR_METHODS) -> str:
    """Markdown: per game, the best shapiq approximator and its median error per budget, then each of
    ``methods``' ratio to it (below 1: the method errs less; ``–``: the method cannot run at that budget)."""
    mults = sorted({r["multiplier"] for r in summary})
    cell = {(r["game"], r["method"], r["multiplier"]): r for r in summary}
    lines = ["| game | row | " + " | ".join(f"{m}n" for m in mults) + " |", "|---|---|" + "---|" * len(mults)]
    for g in dict.fromkeys(r["game"] for r in summary):
        best = [cell[(g, cell[(g, methods[0], k)]["best_shapiq"], k)] for k in mults]
        lines.append(f"| {g} | best shapiq (error) | " + " | ".join(
            f"{b['method'].removeprefix('shapiq-')} ({b['rel_l2_error']:.3f})" for b in best) + " |")
        for m in methods:
            ratios = [cell[(g, m, k)]["ratio_to_best_shapiq"] if (g, m, k) in cell else None for k in mults]
            lines.append(f"| {g} | {m.removeprefix('scar-')} | " + " | ".join(
                "–" if x is None else f"**{x:.2f}**" if x <= 0.8 else f"{x:.2f}" for x in ratios) + " |")
    return "\n".join(lines)


def plot_games(summary: Sequence[dict], path: str) -> None:
    """Median error against distinct evaluations (log-log), one panel per game, one line per method."""
    import matplotlib  # optional (bench extra), needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(dict.fromkeys(r["game"] for r in summary))
    cols = min(3, len(games))
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in summary))
    for ax, g in zip(axes.flat, games):
        for m in methods:
            pts = sorted((r["budget"], r["rel_l2_error"]) for r in summary if r["game"] == g and r["method"] == m)
            ours = m in SCAR_METHODS
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if ours else ".", label=m,
                    linewidth=2.4 if ours else 1.0, linestyle="-" if ours else "--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(g)
        ax.set_xlabel("budget: distinct coalitions allowed (∅, N included)")
        ax.set_ylabel("relative L2 error (median)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Accuracy per evaluation on sums of unanimity games")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
