"""The oracle bound on the headline's responses: how few coalitions regression-adjusted stratified sampling
could need to be at least as accurate as the authors' path on every response, if its surrogate had no fitting
noise (:mod:`scar_bench.bound`).

    .venv/bin/python bench/surrogate_bound.py --record bench/results/equal_error_20_sizeterms.json \
        --out bench/results/surrogate_bound.json --plot bench/plots/surrogate_bound.png

Reads an equal-error record (``python bench/run.py equal-error --responses 20 --record ...``): the authors'
error and wall time per response, and ``stratified``'s errors and wall times per budget. Recomputes each
response's table of all ``2**n`` coalition values with the trie engine (``--tables DIR`` keeps them between
runs) and checks it against the record's exact values. Prints a table and writes a JSON record and a plot.
One torch thread.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scar_bench.bound import (
    BOUND_ORDERS,
    oracle_bound_errors,
    oracle_surrogate,
    residual_share,
    smallest_budget,
    table_shapley,
)
from scar_bench.measure import bench_threads, machine_description, rel_l2
from scar_bench.methods import exact_shapley
from scar_bench.workloads import TRAINED_TARGET_WORKLOAD, make_instance

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {0: "no surrogate", 1: "oracle order 1", 3: "oracle order 3"}


def _table(seed: int, tables: str | None, exact: np.ndarray) -> np.ndarray:
    path = os.path.join(tables, f"trained_target_{seed}.npy") if tables else None
    if path and os.path.exists(path):
        table = np.load(path)
    else:
        _, table = exact_shapley(make_instance(dataclasses.replace(TRAINED_TARGET_WORKLOAD, seed=seed)))
        if path:
            os.makedirs(tables, exist_ok=True)
            np.save(path, table)
    drift = rel_l2(table_shapley(table), exact)
    if drift > 1e-5:
        raise SystemExit(f"response {seed}: the recomputed table's Shapley values differ from the record's by "
                         f"{drift:.2e} (relative L2): a different model or workload?")
    return table


def _interp_wall(budgets: list[int], walls: list[float], budget: float) -> float:
    """Wall seconds at a (possibly fractional) budget, linear between the record's budgets, clamped at its
    ends."""
    return float(np.interp(budget, budgets, walls))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", default=os.path.join(HERE, "results", "equal_error_20_sizeterms.json"))
    p.add_argument("--seeds", type=int, default=20, help="seeds of the Monte Carlo part per budget")
    p.add_argument("--tables", default=None, help="folder to keep the coalition tables in between runs")
    p.add_argument("--out", default=os.path.join(HERE, "results", "surrogate_bound.json"))
    p.add_argument("--plot", default=os.path.join(HERE, "plots", "surrogate_bound.png"))
    args = p.parse_args()
    with open(args.record) as f:
        rec = json.load(f)
    rows = sorted((r for r in rec["sweep"] if r["estimator"] == "stratified"), key=lambda r: r["budget"])
    if not rows:
        raise SystemExit(f"{args.record} has no stratified rows")
    budgets = [r["budget"] for r in rows]
    authors_err = [a["error"] for a in rec["authors"]]
    authors_wall = statistics.median(a["wall"] for a in rec["authors"])
    walls = [r["wall"] for r in rows]
    responses = len(authors_err)
    errors: dict[int, list[list[float]]] = {o: [] for o in BOUND_ORDERS}  # order -> response -> budget -> mean
    shares: dict[int, list[float]] = {o: [] for o in BOUND_ORDERS}  # order -> response -> variance left
    started = time.time()
    with bench_threads():
        for s in range(responses):
            exact = np.asarray(rec["per_response"][s]["exact"])
            table = _table(s, args.tables, exact)
            for o in BOUND_ORDERS:
                surrogate = oracle_surrogate(table, o)
                shares[o].append(residual_share(table, surrogate))
                e = oracle_bound_errors(table, exact, surrogate, budgets, range(args.seeds))
                errors[o].append([float(np.mean(e[b])) for b in budgets])
            print(f"response {s}: authors {authors_err[s]:.3f}; " + "; ".join(
                f"order {o} " + " ".join(f"{x:.3f}" for x in errors[o][-1]) for o in BOUND_ORDERS), flush=True)
        machine = machine_description()
    library = [[r["error_by_response"][s] for r in rows] for s in range(responses)]
    curves = {"stratified (library)": library, **{LABELS[o]: errors[o] for o in BOUND_ORDERS}}
    summary = {}
    for name, per in curves.items():
        meets = [sum(per[s][k] <= authors_err[s] for s in range(responses)) for k in range(len(budgets))]
        every = next((b for b, m in zip(budgets, meets) if m == responses), None)
        need = [smallest_budget(budgets, per[s], authors_err[s]) for s in range(responses)]
        summary[name] = {
            "mean_error": [float(np.mean([per[s][k] for s in range(responses)])) for k in range(len(budgets))],
            "responses_at_most_authors": meets,
            "smallest_swept_budget_every_response": every,
            "speedup_every_response": authors_wall / walls[budgets.index(every)] if every else None,
            "budget_needed_by_response": need,
            "hardest_response": int(np.argmax(need)),
            "budget_needed_hardest": max(need),
            "speedup_hardest_interpolated": (authors_wall / _interp_wall(budgets, walls, max(need))
                                             if np.isfinite(max(need)) else None),
        }
    budget_100x = float(np.interp(authors_wall / 100, walls, budgets)) if walls[0] <= authors_wall / 100 else None
    record = {"command": "python bench/surrogate_bound.py " + " ".join(sys.argv[1:]), "machine": machine,
              "source_record": os.path.relpath(args.record, HERE), "seeds": args.seeds, "budgets": budgets,
              "authors_error": authors_err, "authors_wall": authors_wall, "stratified_wall": walls,
              "budget_for_100x": budget_100x, "curves": curves, "summary": summary,
              "variance_left": {LABELS[o]: shares[o] for o in BOUND_ORDERS},
              "seconds": time.time() - started}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(format_summary(record))
    for name, left in record["variance_left"].items():
        spread = f"{min(left):.3f}-{max(left):.3f} (mean {np.mean(left):.3f})"
        print(f"{name}: variance of the pair differences left {spread}")
    if args.plot:
        plot_bound(record, args.plot)
    return 0


def format_summary(record: dict) -> str:
    """A markdown table of the record's summary."""
    budgets = record["budgets"]
    head = ("| estimate | " + " | ".join(f"{b}" for b in budgets)
            + " | smallest budget, every response | speedup there | hardest response needs |")
    lines = [head, "|" + "---|" * (len(budgets) + 4)]
    n = len(record["authors_error"])
    for name, s in record["summary"].items():
        cells = [f"{e:.3f} ({m}/{n})" for e, m in zip(s["mean_error"], s["responses_at_most_authors"])]
        every = s["smallest_swept_budget_every_response"]
        speed = f"{s['speedup_every_response']:.1f}x" if s["speedup_every_response"] else "–"
        need = s["budget_needed_hardest"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {every if every else '> ' + str(budgets[-1])} | "
                     f"{speed} | {need:.0f} (response {s['hardest_response']}) |")
    return "\n".join(lines)


def plot_bound(record: dict, path: str) -> None:
    """Hardest response and mean over responses: error against coalitions per estimate, with the authors'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = record["budgets"]
    hard = record["summary"]["stratified (library)"]["hardest_response"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, title, pick, authors in (
        (axes[0], f"hardest response ({hard})", lambda per: per[hard], record["authors_error"][hard]),
        (axes[1], "mean over responses", lambda per: np.mean(per, 0), float(np.mean(record["authors_error"]))),
    ):
        for name, per in record["curves"].items():
            ax.plot(budgets, pick(np.asarray(per)), marker="o", ms=3, label=name,
                    lw=2.2 if "library" in name else 1.2, ls="-" if "library" in name else "--")
        ax.axhline(authors, color="k", lw=1, label="authors' path (500 evaluations)")
        if record["budget_for_100x"]:
            ax.axvline(record["budget_for_100x"], color="grey", lw=1, ls=":", label="100x less wall time")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("coalitions")
        ax.set_title(title)
    axes[0].set_ylabel("relative L2 error to exact Shapley values")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
