"""Accuracy per unit of compute: error against exact Shapley values versus coalitions evaluated and tokens
computed, for this project's estimators and the peers', its summary, table and plot.

Sampled methods read their coalition values from the exact table of all ``2**n`` values (the numbers the
reward model gives), so many budgets and seeds are cheap; each is charged the tokens its engine would
compute (:func:`accuracy_study` says how). :func:`estimate_from_table` runs one of this project's
estimators on that table; the equal-error comparison (:mod:`scar_bench.equal_error`) uses it too.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scar.shapley import shapley
from scar_bench.measure import RunResult, rel_l2
from scar_bench.methods import bitmask, exact_shapley, plain_tokens, run_method, trie_lower_bound
from scar_bench.workloads import Instance, binary_hierarchy

__all__ = [
    "ACCURACY_METHODS",
    "DEFAULT_ESTIMATOR",
    "estimate_from_table",
    "accuracy_study",
    "summarize_accuracy",
    "format_accuracy_table",
    "plot_accuracy",
]

ACCURACY_METHODS = ("scar-permutation", "scar-kernel", "scar-owen", "scar-stratified", "shap-partition",
                    "shap-permutation", "captum-svs", "shapiq-kernel", "shapiq-permutation")
DEFAULT_ESTIMATOR = "scar-kernel"
"""The project's default estimator: KernelSHAP (``scar.shapley.DEFAULT_METHOD``)."""


@dataclass
class _TableGame:
    """A span game served from the exact table; charges tokens as the engine that would run it would."""

    inst: Instance
    table: np.ndarray

    def values(self, bits: np.ndarray) -> np.ndarray:
        return self.table[bitmask(bits)]

    def plain(self, bits: np.ndarray) -> int:
        return plain_tokens(self.inst, bits)


def estimate_from_table(inst: Instance, table: np.ndarray, method: str, *, budget: int | None,
                        seed: int) -> RunResult:
    """This project's estimator ``method`` (``permutation``, ``kernel``, ``stratified`` or ``owen`` over
    :func:`~scar_bench.workloads.binary_hierarchy`) on the span game served from the exact ``table`` of
    :func:`~scar_bench.methods.exact_shapley` (the numbers the reward model gives), charged the trie
    tokens of its plan (what the ``trie`` engines compute, up to pass splitting)."""
    plan: list[np.ndarray] = []

    def value_fn(c: torch.Tensor) -> np.ndarray:
        plan.append(c.numpy().copy())
        return table[bitmask(c.numpy())]

    hierarchy = binary_hierarchy(range(len(inst.players))) if method == "owen" else None
    res = shapley(value_fn, len(inst.players), method=method, budget=budget, seed=seed, hierarchy=hierarchy)
    return RunResult(res.values.numpy(), res.n_evals, trie_lower_bound(inst, np.concatenate(plan)), 1)


