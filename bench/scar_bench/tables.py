"""The engine table: one row of figures per (workload, method), under pytest-benchmark or driven directly.

A row (:func:`engine_row`) holds wall and CPU seconds per response, coalitions and tokens, the ratio of
tokens to the prefix-trie lower bound and of time to one plain forward over as many tokens, peak memory,
the speedup over the authors' path (``shap-partition``) and the error against exact Shapley values
(:func:`reference_values`). :func:`engine_rows` times methods on one instance, :func:`bench_row` is the
body of one ``bench/`` row under pytest-benchmark, and :func:`run_table` prints the target workload's
table (``python bench/run.py table``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from scar_bench.measure import (
    PeakMemory,
    RunResult,
    Timing,
    bench_threads,
    machine_description,
    plain_forward_seconds,
    rel_l2,
    timed,
)
from scar_bench.methods import ENGINE_METHODS, exact_shapley, run_method, trie_lower_bound
from scar_bench.peers import AUTHORS_METHOD
from scar_bench.workloads import MODEL_SIZES, QUICK_WORKLOAD, TARGET_WORKLOAD, Instance, Workload, make_instance

__all__ = [
    "FAST_METHODS",
    "REFERENCE_MAX_PLAYERS",
    "AUTHORS_TIMINGS",
    "reference_values",
    "engine_row",
    "engine_rows",
    "bench_row",
    "format_engine_table",
    "run_table",
]

FAST_METHODS = ("scar-trie", "scar-trie-kernel")
"""Rows cheap enough to time over several rounds; the rest get one timed run (a row of the authors'
path takes minutes on the small model)."""

REFERENCE_MAX_PLAYERS = 16
_REFERENCES: dict[tuple, np.ndarray] = {}


def reference_values(inst: Instance) -> np.ndarray | None:
    """Exact span-player Shapley values of an instance (cached per workload), or ``None`` above
    ``REFERENCE_MAX_PLAYERS`` players (``2**n`` coalitions would take too long)."""
    if len(inst.players) > REFERENCE_MAX_PLAYERS:
        return None
    key = (inst.workload, id(inst.model))
    if key not in _REFERENCES:
        _REFERENCES[key] = exact_shapley(inst)[0]
    return _REFERENCES[key]


def engine_row(inst: Instance, method: str, timing: Timing, *, reference: np.ndarray | None = None,
               authors: Timing | None = None) -> dict:
    """The figures of one engine-table row (JSON-serialisable, for ``benchmark.extra_info``).

    Args:
        timing: the method's :class:`~scar_bench.measure.Timing` on this instance (one response).
        reference: exact span-player values for the error column.
        authors: the ``shap-partition`` timing on the same workload, for the speedup columns.
    """
    result = timing.result
    lower = result.lower_bound
    if lower is None and result.feature_coalitions is not None and len(result.feature_coalitions):
        lower = trie_lower_bound(inst, result.feature_coalitions, token_level=result.token_level)
    plain_wall, plain_cpu = plain_forward_seconds(inst.model, result.tokens)
    nan = float("nan")
    return {
        "workload": inst.workload.name,
        "method": method,
        "seconds": timing.wall,
        "cpu_seconds": timing.cpu,
        "coalitions": result.coalitions,
        "coalitions_per_s": result.coalitions / timing.wall if timing.wall > 0 else nan,
        "tokens": result.tokens,
        "trie_lower_bound": lower,
        "tokens_over_lb": result.tokens / lower if lower else nan,
        "over_plain_forward": timing.wall / plain_wall,
        "cpu_over_plain_forward": timing.cpu / plain_cpu if plain_cpu > 0 else nan,
        "peak_mib": timing.peak_bytes / 2**20,
        "calls": result.calls,
        "speedup_vs_authors": authors.wall / timing.wall if authors and timing.wall > 0 else nan,
        "cpu_speedup_vs_authors": authors.cpu / timing.cpu if authors and timing.cpu > 0 else nan,
        "rel_l2_error": rel_l2(result.values, reference) if reference is not None else nan,
        "values": result.values.tolist(),
    }


def engine_rows(inst: Instance, methods: Sequence[str] = ENGINE_METHODS, *, rounds: int = 3, slow_rounds: int = 1,
                reference: np.ndarray | None = None, authors: Timing | None = None,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Time every method on one instance and build its row (``on_row`` sees each row as it is made).

    :data:`FAST_METHODS` run one warm-up and ``rounds`` timed runs, the others ``slow_rounds`` timed
    runs without warm-up (call once on a tiny workload first to pay for imports). ``shap-partition``
    (the authors' path) runs first when present, so the other rows carry their speedup over it.
    """
    methods = list(methods)
    if AUTHORS_METHOD in methods:
        methods.remove(AUTHORS_METHOD)
        methods.insert(0, AUTHORS_METHOD)
    rows = []
    for m in methods:
        fast = m in FAST_METHODS
        timing = timed(lambda m=m: run_method(inst, m), rounds if fast else slow_rounds, warmup=fast)
        if m == AUTHORS_METHOD:
            authors = timing
        rows.append(engine_row(inst, m, timing, reference=reference, authors=authors))
        if on_row is not None:
            on_row(rows[-1])
    return rows


