"""Resumable driver for the whole benchmark grid (``python bench/run.py grid``) and its markdown table.

Every (workload, method) row of :data:`scar_bench.workloads.GRID` is measured with the same functions as
the ``bench/`` suite (:func:`scar_bench.methods.run_method`, :func:`scar_bench.measure.timed`,
:func:`scar_bench.tables.engine_row`) under one torch thread, and appended to a JSON-lines file as soon
as it is measured (with the machine, the UTC times and the load average around it). Rows already in the
file are skipped, so an interrupted run continues where it stopped.

The authors' path (``shap-partition``) works on the response's tokens, not on the span players: its
output and its cost do not depend on the number of span players or of permutations. It runs once per
(model, prompt, response, seed) and its timing and token values are reused by every workload that shares
them (span values = token values summed per span, as the measured run does; the row names the workload
that was measured in ``shared_from``).

Exact references (the error column) are computed only where cheap: workloads with at most
:data:`REFERENCE_MAX_PLAYERS` span players (``2**8`` coalitions).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from scar_bench.measure import RunResult, Timing, bench_threads, machine_description, timed
from scar_bench.methods import ENGINE_METHODS, exact_shapley, run_method, trie_lower_bound
from scar_bench.peers import AUTHORS_METHOD
from scar_bench.tables import FAST_METHODS, engine_row
from scar_bench.workloads import GRID, MODEL_SIZES, Workload, make_instance

__all__ = [
    "DEFAULT_OUT",
    "REFERENCE_MAX_PLAYERS",
    "GridRun",
    "select_workloads",
    "parse_methods",
    "load_rows",
    "run_grid",
    "format_grid_markdown",
]

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The ``bench/`` folder of the repository (the parent of this package)."""
DEFAULT_OUT = os.path.join(BENCH_DIR, "results", "grid.jsonl")
"""Where ``python bench/run.py grid`` appends its rows: ``bench/results/grid.jsonl``, whatever the working
directory."""
_DEFAULT_OUT_SHOWN = "bench/results/grid.jsonl"  # DEFAULT_OUT as the markdown report names it
REFERENCE_MAX_PLAYERS = 8
"""Exact Shapley references only up to this many span players (``2**8`` coalitions: seconds)."""
SLOW_ROUNDS = 1
"""Timed runs of the methods outside :data:`scar_bench.tables.FAST_METHODS` (no warm-up run)."""
_COLUMNS = ("| workload | method | wall s | CPU s | coal/s (wall) | coalitions | tokens | tokens/LB "
            "| wall / plain fwd | CPU / plain fwd | peak MiB | speedup vs authors (wall) | (CPU) | rel L2 err |")