def accuracy_study(inst: Instance, *, budgets: dict[str, Sequence[int]], seeds: Sequence[int] = (0, 1, 2),
                   exact: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """Error (relative L2 to exact Shapley) against coalitions evaluated and tokens computed.

    Sampled methods draw their coalitions from the exact table of all ``2**n`` values (the same
    numbers the reward model gives), so many budgets and seeds are cheap. Tokens computed: this
    project's estimators are charged the trie tokens of their plan (what the ``trie`` backend runs,
    up to pass splitting); the peers the plain tokens of every coalition they evaluate (their engines
    score each coalition as its own sequence; padding not counted). ``shap-partition`` runs the real
    model through its Text masker (token-level; its token values are summed onto the span players)
    and is charged the tokens of the sequences it scored.

    Args:
        budgets: per method in :data:`ACCURACY_METHODS`, the budgets to try (permutations for
            ``*-permutation``/``captum-svs``, coalitions for ``*-kernel``, max_evals for
            ``shap-partition``; for ``scar-owen`` permutations, or ``None`` for its exact Owen values
            over :func:`~scar_bench.workloads.binary_hierarchy`).
        exact: ``(values, table)`` from :func:`~scar_bench.methods.exact_shapley` (computed when omitted).

    Returns:
        One dict per (method, budget, seed): method, budget, seed, coalitions, tokens, rel_l2_error.
    """
    ref, table = exact if exact is not None else exact_shapley(inst)
    game = _TableGame(inst, table)
    rows = []
    for method, method_budgets in budgets.items():
        if method not in ACCURACY_METHODS:
            raise ValueError(f"unknown accuracy method {method!r}; known: {', '.join(ACCURACY_METHODS)}")
        for budget in method_budgets:
            deterministic = method == "shap-partition" or (method == "scar-owen" and budget is None)
            for seed in (seeds[:1] if deterministic else seeds):
                if method in ("scar-permutation", "scar-kernel", "scar-owen", "scar-stratified"):
                    r = estimate_from_table(inst, table, method.split("-")[1], budget=budget, seed=seed)
                elif method == "shap-partition":
                    r = run_method(inst, method, budget=budget)
                else:
                    r = run_method(inst, method, budget=budget, seed=seed, value_table=game.values,
                                   token_cost=game.plain)
                rows.append({"method": method, "budget": budget, "seed": seed, "coalitions": r.coalitions,
                             "tokens": r.tokens, "rel_l2_error": rel_l2(r.values, ref)})
    return rows


def summarize_accuracy(rows: Sequence[dict]) -> list[dict]:
    """Median over seeds per (method, budget): coalitions, tokens and error; plus, for the default
    estimator, how every other method compares at the same tokens computed (log-log interpolation
    of its median curve; ``nan`` outside its measured range)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in groups.items():
        out.append({"method": method, "budget": budget, "seeds": len(rs),
                    "coalitions": statistics.median(r["coalitions"] for r in rs),
                    "tokens": statistics.median(r["tokens"] for r in rs),
                    "rel_l2_error": statistics.median(r["rel_l2_error"] for r in rs)})
    out.sort(key=lambda r: (r["method"], r["tokens"]))
    curves = {m: [(r["tokens"], r["rel_l2_error"]) for r in out if r["method"] == m]
              for m in {r["method"] for r in out}}
    for r in out:
        if r["method"] != DEFAULT_ESTIMATOR:
            continue
        for other, pts in curves.items():
            if other == DEFAULT_ESTIMATOR:
                continue
            err = _interp_loglog(pts, r["tokens"])
            r[f"error_ratio_vs_{other}"] = r["rel_l2_error"] / err if err == err else float("nan")
    return out


def _interp_loglog(points: Sequence[tuple[float, float]], x: float) -> float:
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1 and x0 > 0 and x1 > x0 and y0 > 0 and y1 > 0:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    if len(pts) == 1 and pts[0][0] == x:
        return pts[0][1]
    return float("nan")


def format_accuracy_table(summary: Sequence[dict]) -> str:
    """Markdown table of the accuracy summary."""
    others = sorted({k for r in summary for k in r if k.startswith("error_ratio_vs_")})
    head = "| method | budget | seeds | coalitions | tokens | rel L2 err (median) |"
    if others:
        head += " " + " | ".join(k.replace("error_ratio_vs_", "err / ") for k in others) + " |"
    lines = [head, "|" + "---|" * (6 + len(others))]
    for r in summary:
        line = (f"| {r['method']} | {r['budget']} | {r['seeds']} | {r['coalitions']:.0f} | {r['tokens']:.0f} | "
                f"{r['rel_l2_error']:.4f} |")
        if others:
            line += " " + " | ".join(f"{r[k]:.2f}" if k in r and r[k] == r[k] else "" for k in others) + " |"
        lines.append(line)
    return "\n".join(lines)


def plot_accuracy(summary: Sequence[dict], path: str, *, title: str = "") -> None:
    """Error against tokens computed and against coalitions evaluated (log-log), one line per method;
    ``title`` (e.g. the workload) is appended to the figure's title."""
    import matplotlib  # optional (bench extra), needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = sorted({r["method"] for r in summary})
    for ax, xkey, label in ((axes[0], "tokens", "tokens computed"), (axes[1], "coalitions", "coalitions evaluated")):
        for m in methods:
            pts = sorted((r[xkey], r["rel_l2_error"]) for r in summary if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m,
                    linewidth=2.5 if m == DEFAULT_ESTIMATOR else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("relative L2 error vs exact Shapley")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy per unit of compute (median over seeds)" + (f": {title}" if title else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
