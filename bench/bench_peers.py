"""Peers on the engine workloads: the tools a user would pick instead of SCAR, side by side with it.

Rows (``scar_bench.peers.PEER_METHODS``): ``shap-partition`` (the SCAR authors' path: shap Partition over a
Text masker, 500 evaluations, one reward-model call per string), ``shap-permutation``, ``captum-svs``
(ShapleyValueSampling, batched), ``shapiq-kernel``, ``shapiq-permutation``; each on every workload of
``scar_bench.workloads.GRID``. Regenerate one row with e.g.
``pytest bench/bench_peers.py --benchmark-only -k "shap-partition and small_p256_r64_n16_k32"``.
Figures (wall time, coalitions/s, tokens, tokens over the trie lower bound, wall over one plain forward,
peak memory, speedup over the authors' path, error vs exact Shapley) are in ``benchmark.extra_info``.
With benchmarks disabled (CI) only the first workload's rows are generated (``bench/conftest.py``) and
run at the tiny size, for correctness.
"""
import math

import numpy as np
import pytest

from scar_bench.peers import PEER_METHODS
from scar_bench.tables import REFERENCE_MAX_PLAYERS, bench_row
from scar_bench.workloads import QUICK_WORKLOAD, full_and_empty_values, make_instance


@pytest.mark.grid_workloads
@pytest.mark.parametrize("method", PEER_METHODS)
def test_peer(benchmark, bench_full, workload, method):
    row = bench_row(benchmark, bench_full, workload, method)
    inst = make_instance(workload if bench_full else QUICK_WORKLOAD)
    values = np.array(row["values"])
    assert values.shape == (workload.n_players if bench_full else QUICK_WORKLOAD.n_players,)
    # Every peer's estimator is efficient: the values add up to v(N) - v(empty).
    full, empty = full_and_empty_values(inst)
    assert values.sum() == pytest.approx(full - empty, rel=1e-3, abs=1e-5)
    assert row["coalitions"] > 0
    # No engine computes fewer tokens than the prefix trie of the coalitions it scored.
    assert row["tokens"] >= row["trie_lower_bound"] > 0
    # The error against exact Shapley exists where the reference is computed (2**n coalitions), NaN beyond.
    has_reference = len(inst.players) <= REFERENCE_MAX_PLAYERS
    assert math.isfinite(row["rel_l2_error"]) == has_reference
