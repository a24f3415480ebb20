"""The headline comparison: wall time per response at equal or lower error than the SCAR authors' path.

The authors computed their rewards with shap's Partition explainer (500 evaluations, one reward-model
call per masked string). This module asks what it costs this project to be *at least as accurate*:

1. for every response of a workload, the exact Shapley values over all ``2**n`` span coalitions (the
   ground truth) and the table of all coalition values, scored with the trie backend;
2. the authors' path, timed, and its relative L2 error;
3. a sweep of this project's estimators (``permutation``, ``kernel``) and budgets: errors from the exact
   table (many seeds, cheap), wall time from real runs of the ``trie`` engine with the tree-attention
   kernel (the coalitions a seed plans are scored by the reward model, not read from the table);
4. the fastest (estimator, budget) whose mean error is at most the authors' mean error, and its speedup.

Everything runs with :data:`scar_bench.measure.BENCH_THREADS` torch threads.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from scar_bench.accuracy import estimate_from_table
from scar_bench.measure import bench_threads, machine_description, rel_l2, timed
from scar_bench.methods import exact_shapley, run_method
from scar_bench.peers import AUTHORS_METHOD, SHAP_PARTITION_EVALS
from scar_bench.tables import REFERENCE_MAX_PLAYERS
from scar_bench.workloads import Instance

__all__ = ["CANDIDATES", "EqualErrorReport", "equal_error", "format_equal_error", "plot_equal_error"]

CANDIDATES: dict[str, tuple[int, ...]] = {
    "permutation": (2, 4, 6, 8, 12, 16, 24, 32),
    "kernel": (34, 50, 68, 100, 136, 200, 272, 400, 544),
}
"""Budgets swept per estimator: permutations for ``permutation``, sampled coalitions for ``kernel``."""

_ENGINE_METHOD = {"permutation": "scar-trie-kernel", "kernel": "scar-kernel"}


@dataclass
class EqualErrorReport:
    """What :func:`equal_error` measured.

    Attributes:
        workload: the workload's row id.
        authors: per response: ``wall``, ``cpu`` seconds, ``tokens`` and ``error`` of the authors' path.
        sweep: per (estimator, budget): ``error`` (mean over responses and seeds), ``error_by_response``
            (each response's mean over seeds), ``error_max`` (the worst of those),
            ``responses_at_most_authors`` (on how many responses that mean is at most the authors' error
            on the same response), ``coalitions`` and ``tokens`` (means), ``wall`` and
            ``cpu`` (median over responses of each response's median over timed rounds).
        chosen: the sweep row with the smallest ``wall`` among those with ``error <= authors_error``,
            or ``None`` when no swept budget is that accurate.
        authors_error, authors_wall, authors_cpu: mean error and median seconds per response.
        machine: :func:`scar_bench.measure.machine_description` at the end of the run.
        seeds, rounds: seeds per error estimate and timed runs per (estimator, budget, response).
        per_response: per response: ``v_full``, ``v_empty``, the ``exact`` values and
            ``uniform_split_error`` (the error of splitting ``v(N) - v(∅)`` evenly: near 1 when credit is
            concentrated, near 0 for an almost symmetric game).
        authors_evals: shap Partition's ``max_evals``.
    """

    workload: str
    authors: list[dict]
    sweep: list[dict]
    chosen: dict | None
    authors_error: float
    authors_wall: float
    authors_cpu: float
    machine: str = ""
    seeds: int = 0
    rounds: int = 0
    per_response: list[dict] = field(default_factory=list)
    authors_evals: int = SHAP_PARTITION_EVALS

    @property
    def speedup_wall(self) -> float:
        """Authors' median wall seconds per response over the chosen configuration's (``nan`` if none)."""
        return self.authors_wall / self.chosen["wall"] if self.chosen else float("nan")

    @property
    def speedup_cpu(self) -> float:
        """The same ratio in CPU seconds."""
        return self.authors_cpu / self.chosen["cpu"] if self.chosen else float("nan")


def equal_error(instances: Sequence[Instance], *, candidates: dict[str, Sequence[int]] | None = None,
                seeds: Sequence[int] = range(5), rounds: int = 3, authors_evals: int = SHAP_PARTITION_EVALS,
                progress: bool = False) -> EqualErrorReport:
    """Run the comparison on ``instances`` (the responses of one workload; same model and shapes).

    Args:
        instances: from :func:`scar_bench.workloads.make_instance`; at most
            :data:`scar_bench.tables.REFERENCE_MAX_PLAYERS` players
            (the ground truth enumerates every coalition).
        candidates: estimator -> budgets (default :data:`CANDIDATES`).
        seeds: seeds of the sampled estimators for the error estimate.
        rounds: timed runs per (estimator, budget, response), after one warm-up run.
        authors_evals: shap Partition's ``max_evals`` (500 = its default, the authors' setting).
        progress: show a progress bar.

    Raises:
        ValueError: no instances, instances of different workloads, too many players, unknown estimator.
    """
    if not instances:
        raise ValueError("equal_error needs at least one instance")
    names = {inst.workload.name for inst in instances}
    if len({replace(i.workload, seed=0, n_perms=2) for i in instances}) != 1:
        raise ValueError(f"instances must share model, lengths and players; got workloads {sorted(names)}")
    n = len(instances[0].players)
    if n > REFERENCE_MAX_PLAYERS:
        raise ValueError(f"{n} players: exact references are limited to {REFERENCE_MAX_PLAYERS}")
    candidates = dict(CANDIDATES if candidates is None else candidates)
    unknown = set(candidates) - set(_ENGINE_METHOD)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; known: {sorted(_ENGINE_METHOD)}")
    seeds = list(seeds)
    configs = [(m, b) for m, budgets in candidates.items() for b in budgets]

    bar = tqdm(total=len(instances) * (2 + len(configs)), desc="equal error", disable=not progress)
    authors, per_config = [], {c: {"err": [], "worst": [], "coal": [], "tok": [], "wall": [], "cpu": []}
                               for c in configs}
    per_response = []
    with bench_threads():
        for inst in instances:
            ref, table = exact_shapley(inst)
            bar.update(1)
            t = timed(lambda inst=inst: run_method(inst, AUTHORS_METHOD, budget=authors_evals), 1, warmup=False)
            authors.append({"wall": t.wall, "cpu": t.cpu, "tokens": t.result.tokens,
                            "error": rel_l2(t.result.values, ref)})
            bar.update(1)
            per_response.append({"v_full": float(table[-1]), "v_empty": float(table[0]),
                                 "exact": ref.tolist(), "uniform_split_error":
                                 rel_l2(np.full(n, ref.sum() / n), ref)})
            for method, budget in configs:
                runs = [estimate_from_table(inst, table, method, budget=budget, seed=seed) for seed in seeds]
                acc = per_config[(method, budget)]
                errs = [rel_l2(r.values, ref) for r in runs]
                acc["err"].extend(errs)
                acc["worst"].append(float(np.mean(errs)))
                acc["coal"].extend(r.coalitions for r in runs)
                acc["tok"].extend(r.tokens for r in runs)
                timing = timed(lambda inst=inst, m=method, b=budget: run_method(inst, _ENGINE_METHOD[m], budget=b),
                               rounds)
                acc["wall"].append(timing.wall)
                acc["cpu"].append(timing.cpu)
                bar.update(1)
        machine = machine_description()
    bar.close()
    authors_errors = [a["error"] for a in authors]
    sweep = [{"estimator": m, "budget": b, "error": float(np.mean(acc["err"])), "error_max": max(acc["worst"]),
              "error_by_response": acc["worst"],
              "responses_at_most_authors": sum(e <= a for e, a in zip(acc["worst"], authors_errors)),
              "coalitions": float(np.mean(acc["coal"])), "tokens": float(np.mean(acc["tok"])),
              "wall": statistics.median(acc["wall"]), "cpu": statistics.median(acc["cpu"])}
             for (m, b), acc in per_config.items()]
    authors_error = float(np.mean([a["error"] for a in authors]))
    ok = [r for r in sweep if r["error"] <= authors_error]
    chosen = min(ok, key=lambda r: r["wall"]) if ok else None
    return EqualErrorReport(instances[0].workload.name, authors, sweep, chosen, authors_error,
                            statistics.median(a["wall"] for a in authors),
                            statistics.median(a["cpu"] for a in authors), machine, len(seeds), rounds,
                            per_response, authors_evals)


def format_equal_error(report: EqualErrorReport) -> str:
    """Markdown: the authors' row, the sweep (fastest first among the accurate enough) and the verdict."""
    lines = [f"Workload `{report.workload}`, {len(report.authors)} responses; machine: {report.machine}.", "",
             "| method | budget | rel L2 err (mean) | worst response | responses at or below the authors' error "
             "| coalitions | tokens | wall s | CPU s | speedup vs authors (wall) | (CPU) |", "|" + "---|" * 11]
    a_tok = float(np.mean([a["tokens"] for a in report.authors]))
    lines.append(f"| shap-partition (authors) | {report.authors_evals} | {report.authors_error:.4f} | "
                 f"{max(a['error'] for a in report.authors):.4f} | – | {report.authors_evals} | {a_tok:.0f} | "
                 f"{report.authors_wall:.3f} | {report.authors_cpu:.3f} | 1.0x | 1.0x |")
    for r in sorted(report.sweep, key=lambda r: (r["estimator"], r["budget"])):
        mark = " **(chosen)**" if r is report.chosen else ""
        lines.append(f"| scar {r['estimator']} + trie-kernel{mark} | {r['budget']} | {r['error']:.4f} | "
                     f"{r['error_max']:.4f} | {r['responses_at_most_authors']} of {len(report.authors)} | "
                     f"{r['coalitions']:.0f} | {r['tokens']:.0f} | {r['wall']:.3f} | "
                     f"{r['cpu']:.3f} | {report.authors_wall / r['wall']:.1f}x | "
                     f"{report.authors_cpu / r['cpu']:.1f}x |")
    lines.append("")
    if report.chosen is None:
        lines.append(f"No swept configuration reaches the authors' mean error {report.authors_error:.4f}.")
    else:
        c = report.chosen
        lines.append(f"Fastest configuration at equal or lower mean error ({c['error']:.4f} <= "
                     f"{report.authors_error:.4f}): `{c['estimator']}` with budget {c['budget']} on the trie "
                     f"engine with the tree-attention kernel, {c['wall']:.3f} s per response against the "
                     f"authors' {report.authors_wall:.3f} s: **{report.speedup_wall:.1f}x by wall time, "
                     f"{report.speedup_cpu:.1f}x by CPU time**.")
    return "\n".join(lines)


def plot_equal_error(report: EqualErrorReport, path: str) -> None:
    """Error against wall time per response, one line per estimator, the authors' point and the 50x line."""
    import matplotlib  # optional (bench extra), needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in sorted({r["estimator"] for r in report.sweep}):
        pts = sorted((r["wall"], r["error"]) for r in report.sweep if r["estimator"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"scar {m} + trie-kernel")
    ax.plot([report.authors_wall], [report.authors_error], marker="*", markersize=14, linestyle="none",
            color="black", label="shap Partition, 500 evals (authors)")
    ax.axvline(report.authors_wall / 50, color="grey", linestyle="--", label="50x less wall time")
    ax.axhline(report.authors_error, color="grey", linestyle=":", label="authors' error")
    if report.chosen is not None:
        ax.plot([report.chosen["wall"]], [report.chosen["error"]], marker="o", markersize=12, fillstyle="none",
                color="red", linestyle="none", label="fastest at equal error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall seconds per response")
    ax.set_ylabel("relative L2 error vs exact Shapley (mean)")
    ax.set_title(f"{report.workload}: error against time", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
