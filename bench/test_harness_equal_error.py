"""Argument checks of scar_bench.equal_error (the comparison itself runs in bench/bench_equal_error.py)."""
import pytest

from scar_bench import workloads as W
from scar_bench.equal_error import EqualErrorReport, equal_error


def _inst(**kw):
    return W.make_instance(W.Workload("tiny", 8, 8, 4, 4, **kw))


def test_rejects_no_instances():
    with pytest.raises(ValueError, match="at least one instance"):
        equal_error([])


def test_rejects_instances_of_different_shapes():
    with pytest.raises(ValueError, match="must share model, lengths and players"):
        equal_error([_inst(), W.make_instance(W.Workload("tiny", 8, 8, 2, 4))])


def test_rejects_too_many_players_for_an_exact_reference():
    inst = W.make_instance(W.Workload("tiny", 4, 17, 17, 4))
    with pytest.raises(ValueError, match="exact references are limited to 16"):
        equal_error([inst])


def test_rejects_unknown_estimators():
    with pytest.raises(ValueError, match=r"unknown estimators \['owen'\]"):
        equal_error([_inst()], candidates={"owen": [4]})


def test_speedups_follow_the_chosen_row():
    chosen = {"wall": 0.5, "cpu": 0.25, "error": 0.1}
    report = EqualErrorReport("w", [], [chosen], chosen, authors_error=0.2, authors_wall=10.0, authors_cpu=5.0)
    assert report.speedup_wall == 20.0 and report.speedup_cpu == 20.0
    none = EqualErrorReport("w", [], [], None, authors_error=0.2, authors_wall=10.0, authors_cpu=5.0)
    assert none.speedup_wall != none.speedup_wall  # nan when no budget is accurate enough