def select_workloads(patterns: str | Sequence[str] | None, grid: Sequence[Workload] | None = None
                     ) -> list[Workload]:
    """The grid's workloads (default :data:`scar_bench.workloads.GRID`) whose name contains any of ``patterns``
    (comma-separated or a list), in grid order; all of them when ``patterns`` is ``None`` or empty.

    Raises:
        ValueError: when no workload matches.
    """
    grid = GRID if grid is None else grid
    if patterns is None:
        return list(grid)
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",")]
    patterns = [p for p in patterns if p]
    if not patterns:
        return list(grid)
    chosen = [w for w in grid if any(p in w.name for p in patterns)]
    if not chosen:
        raise ValueError(f"no grid workload name contains any of {patterns!r}; names look like "
                         f"{grid[0].name!r}")
    return chosen


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """Method names from ``"m1,m2"`` (or a list), checked against :data:`scar_bench.methods.ENGINE_METHODS`;
    all engine methods when ``None``.

    Raises:
        ValueError: on an unknown or repeated method, or an empty list.
    """
    if text is None:
        return list(ENGINE_METHODS)
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m).strip() for m in text]
    names = [m for m in names if m]
    if not names:
        raise ValueError("no method given; known: " + ", ".join(ENGINE_METHODS))
    unknown = [m for m in names if m not in ENGINE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(ENGINE_METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {names!r}")
    return names


def load_rows(path: str) -> list[dict]:
    """The rows of a grid JSON-lines file (``[]`` when it does not exist).

    Raises:
        ValueError: on a line that is not a JSON object with ``workload`` and ``method``.
    """
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
            if not isinstance(row, dict) or "workload" not in row or "method" not in row:
                raise ValueError(f"{path}:{lineno}: a grid row needs 'workload' and 'method'")
            rows.append(row)
    return rows


@dataclass
class GridRun:
    """What :func:`run_grid` did.

    Attributes:
        measured: rows written by this call, in order.
        skipped: ``(workload, method)`` rows already in the file.
        not_started: rows left when the time limit stopped the run.
        failed: ``(workload, method, error)`` of rows that raised (not written; the run goes on).
    """

    measured: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    not_started: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)


def _authors_key(w: Workload) -> tuple:
    # What the authors' path depends on: the model and the token ids (span players/permutations do not enter).
    return (w.model, w.prompt_tokens, w.response_tokens, w.seed)


def _reference_key(w: Workload) -> tuple:
    return (w.model, w.prompt_tokens, w.response_tokens, w.n_players, w.seed)


def _json_safe(value):
    """NaN/inf become ``null`` (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _timing_from_row(row: dict, result: RunResult) -> Timing:
    return Timing(row["seconds"], row["cpu_seconds"], int((row.get("peak_mib") or 0) * 2**20), result)


def run_grid(workloads: Sequence[Workload], methods: Sequence[str], *, out: str = DEFAULT_OUT,
             max_minutes: float | None = None, rounds: int = 3, command: str = "",
             progress: bool = True, clock: Callable[[], float] = time.monotonic) -> GridRun:
    """Measure every (workload, method) row not yet in ``out`` and append each as one JSON line.

    Rows run workload by workload, methods in the given order (``shap-partition`` first when listed, so
    later rows carry their speedup over it). Methods in :data:`scar_bench.tables.FAST_METHODS` get one
    warm-up and ``rounds`` timed runs, the others :data:`SLOW_ROUNDS` timed run; each method is first
    run once on a tiny instance of the same model (imports, scorer construction). Everything runs under
    :func:`scar_bench.measure.bench_threads` (one thread).

    Args:
        workloads: workloads to cover (e.g. from :func:`select_workloads`).
        methods: method names (e.g. from :func:`parse_methods`).
        out: JSON-lines file, created with its folder when missing.
        max_minutes: start no new row once this many minutes have passed since the call began.
        rounds: timed runs of the fast methods.
        command: the command line, stored in every row.
        progress: show a tqdm progress bar over the rows to do.
        clock: monotonic seconds (tests pass a fake one).

    Raises:
        ValueError: on bad arguments.
    """
    methods = parse_methods(list(methods))
    if not workloads:
        raise ValueError("no workloads given")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not max_minutes >= 0):
        raise ValueError(f"max_minutes must be a number >= 0, got {max_minutes!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if AUTHORS_METHOD in methods:
        methods.remove(AUTHORS_METHOD)
        methods.insert(0, AUTHORS_METHOD)

    existing = load_rows(out)
    done = {(r["workload"], r["method"]) for r in existing}
    authors_rows = {r["workload"]: r for r in existing if r["method"] == AUTHORS_METHOD}
    # Measured authors' runs by what they depend on (rows that reused one carry shared_from).
    authors_runs: dict[tuple, dict] = {}
    by_name = {w.name: w for w in GRID}
    by_name.update({w.name: w for w in workloads})
    for r in existing:
        if r["method"] != AUTHORS_METHOD or r.get("token_values") is None:
            continue
        spec = r.get("workload_spec")
        w = Workload(**spec) if spec else by_name.get(r["workload"])
        if w is not None:
            authors_runs.setdefault(_authors_key(w), r)

    todo = [(w, m) for w in workloads for m in methods]
    run = GridRun(skipped=[(w.name, m) for w, m in todo if (w.name, m) in done])
    todo = [(w, m) for w, m in todo if (w.name, m) not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    references: dict[tuple, np.ndarray] = {}
    warmed: set[tuple[str, str]] = set()
    start = clock()
    bar = None
    if progress:
        bar = tqdm(total=len(todo), desc="grid rows", unit="row")
    try:
        with bench_threads():
            machine = machine_description()
            for i, (w, method) in enumerate(todo):
                if max_minutes is not None and clock() - start >= 60.0 * max_minutes:
                    run.not_started = [(x.name, m) for x, m in todo[i:]]
                    break
                if bar is not None:
                    bar.set_postfix_str(f"{w.name} {method}")
                try:
                    row = _measure_row(w, method, rounds, references, warmed, authors_runs, authors_rows)
                except Exception as e:  # one broken row must not lose the rest of a long run
                    run.failed.append((w.name, method, f"{type(e).__name__}: {e}"))
                    print(f"grid row {w.name} {method} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    if bar is not None:
                        bar.update(1)
                    continue
                row.update(workload_spec=dataclasses.asdict(w), machine=machine, command=command,
                           rounds=rounds if method in FAST_METHODS else SLOW_ROUNDS)
                row = _json_safe(row)
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                run.measured.append(row)
                if method == AUTHORS_METHOD:
                    authors_rows[w.name] = row
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return run


def _measure_row(w: Workload, method: str, rounds: int, references: dict, warmed: set,
                 authors_runs: dict[tuple, dict], authors_rows: dict[str, dict]) -> dict:
    """One row's figures (see :func:`run_grid`); updates the caches it is handed."""
    utc_start, load_start = _utc(), _load1()
    inst = make_instance(w)
    reference = None
    if len(inst.players) <= REFERENCE_MAX_PLAYERS:
        key = _reference_key(w)
        if key not in references:
            references[key] = exact_shapley(inst)[0]
        reference = references[key]
    authors = None
    if w.name in authors_rows:
        a = authors_rows[w.name]
        authors = Timing(a["seconds"], a["cpu_seconds"], 0, None)

    extra: dict = {}
    shared = authors_runs.get(_authors_key(w)) if method == AUTHORS_METHOD else None
    if shared is not None:
        # The authors' path ignores span players and permutations: reuse the measured run.
        token_values = np.asarray(shared["token_values"], dtype=np.float64)
        result = RunResult(np.array([token_values[s:e].sum() for s, e in inst.players]), shared["coalitions"],
                           shared["tokens"], shared["calls"], lower_bound=shared["trie_lower_bound"],
                           token_values=token_values, token_level=True)
        timing = _timing_from_row(shared, result)
        extra["shared_from"] = shared.get("shared_from") or shared["workload"]
        extra["utc_measured"] = shared.get("utc_measured") or shared.get("utc_start")
    else:
        warm_key = (method, w.model)
        if warm_key not in warmed:
            # Imports, first calls and the scorer's construction (cached per model) stay out of the timing.
            run_method(make_instance(Workload(w.model, 16, 8, 4, 2, w.seed)), method)
            warmed.add(warm_key)
        fast = method in FAST_METHODS
        timing = timed(lambda: run_method(inst, method), rounds if fast else SLOW_ROUNDS, warmup=fast)
        if method == AUTHORS_METHOD:
            result = timing.result
            if result.lower_bound is None:
                result.lower_bound = trie_lower_bound(inst, result.feature_coalitions, token_level=True)
    row = engine_row(inst, method, timing, reference=reference, authors=timing if method == AUTHORS_METHOD
                     else authors)
    if method == AUTHORS_METHOD:
        row["token_values"] = timing.result.token_values.tolist()
        if shared is None:
            authors_runs[_authors_key(w)] = {**row, "utc_start": utc_start}
    if shared is not None:
        # Same run, same figures: keep the measured row's ratios to a plain forward (timed in its process).
        for k in ("over_plain_forward", "cpu_over_plain_forward", "coalitions_per_s"):
            row[k] = shared.get(k)
    row.update(extra)
    row.update(utc_start=utc_start, utc_end=_utc(), load_start=load_start, load_end=_load1(),
               reference="exact" if reference is not None else None)
    return row


# ---------------------------------------------------------------------------------------------- markdown


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def _speedups(rows: Sequence[dict]) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """Speedup over the authors' row of the same workload, by wall and by CPU time (from the file, so
    rows measured before their authors' row get one too)."""
    authors = {r["workload"]: r for r in rows if r["method"] == AUTHORS_METHOD}
    out = {}
    for r in rows:
        a = authors.get(r["workload"])
        if a is None or not r.get("seconds") or not r.get("cpu_seconds"):
            out[(r["workload"], r["method"])] = (None, None)
        else:
            out[(r["workload"], r["method"])] = (a["seconds"] / r["seconds"], a["cpu_seconds"] / r["cpu_seconds"])
    return out


def _stats(values: Sequence[float]) -> str:
    if not values:
        return ""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} ({len(values)})"


