"""The headline comparison: wall time per response at equal or lower error than the SCAR authors' path.

The authors computed their rewards with shap's Partition explainer (500 evaluations, one reward-model
call per masked string). This module asks what it costs this project to be *at least as accurate*:

1. for every response of a workload, the exact Shapley values over all ``2**n`` span coalitions (the
   ground truth) and the table of all coalition values, scored with the trie backend;
2. the authors' path, timed, and its relative L2 error;
3. a sweep of this project's estimators (``permutation``, ``kernel``, ``stratified``) and budgets: errors
   from the exact table (many seeds, cheap), wall time from real runs of the ``trie`` engine with the
   tree-attention kernel (the coalitions a seed plans are scored by the reward model, not read from the
   table);
4. the fastest (estimator, budget) whose mean error is at most the authors' mean error (:func:`select_by_mean`),
   and the fastest whose error is at most the authors' on every response (:func:`select_per_response`:
   each response's mean over seeds against the authors' error on that response), with their speedups;
5. the exact Owen values of every response over the balanced binary span hierarchy (what ``owen`` uses
   here, the shape of shap's Partition clustering, whose values the authors' path converges to at token
   level) and their distance to the Shapley values.

:func:`measure_response` measures one response; :func:`summarize_equal_error` builds the report over the
responses measured so far, so a long run can be saved (and cut) response by response.

Everything runs with :data:`scar_bench.measure.BENCH_THREADS` torch threads.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from tqdm.auto import tqdm

from scar_bench.accuracy import estimate_from_table
from scar_bench.measure import bench_threads, machine_description, rel_l2, timed
from scar_bench.methods import exact_shapley, run_method
from scar_bench.peers import AUTHORS_METHOD, SHAP_PARTITION_EVALS
from scar_bench.tables import REFERENCE_MAX_PLAYERS
from scar_bench.workloads import Instance

__all__ = ["CANDIDATES", "EqualErrorReport", "equal_error", "format_equal_error", "measure_response",
           "plot_equal_error", "report_from_record", "select_by_mean", "select_per_response", "summarize_equal_error"]

CANDIDATES: dict[str, tuple[int, ...]] = {
    "permutation": (2, 4, 6, 8, 12, 16, 24, 32),
    "kernel": (34, 50, 68, 100, 136, 200, 272, 400, 544),
    "stratified": (34, 50, 68, 100, 136, 200, 272, 400, 544),
}
"""Budgets swept per estimator: permutations for ``permutation``, sampled coalitions for ``kernel`` and
``stratified``."""

AUTHORS_WARMUP_EVALS = 40
"""Evaluations of the untimed warm-up call of the authors' path before the first response."""

_ENGINE_METHOD = {"permutation": "scar-trie-kernel", "kernel": "scar-kernel", "stratified": "scar-stratified"}


