"""Shared fixtures for the benchmark suite.

``pytest bench/ --benchmark-only`` runs the full workloads; any run with benchmarks disabled
(``--benchmark-disable``, as CI does) runs the same code at tiny sizes, only for correctness.
"""
import pytest


@pytest.fixture(scope="session")
def bench_full(request) -> bool:
    """True when benchmarks are really timed (full sizes), False for correctness-only runs."""
    return not request.config.getoption("benchmark_disable", default=False)
