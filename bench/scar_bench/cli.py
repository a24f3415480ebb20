"""The benchmark's command line, run as ``python bench/run.py <command>`` from any directory:

- ``table [--quick]``: the engine table of the target workload (every peer and engine, errors against
  exact Shapley values); ``--quick`` runs the tiny workload in seconds;
- ``equal-error [--quick] [--responses N] [--rounds N] [--seeds N] [--max-minutes MIN] [--record PATH]
  [--plot PATH]``:
  time per response at equal or lower error than the authors' path (by mean error and on every
  response), on the trained reward model (five responses by default; trains the model on first use);
  ``--quick``: a tiny random-weight workload; ``--record``: the JSON record, rewritten after each response;
- ``grid [--methods M1,M2] [--workloads SUBSTRING] [--out PATH] [--max-minutes MIN] [--rounds N]``:
  measure the grid's (workload, method) rows missing from ``--out`` (default ``bench/results/grid.jsonl``),
  appending one JSON line per row;
- ``markdown [--out PATH]``: print the markdown report of the rows in ``--out`` without running anything;
- ``games [--quick] [--plot PATH]``: accuracy per evaluation on sums of unanimity games against shapiq's
  approximators (:mod:`scar_bench.games`), printed as a markdown table; ``--quick``: one small game, seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from transformers.utils import logging as hf_logging

from scar_bench.equal_error import equal_error, format_equal_error, plot_equal_error
from scar_bench.grid import DEFAULT_OUT, format_grid_markdown, load_rows, parse_methods, run_grid, select_workloads
from scar_bench.tables import run_table
from scar_bench.workloads import QUICK_WORKLOAD, TRAINED_TARGET_WORKLOAD, make_instance

__all__ = ["COMMAND", "build_parser", "main"]

COMMAND = "python bench/run.py"
"""How the command line is invoked, as stored in grid rows and named in messages."""


def _cmd_table(args: argparse.Namespace) -> int:
    print(run_table(quick=args.quick))
    return 0


def _cmd_equal_error(args: argparse.Namespace) -> int:
    """The headline comparison of ``bench/bench_equal_error.py``: the trained reward model and
    ``--responses`` responses (default five), or with ``--quick`` a tiny random-weight workload and two."""
    for flag, value, low in (("--responses", args.responses, 1), ("--rounds", args.rounds, 1),
                             ("--seeds", args.seeds, 1)):
        if value is not None and value < low:
            args.parser.error(f"{flag} must be >= {low}, got {value}")
    if args.max_minutes is not None and args.max_minutes < 0:
        args.parser.error(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if args.quick:
        workload, kwargs = QUICK_WORKLOAD, {"candidates": {"permutation": [2, 8], "kernel": [4, 14],
                                                           "stratified": [6, 14]},
                                            "seeds": range(2), "rounds": 1, "authors_evals": 40}
    else:
        workload, kwargs = TRAINED_TARGET_WORKLOAD, {}
    if args.rounds is not None:
        kwargs["rounds"] = args.rounds
    if args.seeds is not None:
        kwargs["seeds"] = range(args.seeds)
    responses = args.responses or (2 if args.quick else 5)
    instances = [make_instance(dataclasses.replace(workload, seed=s)) for s in range(responses)]
    command = f"{COMMAND} equal-error" + "".join(
        f" {flag} {value}" for flag, value in (("--responses", args.responses), ("--rounds", args.rounds),
                                               ("--seeds", args.seeds), ("--max-minutes", args.max_minutes),
                                               ("--record", args.record), ("--plot", args.plot))
        if value is not None) + (
        " --quick" if args.quick else "")

    def save(report) -> None:
        if args.record:
            os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
            tmp = args.record + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"command": command, "responses_requested": responses, **dataclasses.asdict(report),
                           "table": format_equal_error(report)}, f, indent=1)
            os.replace(tmp, args.record)

    deadline = None if args.max_minutes is None else time.time() + 60 * args.max_minutes
    report = equal_error(instances, progress=True, on_response=save, deadline=deadline, **kwargs)
    if len(report.authors) < responses:
        print(f"--max-minutes reached: {len(report.authors)} of {responses} responses measured")
    if args.plot:
        plot_equal_error(report, args.plot)
    print(format_equal_error(report))
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    if args.max_minutes is not None and args.max_minutes < 0:
        args.parser.error(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if args.rounds is not None and args.rounds < 1:
        args.parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        methods = parse_methods(args.methods)
        workloads = select_workloads(args.workloads)
    except ValueError as e:
        args.parser.error(str(e))
    out = args.out or DEFAULT_OUT
    # The command as given (options in a fixed order), stored in every row.
    command = f"{COMMAND} grid" + "".join(
        f" {flag} {value}" for flag, value in (("--methods", args.methods), ("--workloads", args.workloads),
                                               ("--out", args.out), ("--max-minutes", args.max_minutes),
                                               ("--rounds", args.rounds)) if value is not None)
    run = run_grid(workloads, methods, out=out, max_minutes=args.max_minutes, rounds=args.rounds or 3,
                   command=command)
    print(f"{len(run.measured)} rows measured, {len(run.skipped)} already in {out}"
          + (f", {len(run.not_started)} not started (--max-minutes)" if run.not_started else "")
          + (f", {len(run.failed)} failed" if run.failed else ""))
    return 1 if run.failed else 0


def _cmd_markdown(args: argparse.Namespace) -> int:
    out = args.out or DEFAULT_OUT
    try:
        rows = load_rows(out)
    except ValueError as e:
        args.parser.error(str(e))
    if not rows:
        args.parser.error(f"no grid rows in {out!r} (run `{COMMAND} grid` first)")
    print(format_grid_markdown(rows), end="")
    return 0


def _cmd_games(args: argparse.Namespace) -> int:
    from scar_bench.games import (
        GAMES,
        MULTIPLIERS,
        TINY_GAMES,
        TINY_MULTIPLIERS,
        format_games_table,
        game_study,
        plot_games,
        summarize_games,
    )

    games, mults, seeds = (TINY_GAMES, TINY_MULTIPLIERS, range(2)) if args.quick else (GAMES, MULTIPLIERS, range(10))
    summary = summarize_games(game_study(games, multipliers=mults, seeds=seeds))
    if args.plot:
        plot_games(summary, args.plot)
    print(format_games_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description="SCAR benchmarks: engine table, equal-error "
                                     "comparison, the resumable grid and its markdown report.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("table", help="print the engine table of the target workload (same workloads as bench/)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.set_defaults(func=_cmd_table, parser=p)

    p = sub.add_parser("equal-error", help="time per response at equal or lower error than the authors' path, "
                                           "on the trained reward model (the headline of bench/RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="a tiny random-weight workload, for a smoke run")
    p.add_argument("--responses", type=int, default=None,
                   help="responses (seeds 0..N-1) of the workload (default: 5; 2 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed runs per (estimator, budget, response) after one warm-up (default: 3)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per error estimate (default: 5)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="start no new response after this many minutes (at least one is measured)")
    p.add_argument("--record", default=None, metavar="PATH",
                   help="write the JSON record here after every response (the report so far)")
    p.add_argument("--plot", default=None, metavar="PATH", help="also write the plot (error vs wall time) here")
    p.set_defaults(func=_cmd_equal_error, parser=p)

    p = sub.add_parser("grid", help="measure the grid's (workload, method) rows missing from --out, appending "
                                    "JSON lines")
    p.add_argument("--methods", default=None, metavar="M1,M2",
                   help="methods to run, comma-separated (default: all engine methods)")
    p.add_argument("--workloads", default=None, metavar="SUBSTRING",
                   help="only workloads whose name contains one of these comma-separated substrings")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="grid JSON-lines file (default: bench/results/grid.jsonl)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="start no new row after this many minutes")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed runs of the fast (trie) methods (default: 3)")
    p.set_defaults(func=_cmd_grid, parser=p)

    p = sub.add_parser("markdown", help="print the markdown report of the rows in --out, without running anything")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="grid JSON-lines file (default: bench/results/grid.jsonl)")
    p.set_defaults(func=_cmd_markdown, parser=p)

    p = sub.add_parser("games", help="accuracy per evaluation on sums of unanimity games against shapiq's "
                                     "approximators (markdown table)")
    p.add_argument("--quick", action="store_true", help="one small game, two budgets, two seeds")
    p.add_argument("--plot", default=None, metavar="PATH", help="also write the plot (error vs evaluations) here")
    p.set_defaults(func=_cmd_games, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # weight-loading bars would clutter the tables
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