@dataclass
class EqualErrorReport:
    """What :func:`equal_error` measured.

    Attributes:
        workload: the workload's row id.
        authors: per response: ``wall``, ``cpu`` seconds, ``tokens`` and ``error`` of the authors' path.
        sweep: per (estimator, budget): ``error`` (mean over responses and seeds), ``error_by_response``
            (each response's mean over seeds), ``error_max`` (the worst of those),
            ``responses_at_most_authors`` (on how many responses that mean is at most the authors' error
            on the same response), ``runs_at_most_authors`` (share of the (response, seed) runs at most the
            authors' error on their response), ``coalitions`` and ``tokens`` (means), ``wall`` and ``cpu``
            (median over responses of each response's median over timed rounds), ``wall_by_response``.
        chosen: by the mean criterion (:func:`select_by_mean`): the sweep row with the smallest ``wall``
            among those with ``error <= authors_error``, or ``None`` when no swept budget is that accurate.
        chosen_each: by the per-response criterion (:func:`select_per_response`): the row with the smallest
            ``wall`` whose error is at most the authors' on every response, or ``None``.
        authors_error, authors_wall, authors_cpu: mean error and median seconds per response.
        machine: :func:`scar_bench.measure.machine_description` at the end of the run.
        seeds, rounds: seeds per error estimate and timed runs per (estimator, budget, response).
        per_response: per response: ``v_full``, ``v_empty``, the ``exact`` values,
            ``uniform_split_error`` (the error of splitting ``v(N) - v(∅)`` evenly: near 1 when credit is
            concentrated, near 0 for an almost symmetric game), the exact ``owen`` values over
            :func:`~scar_bench.workloads.binary_hierarchy`, ``owen_shapley`` (their relative L2 distance to
            the Shapley values) and ``authors_owen`` (the authors' values' distance to them).
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
    chosen_each: dict | None = None

    @property
    def speedup_wall(self) -> float:
        """Authors' median wall seconds per response over the chosen configuration's (``nan`` if none)."""
        return self.authors_wall / self.chosen["wall"] if self.chosen else float("nan")

    @property
    def speedup_cpu(self) -> float:
        """The same ratio in CPU seconds."""
        return self.authors_cpu / self.chosen["cpu"] if self.chosen else float("nan")

    @property
    def speedup_wall_each(self) -> float:
        """Authors' median wall seconds per response over that of the per-response choice (``nan`` if none)."""
        return self.authors_wall / self.chosen_each["wall"] if self.chosen_each else float("nan")

    @property
    def speedup_cpu_each(self) -> float:
        """The same ratio in CPU seconds."""
        return self.authors_cpu / self.chosen_each["cpu"] if self.chosen_each else float("nan")

    def owen_shapley(self) -> dict[str, float]:
        """Mean, min and max over responses of the relative L2 distance from exact Owen to Shapley values."""
        d = [r["owen_shapley"] for r in self.per_response if "owen_shapley" in r]
        if not d:
            return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
        return {"mean": float(np.mean(d)), "min": float(min(d)), "max": float(max(d))}


def select_by_mean(sweep: Sequence[dict], authors_error: float) -> dict | None:
    """The row of ``sweep`` with the smallest ``wall`` among those whose mean ``error`` is at most
    ``authors_error`` (the authors' mean error), or ``None``."""
    ok = [r for r in sweep if r["error"] <= authors_error]
    return min(ok, key=lambda r: r["wall"]) if ok else None


def select_per_response(sweep: Sequence[dict], authors_errors: Sequence[float]) -> dict | None:
    """The row of ``sweep`` with the smallest ``wall`` among those whose ``error_by_response[i]`` is at most
    ``authors_errors[i]`` for *every* response ``i``, or ``None``.

    Raises:
        ValueError: a row's ``error_by_response`` does not have one entry per response.
    """
    ok = []
    for r in sweep:
        if len(r["error_by_response"]) != len(authors_errors):
            raise ValueError(f"row {r.get('estimator')}/{r.get('budget')} has {len(r['error_by_response'])} "
                             f"per-response errors for {len(authors_errors)} responses")
        if all(e <= a for e, a in zip(r["error_by_response"], authors_errors)):
            ok.append(r)
    return min(ok, key=lambda r: r["wall"]) if ok else None


def _check_instances(instances: Sequence[Instance]) -> int:
    if not instances:
        raise ValueError("equal_error needs at least one instance")
    names = {inst.workload.name for inst in instances}
    if len({replace(i.workload, seed=0, n_perms=2) for i in instances}) != 1:
        raise ValueError(f"instances must share model, lengths and players; got workloads {sorted(names)}")
    n = len(instances[0].players)
    if n > REFERENCE_MAX_PLAYERS:
        raise ValueError(f"{n} players: exact references are limited to {REFERENCE_MAX_PLAYERS}")
    return n


def _check_candidates(candidates: dict[str, Sequence[int]] | None) -> list[tuple[str, int]]:
    candidates = dict(CANDIDATES if candidates is None else candidates)
    unknown = set(candidates) - set(_ENGINE_METHOD)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; known: {sorted(_ENGINE_METHOD)}")
    return [(m, b) for m, budgets in candidates.items() for b in budgets]


