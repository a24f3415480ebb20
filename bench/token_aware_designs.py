"""Token-aware coalition designs against the library's estimators, at equal trie tokens.

Measures :mod:`scar_bench.token_designs` (``prefix-reuse``: paths and all their response-order truncations;
``siblings-r1``/``-r3``: stratified Monte Carlo over groups sharing a prefix, with ``siblings-r0`` the same
estimator without siblings) and ``kernel``, ``stratified``, ``permutation`` on the 12-span-player games of
``bench_accuracy.py`` (the trained lexicon reward model and a random-weight one; exact values from all 4,096
coalitions), charging each the trie tokens of its plan. Run from the repository root::

    .venv/bin/python bench/token_aware_designs.py [--seeds 10] [--record PATH] [--plot PATH]

Prints one table per game and, per design, its error over ``stratified``'s at the same tokens (log-log
interpolation; below 1 is better).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scar_bench.accuracy import _interp_loglog
from scar_bench.measure import bench_threads, machine_description
from scar_bench.methods import exact_shapley
from scar_bench.token_designs import (
    format_design_table,
    plot_designs,
    summarize_designs,
    token_design_study,
)
from scar_bench.workloads import make_instance

from bench_accuracy import FULL_WORKLOADS

BUDGETS = {
    "kernel": [26, 50, 100, 200, 400, 800],
    "stratified": [26, 50, 100, 200, 400, 800],
    "permutation": [2, 4, 8, 16, 32],
    "prefix-reuse": [4, 8, 16, 32, 64, 128],
    "siblings-r0": [13, 25, 50, 100, 200, 400],
    "siblings-r1": [7, 13, 25, 50, 100, 200],
    "siblings-r3": [4, 7, 13, 25, 50, 100],
}
REFERENCE = "stratified"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--games", default="trained,random", help="comma-separated: trained, random")
    p.add_argument("--record", default=None, help="write every run and the summaries as JSON here")
    p.add_argument("--plot", default=None, help="save the error-vs-tokens plot here")
    args = p.parse_args()
    t0 = time.time()
    record: dict = {"machine": machine_description(), "budgets": BUDGETS, "games": {}}
    summaries = {}
    with bench_threads():
        for game in args.games.split(","):
            inst = make_instance(FULL_WORKLOADS[game])
            rows = token_design_study(inst, exact_shapley(inst), budgets=BUDGETS, seeds=range(args.seeds))
            summary = summarize_designs(rows)
            reference = [(r["tokens"], r["error"]) for r in summary if r["design"] == REFERENCE]
            for r in summary:
                r[f"error_over_{REFERENCE}"] = r["error"] / _interp_loglog(reference, r["tokens"])
            summaries[game] = summary
            record["games"][game] = {"runs": rows, "summary": summary}
            print(f"\n## {game} reward model\n")
            print(format_design_table(summary))
            print(f"\nerror over {REFERENCE}'s at equal tokens (nan: outside its token range):")
            for design in BUDGETS:
                ratios = [
                    f"{r['tokens']:.0f}: {r[f'error_over_{REFERENCE}']:.2f}" for r in summary if r["design"] == design
                ]
                print(f"- {design}: " + ", ".join(ratios))
    record["seconds"] = time.time() - t0
    print(f"\n{record['machine']}; {record['seconds']:.0f} s")
    if args.record:
        with open(args.record, "w") as f:
            json.dump(record, f, indent=1)
    if args.plot:
        plot_designs(summaries, args.plot)


if __name__ == "__main__":
    main()
