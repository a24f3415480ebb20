"""Shared fixtures for the benchmark suite.

``pytest bench/ --benchmark-only`` runs the full workloads; any run with benchmarks disabled
(``--benchmark-disable``, as CI does) runs the same code at tiny sizes, only for correctness.

Tests marked ``grid_workloads`` take a ``workload`` argument: with benchmarks on, one id per workload of
``scar_bench.workloads.GRID`` (select rows with ``-k <workload name>``); in a correctness-only run only the
first workload's id is generated (it runs the tiny workload), so the other grid rows are not collected
at all instead of being skipped.
"""
import pytest

from scar_bench.workloads import GRID


def _benchmarks_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "grid_workloads: parametrize the test's `workload` over "
                                       "scar_bench.workloads.GRID "
                                       "(only its first workload in correctness-only runs)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("grid_workloads") is None:
        return
    workloads = GRID[:1] if _benchmarks_disabled(metafunc.config) else GRID
    metafunc.parametrize("workload", workloads, ids=[w.name for w in workloads])


@pytest.fixture(scope="session")
def bench_full(request) -> bool:
    """True when benchmarks are really timed (full sizes), False for correctness-only runs."""
    return not _benchmarks_disabled(request.config)