def measure_response(inst: Instance, *, candidates: dict[str, Sequence[int]] | None = None,
                     seeds: Sequence[int] = range(5), rounds: int = 3, authors_evals: int = SHAP_PARTITION_EVALS,
                     progress: Callable[[], None] | None = None) -> dict:
    """Everything :func:`equal_error` measures on one response (a JSON-able dict).

    Keys: ``authors`` (``wall``, ``cpu``, ``tokens``, ``error``), ``response`` (the ``per_response`` entry of
    :class:`EqualErrorReport`) and ``configs``: per (estimator, budget), ``estimator``, ``budget``,
    ``errors`` (one per seed), ``coalitions``, ``tokens`` (per seed), ``wall`` and ``cpu`` (median of
    ``rounds`` real runs on the trie engine with the tree-attention kernel, after one warm-up).
    Run it under :func:`scar_bench.measure.bench_threads`.
    """
    n = len(inst.players)
    configs = _check_candidates(candidates)
    seeds = list(seeds)
    tick = progress or (lambda: None)
    ref, table = exact_shapley(inst)
    tick()
    t = timed(lambda: run_method(inst, AUTHORS_METHOD, budget=authors_evals), 1, warmup=False)
    authors = {"wall": t.wall, "cpu": t.cpu, "tokens": t.result.tokens, "error": rel_l2(t.result.values, ref)}
    tick()
    owen = estimate_from_table(inst, table, "owen", budget=None, seed=0).values  # exact: no budget
    response = {"v_full": float(table[-1]), "v_empty": float(table[0]), "exact": ref.tolist(),
                "uniform_split_error": rel_l2(np.full(n, ref.sum() / n), ref), "owen": np.asarray(owen).tolist(),
                "owen_shapley": rel_l2(owen, ref), "authors_owen": rel_l2(t.result.values, owen)}
    rows = []
    for method, budget in configs:
        runs = [estimate_from_table(inst, table, method, budget=budget, seed=seed) for seed in seeds]
        timing = timed(lambda m=method, b=budget: run_method(inst, _ENGINE_METHOD[m], budget=b), rounds)
        rows.append({"estimator": method, "budget": budget, "errors": [rel_l2(r.values, ref) for r in runs],
                     "coalitions": [r.coalitions for r in runs], "tokens": [r.tokens for r in runs],
                     "wall": timing.wall, "cpu": timing.cpu})
        tick()
    return {"authors": authors, "response": response, "configs": rows}


def summarize_equal_error(workload: str, measured: Sequence[dict], *, seeds: int, rounds: int,
                          authors_evals: int = SHAP_PARTITION_EVALS, machine: str = "") -> EqualErrorReport:
    """The report over the responses in ``measured`` (from :func:`measure_response`, same candidates)."""
    if not measured:
        raise ValueError("summarize_equal_error needs at least one measured response")
    authors = [m["authors"] for m in measured]
    authors_errors = [a["error"] for a in authors]
    keys = [(c["estimator"], c["budget"]) for c in measured[0]["configs"]]
    if any([(c["estimator"], c["budget"]) for c in m["configs"]] != keys for m in measured):
        raise ValueError("every measured response must have the same (estimator, budget) rows")
    sweep = []
    for k, (method, budget) in enumerate(keys):
        cs = [m["configs"][k] for m in measured]
        by_resp = [float(np.mean(c["errors"])) for c in cs]
        runs_ok = [e <= a for c, a in zip(cs, authors_errors) for e in c["errors"]]
        sweep.append({"estimator": method, "budget": budget,
                      "error": float(np.mean([e for c in cs for e in c["errors"]])), "error_max": max(by_resp),
                      "error_by_response": by_resp,
                      "responses_at_most_authors": sum(e <= a for e, a in zip(by_resp, authors_errors)),
                      "runs_at_most_authors": float(np.mean(runs_ok)),
                      "coalitions": float(np.mean([x for c in cs for x in c["coalitions"]])),
                      "tokens": float(np.mean([x for c in cs for x in c["tokens"]])),
                      "wall": statistics.median(c["wall"] for c in cs), "cpu": statistics.median(c["cpu"] for c in cs),
                      "wall_by_response": [c["wall"] for c in cs]})
    authors_error = float(np.mean(authors_errors))
    return EqualErrorReport(workload, authors, sweep, select_by_mean(sweep, authors_error), authors_error,
                            statistics.median(a["wall"] for a in authors),
                            statistics.median(a["cpu"] for a in authors), machine, seeds, rounds,
                            [m["response"] for m in measured], authors_evals,
                            select_per_response(sweep, authors_errors))