def _headline(rows: Sequence[dict]) -> list[str]:
    """Cross-grid ratios as a markdown table: min / median / max (number of workloads), over all workloads
    and per model size (the part of the workload name before the first ``_``)."""
    by = {(r["workload"], r["method"]): r for r in rows}
    workloads = sorted({r["workload"] for r in rows})
    models = sorted({w.split("_", 1)[0] for w in workloads}, key=lambda m: list(MODEL_SIZES).index(m)
                    if m in MODEL_SIZES else len(MODEL_SIZES))

    def ratio(num: str, den: str, key: str) -> dict[str, float]:
        out = {}
        for w in workloads:
            a, b = by.get((w, num)), by.get((w, den))
            if a and b and a.get(key) and b.get(key):
                out[w] = a[key] / b[key]
        return out

    def column(method: str, key: str) -> dict[str, float]:
        return {w: by[(w, method)][key] for w in workloads
                if (w, method) in by and by[(w, method)].get(key) is not None}

    metrics: list[tuple[str, dict[str, float]]] = []
    for fast in ("scar-trie-kernel", "scar-trie"):
        for other in (AUTHORS_METHOD, "scar-loop", "scar-batched"):
            for key, label in (("cpu_seconds", "CPU"), ("seconds", "wall")):
                metrics.append((f"`{fast}` speedup over `{other}` ({label} time)", ratio(other, fast, key)))
    metrics.append(("`scar-trie-kernel` speedup over `scar-trie` (CPU time)",
                    ratio("scar-trie", "scar-trie-kernel", "cpu_seconds")))
    for m in ("scar-trie-kernel", "scar-trie"):
        metrics.append((f"`{m}` tokens / trie lower bound", column(m, "tokens_over_lb")))
        metrics.append((f"`{m}` CPU time / one plain forward over as many tokens", column(m, "cpu_over_plain_forward")))
        metrics.append((f"`{m}` wall time / one plain forward over as many tokens", column(m, "over_plain_forward")))
    metrics = [(label, vals) for label, vals in metrics if vals]
    if not metrics:
        return []
    lines = ["min / median / max over the workloads that have both rows (their number in brackets).", "",
             "| ratio | all workloads | " + " | ".join(f"{m} model" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for label, vals in metrics:
        cells = [_stats(list(vals.values()))]
        cells += [_stats([v for w, v in vals.items() if w.split("_", 1)[0] == m]) for m in models]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def format_grid_markdown(rows: Sequence[dict], *, workloads: Sequence[Workload] | None = None,
                         methods: Sequence[str] = ENGINE_METHODS, title: str = "SCAR benchmark grid") -> str:
    """Markdown report of grid rows: a header (machines, dates, commands, load averages), cross-grid
    headline ratios, one table grouped by workload (grid order, then method order) with the columns of
    ``bench/RESULTS.md``, and the list of (workload, method) rows missing from ``workloads x methods``
    (``workloads`` default: :data:`scar_bench.workloads.GRID`; rows of other workloads or methods are left out).
    """
    workloads = GRID if workloads is None else workloads
    order_w = {w.name: i for i, w in enumerate(workloads)}
    order_m = {m: i for i, m in enumerate(methods)}
    rows = [r for r in rows if r["workload"] in order_w and r["method"] in order_m]
    rows = sorted(rows, key=lambda r: (order_w[r["workload"]], order_m[r["method"]]))
    speed = _speedups(rows)
    starts = sorted(r["utc_start"] for r in rows if r.get("utc_start"))
    ends = sorted(r["utc_end"] for r in rows if r.get("utc_end"))
    loads = [x for r in rows for x in (r.get("load_start"), r.get("load_end")) if x is not None]
    first = min(rows, key=lambda r: r.get("utc_start") or "", default=None)
    last = max(rows, key=lambda r: r.get("utc_end") or "", default=None)
    lines = [f"# {title}", ""]
    lines.append(f"{len(rows)} of {len(workloads) * len(methods)} (workload, method) rows measured "
                 f"({len(workloads)} workloads x {len(methods)} methods).")
    lines.append("")
    if rows:
        lines.append(f"- Run: {starts[0] if starts else '?'} to {ends[-1] if ends else '?'} (UTC). Regenerate: "
                     "`python bench/run.py grid [--methods M1,M2] [--workloads SUBSTRING]` (resumes: rows already "
                     f"in `{_DEFAULT_OUT_SHOWN}` are skipped), then "
                     "`python bench/run.py markdown > bench/RESULTS_grid.md`.")
        # machine_description() ends with the date of each process; the run's dates are given above.
        for m in sorted({re.sub(r", \d{4}-\d\d-\d\d \d\d:\d\d UTC$", "", r.get("machine", "")) for r in rows}):
            lines.append(f"- Machine: {m}")
        for c in sorted({r.get("command", "") for r in rows if r.get("command")}):
            lines.append(f"- Command: `{c}`")
        lines.append(f"- Load average (1 min) at the start of the first row: {_fmt(first.get('load_start'), '.2f')}; "
                     f"at the end of the last row: {_fmt(last.get('load_end'), '.2f')}; over all rows "
                     f"{_fmt(min(loads) if loads else None, '.2f')}–{_fmt(max(loads) if loads else None, '.2f')}.")
        lines.append("- The machine's cores were shared with other processes during the run: wall times are "
                     "inflated by that load (by different amounts for different rows); CPU time "
                     "(`time.process_time`, one torch thread) is the compute itself. Prefer the CPU columns for "
                     "ratios.")
        lines.append(f"- `{AUTHORS_METHOD}` runs once per (model, prompt, response, seed): its output and cost do "
                     "not depend on the span players or permutations. Rows marked `*` reuse that run's timing and "
                     "token values (span values = token values summed per span).")
        lines.append(f"- rel L2 err: against exact Shapley values (all 2^n coalitions) only for workloads with at "
                     f"most {REFERENCE_MAX_PLAYERS} span players; empty otherwise. Speedups are over the "
                     f"`{AUTHORS_METHOD}` row of the same workload.")
        lines.append("")
        head = _headline(rows)
        if head:
            lines += ["## Across the grid", ""] + head + [""]
    lines += ["## Rows", "", _COLUMNS, "|" + "---|" * 14]
    for r in rows:
        sw, sc = speed[(r["workload"], r["method"])]
        method = r["method"] + (" *" if r.get("shared_from") else "")
        lines.append(
            f"| {r['workload']} | {method} | {_fmt(r['seconds'], '.3f')} | {_fmt(r['cpu_seconds'], '.3f')} | "
            f"{_fmt(r.get('coalitions_per_s'), '.0f')} | {r['coalitions']} | {r['tokens']} | "
            f"{_fmt(r.get('tokens_over_lb'), '.2f')} | {_fmt(r.get('over_plain_forward'), '.2f')} | "
            f"{_fmt(r.get('cpu_over_plain_forward'), '.2f')} | {_fmt(r.get('peak_mib'), '.0f')} | "
            f"{_fmt(sw, '.1f')}{'x' if sw is not None else ''} | {_fmt(sc, '.1f')}{'x' if sc is not None else ''} | "
            f"{_fmt(r.get('rel_l2_error'), '.3f')} |")
    have = {(r["workload"], r["method"]) for r in rows}
    lines += ["", "## Missing rows", ""]
    missing_any = False
    for m in methods:
        missing = [w.name for w in workloads if (w.name, m) not in have]
        if missing:
            missing_any = True
            lines.append(f"- `{m}` ({len(missing)} of {len(workloads)}): " + ", ".join(missing))
    if not missing_any:
        lines.append("- none")
    return "\n".join(lines) + "\n"
