"""This project's engines on the engine workloads: ``loop``, ``batched``, ``trie`` and ``trie`` with the
compiled/kernel ops (C++ pack builder + the ``scar::tree_attention`` op through the packed forward).

Every row runs the default estimator (antithetic permutation sampling, the workload's permutations) and
the coalition scorer together, on every workload of ``scar_bench.workloads.GRID``. Regenerate one row with
e.g. ``pytest bench/bench_engine.py --benchmark-only -k "scar-trie and small_p256_r64_n16_k32"``.
The authors'-path speedup column is filled when ``bench_peers.py``'s ``shap-partition`` row of the same
workload ran earlier in the session (``pytest bench/bench_peers.py bench/bench_engine.py``).
With benchmarks disabled (CI) only the first workload's rows are generated (``bench/conftest.py``) and
run at the tiny size, for correctness.
"""
import numpy as np
import pytest

from scar.scoring.config import DEFAULT_MASK_PASS_TOKENS, DEFAULT_PASS_TOKENS
from scar_bench.methods import SCAR_METHODS, run_method
from scar_bench.tables import bench_row
from scar_bench.workloads import QUICK_WORKLOAD, full_and_empty_values, make_instance


@pytest.mark.grid_workloads
@pytest.mark.parametrize("method", SCAR_METHODS)
def test_engine(benchmark, bench_full, workload, method):
    row = bench_row(benchmark, bench_full, workload, method)
    inst = make_instance(workload if bench_full else QUICK_WORKLOAD)
    full, empty = full_and_empty_values(inst)
    assert np.sum(row["values"]) == pytest.approx(full - empty, rel=1e-3, abs=1e-5)
    if not bench_full:
        # All four engines run the same seeded plan, so they agree with the loop reference.
        expected = run_method(inst, "scar-loop").values
        np.testing.assert_allclose(row["values"], expected, rtol=1e-3, atol=1e-5)
    assert row["tokens"] >= row["trie_lower_bound"]
    pass_budget = DEFAULT_MASK_PASS_TOKENS if method == "scar-trie" else DEFAULT_PASS_TOKENS
    if method in ("scar-trie", "scar-trie-kernel") and row["trie_lower_bound"] <= pass_budget:
        # One pass holds the whole trie: exactly the lower bound (the dense-mask path has a smaller pass budget).
        assert row["tokens"] == row["trie_lower_bound"]