def equal_error(instances: Sequence[Instance], *, candidates: dict[str, Sequence[int]] | None = None,
                seeds: Sequence[int] = range(5), rounds: int = 3, authors_evals: int = SHAP_PARTITION_EVALS,
                progress: bool = False, on_response: Callable[[EqualErrorReport], None] | None = None,
                deadline: float | None = None) -> EqualErrorReport:
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
        on_response: called with the report over the responses measured so far, after each response
            (e.g. to save a partial record).
        deadline: a ``time.time()`` after which no new response is started (the report then covers the
            responses measured before it; at least one is always measured).

    Raises:
        ValueError: no instances, instances of different workloads, too many players, unknown estimator.
    """
    _check_instances(instances)
    configs = _check_candidates(candidates)
    seeds = list(seeds)
    bar = tqdm(total=len(instances) * (2 + len(configs)), desc="equal error", disable=not progress)
    measured: list[dict] = []
    report = None
    with bench_threads():
        # shap's first call in a process pays its imports and setup: keep that out of the first response.
        run_method(instances[0], AUTHORS_METHOD, budget=min(authors_evals, AUTHORS_WARMUP_EVALS))
        for inst in instances:
            if measured and deadline is not None and time.time() > deadline:
                break
            measured.append(measure_response(inst, candidates=candidates, seeds=seeds, rounds=rounds,
                                             authors_evals=authors_evals, progress=lambda: bar.update(1)))
            report = summarize_equal_error(instances[0].workload.name, measured, seeds=len(seeds), rounds=rounds,
                                           authors_evals=authors_evals, machine=machine_description())
            if on_response is not None:
                on_response(report)
    bar.close()
    return report


def report_from_record(record: dict) -> EqualErrorReport:
    """The :class:`EqualErrorReport` of a JSON record (``dataclasses.asdict`` of one, plus any other keys),
    with ``chosen`` and ``chosen_each`` pointing at their rows of ``sweep``."""
    names = {f.name for f in fields(EqualErrorReport)}
    report = EqualErrorReport(**{k: v for k, v in record.items() if k in names})
    for attr in ("chosen", "chosen_each"):
        c = getattr(report, attr)
        if c is not None:
            setattr(report, attr, next(r for r in report.sweep
                                       if (r["estimator"], r["budget"]) == (c["estimator"], c["budget"])))
    return report


def format_equal_error(report: EqualErrorReport) -> str:
    """Markdown: the authors' row, the sweep, the two verdicts (by mean error, on every response), the
    per-response table of the authors' path and the per-response choice, and the Owen-Shapley distances."""
    k = len(report.authors)
    lines = [f"Workload `{report.workload}`, {k} responses, {report.seeds} seeds, {report.rounds} timed runs; "
             f"machine: {report.machine}.", "",
             "| method | budget | rel L2 err (mean) | worst response | responses at or below the authors' error "
             "| runs at or below | coalitions | tokens | wall s | CPU s | speedup vs authors (wall) | (CPU) |",
             "|" + "---|" * 12]
    a_tok = float(np.mean([a["tokens"] for a in report.authors]))
    lines.append(f"| shap-partition (authors) | {report.authors_evals} | {report.authors_error:.4f} | "
                 f"{max(a['error'] for a in report.authors):.4f} | – | – | {report.authors_evals} | {a_tok:.0f} | "
                 f"{report.authors_wall:.3f} | {report.authors_cpu:.3f} | 1.0x | 1.0x |")
    for r in sorted(report.sweep, key=lambda r: (r["estimator"], r["budget"])):
        marks = [m for m, c in (("by mean", report.chosen), ("on every response", report.chosen_each)) if r is c]
        mark = f" **(chosen {', '.join(marks)})**" if marks else ""
        lines.append(f"| scar {r['estimator']} + trie-kernel{mark} | {r['budget']} | {r['error']:.4f} | "
                     f"{r['error_max']:.4f} | {r['responses_at_most_authors']} of {k} | "
                     f"{r.get('runs_at_most_authors', float('nan')):.2f} | "
                     f"{r['coalitions']:.0f} | {r['tokens']:.0f} | {r['wall']:.3f} | "
                     f"{r['cpu']:.3f} | {report.authors_wall / r['wall']:.1f}x | "
                     f"{report.authors_cpu / r['cpu']:.1f}x |")
    lines.append("")
    if report.chosen is None:
        lines.append(f"- By mean error: no swept configuration reaches the authors' mean error "
                     f"{report.authors_error:.4f}.")
    else:
        c = report.chosen
        lines.append(f"- By mean error ({c['error']:.4f} <= {report.authors_error:.4f}): `{c['estimator']}` with "
                     f"budget {c['budget']}, {c['wall']:.3f} s per response against the authors' "
                     f"{report.authors_wall:.3f} s: **{report.speedup_wall:.1f}x by wall time, "
                     f"{report.speedup_cpu:.1f}x by CPU time** (median seconds per response).")
    each = report.chosen_each
    if each is None:
        lines.append("- On every response: no swept configuration is at or below the authors' error on each "
                     "response.")
    else:
        ratios = [a["wall"] / w for a, w in zip(report.authors, each.get("wall_by_response", []))]
        extra = (f"; per response the authors' wall over its wall is {min(ratios):.1f}x to {max(ratios):.1f}x "
                 f"(median {statistics.median(ratios):.1f}x)") if ratios else ""
        lines.append(f"- On every response (each response's mean error over the seeds at most the authors' on "
                     f"that response): `{each['estimator']}` with budget {each['budget']}, {each['wall']:.3f} s "
                     f"per response: **{report.speedup_wall_each:.1f}x by wall time, "
                     f"{report.speedup_cpu_each:.1f}x by CPU time**{extra}.")
    if report.per_response and "owen_shapley" in report.per_response[0]:
        o = report.owen_shapley()
        ao = [r["authors_owen"] for r in report.per_response]
        lines.append(f"- Exact Owen values (balanced binary span hierarchy, the shape of shap's Partition "
                     f"clustering) against exact Shapley values, relative L2 per response: mean {o['mean']:.3f}, "
                     f"min {o['min']:.3f}, max {o['max']:.3f}; the authors' values against those Owen values: "
                     f"mean {np.mean(ao):.3f}.")
    lines += ["", "| response | authors' error | authors' wall s | Owen vs Shapley | uniform split error"
              + (f" | {each['estimator']} {each['budget']} error | its wall s | wall ratio |" if each else " |"),
              "|" + "---|" * (8 if each else 5)]
    for i, (a, pr) in enumerate(zip(report.authors, report.per_response)):
        row = (f"| {i} | {a['error']:.4f} | {a['wall']:.3f} | {pr.get('owen_shapley', float('nan')):.4f} | "
               f"{pr['uniform_split_error']:.4f} |")
        if each:
            w = each["wall_by_response"][i] if "wall_by_response" in each else float("nan")
            row += f" {each['error_by_response'][i]:.4f} | {w:.3f} | {a['wall'] / w:.1f}x |"
        lines.append(row)
    return "\n".join(lines)


def plot_equal_error(report: EqualErrorReport, path: str) -> None:
    """Error against wall time per response, one line per estimator, the authors' point, the 50x and 100x
    lines and the two choices (by mean error, on every response)."""
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
    ax.axvline(report.authors_wall / 100, color="grey", linestyle="-.", label="100x less wall time")
    ax.axhline(report.authors_error, color="grey", linestyle=":", label="authors' error")
    if report.chosen is not None:
        ax.plot([report.chosen["wall"]], [report.chosen["error"]], marker="o", markersize=12, fillstyle="none",
                color="red", linestyle="none", label="fastest at equal mean error")
    if report.chosen_each is not None:
        ax.plot([report.chosen_each["wall"]], [report.chosen_each["error"]], marker="s", markersize=12,
                fillstyle="none", color="blue", linestyle="none", label="fastest at or below on every response")
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
