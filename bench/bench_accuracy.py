"""Accuracy per unit of compute: error against exact Shapley values (12 span players) versus coalitions
evaluated and tokens computed, for this project's estimators and the peers'.

Two full workloads: the reward model trained on ``scar_bench.lexicon`` (credit concentrated on a few spans,
as with real reward models; id ``trained``) and a random-weight one (an almost length-only game; id
``random``). Correctness-only runs (CI) generate one id, which runs a tiny random-weight workload.

The exact values and the table of all ``2**12`` coalition values come from the reward model (trie
backend); sampled estimators draw their values from that table, and each is charged the tokens its
engine computes (``scar_bench.accuracy.accuracy_study`` says how). ``shap-partition`` runs the real model
through its Text masker. The summary (median over seeds) and, for the default estimator, its error
ratio to every other method at equal tokens go to ``benchmark.extra_info``; the full run also writes
``bench/plots/accuracy.png``. Regenerate with ``pytest bench/bench_accuracy.py --benchmark-only``.
"""
import os

from scar_bench.accuracy import (
    DEFAULT_ESTIMATOR,
    accuracy_study,
    format_accuracy_table,
    plot_accuracy,
    summarize_accuracy,
)
from scar_bench.measure import bench_threads
from scar_bench.methods import exact_shapley
from scar_bench.workloads import Workload, make_instance

PLOTS = os.path.join(os.path.dirname(__file__), "plots")
FULL_WORKLOADS = {"trained": Workload("small", 256, 64, 12, 32, weights="trained"),
                  "random": Workload("small", 256, 64, 12, 32)}
PERMS = [2, 4, 8, 16, 32, 64, 128]
KERNEL = [26, 50, 100, 200, 400, 800, 1600]
FULL_BUDGETS = {
    "scar-permutation": PERMS, "scar-kernel": KERNEL, "scar-stratified": KERNEL, "shap-permutation": PERMS,
    "captum-svs": PERMS,
    "shapiq-kernel": KERNEL, "shapiq-permutation": [26, 52, 104, 208, 416, 832, 1664],
    "shap-partition": [125, 250, 500, 1000], "scar-owen": [None, 8, 32, 128],
}
TINY_WORKLOAD = Workload("tiny", 16, 10, 5, 4)
TINY_BUDGETS = {
    "scar-permutation": [2, 8], "scar-kernel": [10, 30], "scar-stratified": [10, 30], "shap-permutation": [2, 8],
    "captum-svs": [2, 8],
    "shapiq-kernel": [10, 30], "shapiq-permutation": [12, 48], "shap-partition": [40],
    "scar-owen": [None, 4],
}


def _order(budget):
    """Budgets sorted with ``None`` (exact) first."""
    return (budget is not None, budget or 0)


def pytest_generate_tests(metafunc):
    if "weights" in metafunc.fixturenames:
        full = not metafunc.config.getoption("benchmark_disable", default=False)
        metafunc.parametrize("weights", list(FULL_WORKLOADS) if full else ["trained"])


def test_accuracy(benchmark, bench_full, tmp_path, weights):
    workload, budgets = (FULL_WORKLOADS[weights], FULL_BUDGETS) if bench_full else (TINY_WORKLOAD, TINY_BUDGETS)
    inst = make_instance(workload)
    seeds = range(5) if bench_full else range(2)
    with bench_threads():
        exact = exact_shapley(inst)
        rows = benchmark.pedantic(accuracy_study, args=(inst,), kwargs={"budgets": budgets, "seeds": seeds,
                                                                           "exact": exact}, rounds=1, iterations=1)
    summary = summarize_accuracy(rows)
    path = os.path.join(PLOTS, f"accuracy_{weights}.png") if bench_full else str(tmp_path / "accuracy.png")
    plot_accuracy(summary, path, title=workload.name)
    benchmark.extra_info["workload"] = workload.name
    benchmark.extra_info["summary"] = summary
    benchmark.extra_info["table"] = format_accuracy_table(summary)
    assert os.path.getsize(path) > 0
    assert {r["method"] for r in summary} == set(budgets)
    for method, method_budgets in budgets.items():
        curve = sorted((r for r in summary if r["method"] == method), key=lambda r: _order(r["budget"]))
        assert [r["budget"] for r in curve] == sorted(method_budgets, key=_order)
        assert all(r["rel_l2_error"] >= 0 for r in curve)
        sampled = [r for r in curve if r["budget"] is not None]
        assert sampled[-1]["coalitions"] >= sampled[0]["coalitions"]
    # A larger budget of the default estimator costs more trie tokens and, at 3x or more, errs less.
    default = sorted((r for r in summary if r["method"] == DEFAULT_ESTIMATOR), key=lambda r: r["budget"])
    assert default[-1]["tokens"] > default[0]["tokens"]
    assert default[-1]["rel_l2_error"] < default[0]["rel_l2_error"]
