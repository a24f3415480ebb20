"""What each estimator's finish costs: the time of ``ShapleyPlan.finish`` (the solve after the coalitions are
scored) per response, at each method's default budget and at a few fixed ones, on random values.

    .venv/bin/python bench/finish_cost.py [--players 12,16,20,32] [--budgets 100,200,400] [--rounds 5]

Prints a markdown table of the median over ``--rounds`` calls (after one), one torch thread.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scar.shapley import plan
from scar_bench.measure import bench_threads

METHODS = ("kernel", "stratified")


def finish_seconds(n: int, method: str, budget: int | None, rounds: int) -> tuple[int, float]:
    """``(budget used, median seconds of one finish)`` for ``method`` on ``n`` players."""
    p = plan(n, method=method, budget=budget, seed=0)
    values = torch.randn(p.coalitions.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p.finish(values)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        p.finish(values)
        times.append(time.perf_counter() - start)
    return p.budget, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--players", default="12,16,20,32")
    parser.add_argument("--budgets", default="100,200,400", help="fixed budgets measured at 16 players")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = [(int(n), None) for n in args.players.split(",")] + [(16, int(b)) for b in args.budgets.split(",")]
    print("| players | budget | " + " | ".join(f"`{m}`" for m in METHODS) + " |")
    print("|---" * (len(METHODS) + 2) + "|")
    with bench_threads():
        for n, budget in rows:
            cells, used = [], None
            for method in METHODS:
                used, seconds = finish_seconds(n, method, budget, args.rounds)
                cells.append(f"{seconds * 1e3:.1f} ms")
            label = f"{used} (default)" if budget is None else str(used)
            print(f"| {n} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