AUTHORS_TIMINGS: dict[str, Timing] = {}
"""Timing of the authors' path per workload name, filled by :func:`bench_row` (so rows that run after it
in the same pytest session carry their speedup)."""


def bench_row(benchmark, bench_full: bool, workload: Workload, method: str) -> dict:
    """The body of one ``bench/`` engine row under pytest-benchmark.

    With ``bench_full`` the workload runs at full size (``benchmark.pedantic``: 1 warm-up and 5 rounds
    for :data:`FAST_METHODS`, 1 round otherwise); without, :data:`~scar_bench.workloads.QUICK_WORKLOAD`
    runs once for correctness. pytest-benchmark times the wall clock; the CPU time per round is taken
    alongside. The row's figures go to ``benchmark.extra_info``; the row is returned.
    """
    inst = make_instance(workload if bench_full else QUICK_WORKLOAD)
    fast = method in FAST_METHODS
    box: list[RunResult] = []
    cpus: list[float] = []

    def run() -> None:
        c0 = time.process_time()
        box.append(run_method(inst, method))
        cpus.append(time.process_time() - c0)

    rounds, warmup = (5, 1) if fast and bench_full else (1, 0)
    with bench_threads(), PeakMemory() as mem:
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    stats = getattr(benchmark, "stats", None)
    wall = stats.stats.median if stats is not None else float("nan")
    timing = Timing(wall, statistics.median(cpus[warmup:]), mem.peak_bytes, box[-1])
    if method == AUTHORS_METHOD:
        AUTHORS_TIMINGS[inst.workload.name] = timing
    with bench_threads():
        row = engine_row(inst, method, timing, reference=reference_values(inst),
                         authors=AUTHORS_TIMINGS.get(inst.workload.name))
    benchmark.extra_info.update(row)
    return row


def format_engine_table(rows: Sequence[dict]) -> str:
    """Markdown table of engine rows (wall and CPU seconds per response; ratios to one plain forward over
    the same tokens and speedups over the authors' path, each by wall / by CPU time)."""
    head = ("| workload | method | wall s | CPU s | coal/s (wall) | coalitions | tokens | tokens/LB "
            "| wall/plain fwd | CPU/plain fwd | peak MiB | speedup vs authors (wall) | (CPU) | rel L2 err |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['method']} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | "
            f"{r['coalitions_per_s']:.0f} | {r['coalitions']} | {r['tokens']} | {r['tokens_over_lb']:.2f} | "
            f"{r['over_plain_forward']:.2f} | {r['cpu_over_plain_forward']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['speedup_vs_authors']:.1f}x | {r['cpu_speedup_vs_authors']:.1f}x | {r['rel_l2_error']:.3f} |")
    return "\n".join(lines)


def run_table(quick: bool = False) -> str:
    """The engine table of the target workload (with errors against exact Shapley values), as printed by
    ``python bench/run.py table``. ``quick`` runs the tiny
    :data:`~scar_bench.workloads.QUICK_WORKLOAD` in seconds; the full table takes many minutes."""
    workload = QUICK_WORKLOAD if quick else TARGET_WORKLOAD
    with bench_threads():
        if not quick:
            engine_rows(make_instance(QUICK_WORKLOAD), rounds=1)  # imports and first-call costs
        inst = make_instance(workload)
        rows = engine_rows(inst, rounds=1 if quick else 3, reference=reference_values(inst))
        machine = machine_description()
    return (f"SCAR benchmark: {workload.name} ({MODEL_SIZES[workload.model]}), "
            f"errors vs exact Shapley over {workload.n_players} span players\n"
            f"machine: {machine}\n\n" + format_engine_table(rows))
