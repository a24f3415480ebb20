"""Accuracy per evaluation on sums of unanimity games (known Shapley values): this project's estimators
(``kernel``, ``permutation``, ``stratified``) against shapiq's approximators (KernelSHAP, paired KernelSHAP,
kADD-SHAP, SVARM, unbiased KernelSHAP, permutation sampling) and shap's Kernel and Permutation explainers at
equal, honestly counted evaluations
(``scar_bench.games`` says how).

Full run (``pytest bench/bench_games.py --benchmark-only``, or ``python bench/run.py games``): the six games
of ``scar_bench.games.GAMES`` (low-, mixed- and high-order, 12-20 players), budgets 2n, 4n, 8n, 32n and 128n
evaluations, 10 seeds; writes ``bench/plots/games_accuracy.png``, ``bench/results/games_accuracy.json`` and
the table (median error, ratio to the best shapiq approximator) to ``benchmark.extra_info``.
Correctness-only runs (CI) use one 8-player game, two budgets and two seeds (seconds).
"""
import json
import os

import numpy as np

from scar_bench.games import (
    GAME_METHODS,
    GAMES,
    MULTIPLIERS,
    SHAPIQ_METHODS,
    TINY_GAMES,
    TINY_MULTIPLIERS,
    format_games_table,
    game_study,
    plot_games,
    runs_at,
    summarize_games,
)
from scar_bench.measure import bench_threads

PLOT = os.path.join(os.path.dirname(__file__), "plots", "games_accuracy.png")
RECORD = os.path.join(os.path.dirname(__file__), "results", "games_accuracy.json")


def test_games_accuracy(benchmark, bench_full, tmp_path):
    games, mults, seeds = (GAMES, MULTIPLIERS, range(10)) if bench_full else (TINY_GAMES, TINY_MULTIPLIERS, range(2))
    with bench_threads():  # the study's wall time (not its errors) depends on the thread count
        rows = benchmark.pedantic(game_study, args=(games,), kwargs={"multipliers": mults, "seeds": seeds},
                                  rounds=1, iterations=1)
    summary = summarize_games(rows)
    table = format_games_table(summary)
    path = PLOT if bench_full else str(tmp_path / "games_accuracy.png")
    plot_games(summary, path)
    record = RECORD if bench_full else str(tmp_path / "games_accuracy.json")
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "w") as f:
        json.dump({"rows": rows, "summary": summary, "table": table}, f)
    benchmark.extra_info["table"] = table
    assert os.path.getsize(path) > 0
    runs = sum(runs_at(m, spec.n, k * spec.n) for spec in games for m in GAME_METHODS for k in mults)
    assert len(rows) == runs * len(seeds)
    for r in rows:  # honest counting: no run used more distinct coalitions than its budget
        assert 0 < r["evaluations"] <= r["budget"] and r["rel_l2_error"] >= 0
    for spec in games:
        best = {k: min(s["rel_l2_error"] for s in summary if s["game"] == spec.name and s["multiplier"] == k
                       and s["method"] in SHAPIQ_METHODS) for k in mults}
        for s in (s for s in summary if s["game"] == spec.name):
            assert np.isclose(s["ratio_to_best_shapiq"] * best[s["multiplier"]], s["rel_l2_error"])
        # Every method of this project errs less at the largest budget than at the smallest.
        for method in ("scar-kernel", "scar-stratified"):
            curve = sorted((s for s in summary if s["game"] == spec.name and s["method"] == method),
                           key=lambda s: s["multiplier"])
            assert curve[-1]["rel_l2_error"] < curve[0]["rel_l2_error"]
