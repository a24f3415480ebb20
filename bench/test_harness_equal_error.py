"""Argument checks of scar_bench.equal_error (the comparison itself runs in bench/bench_equal_error.py)."""
import pytest

from scar_bench import workloads as W
from scar_bench.equal_error import (
    EqualErrorReport,
    equal_error,
    format_equal_error,
    report_from_record,
    select_by_mean,
    select_per_response,
    summarize_equal_error,
)


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


def _row(estimator, budget, by_response, wall):
    return {"estimator": estimator, "budget": budget, "error": sum(by_response) / len(by_response),
            "error_by_response": by_response, "wall": wall, "cpu": wall}


def test_per_response_selection_rejects_a_budget_that_fails_on_one_response():
    # Authors' errors 0.2, 0.4, 0.6 (mean 0.4). The cheap row is below the mean and below the authors on two
    # responses but above them on the first; the per-response choice must be the dearer row that is at or
    # below on every response (ties count as at or below).
    authors = [0.2, 0.4, 0.6]
    cheap = _row("kernel", 100, [0.25, 0.3, 0.3], wall=0.1)
    dear = _row("kernel", 272, [0.2, 0.35, 0.5], wall=0.4)
    dearest = _row("stratified", 544, [0.1, 0.1, 0.1], wall=0.9)
    sweep = [dearest, cheap, dear]
    assert select_by_mean(sweep, sum(authors) / len(authors)) is cheap
    assert select_per_response(sweep, authors) is dear
    assert select_per_response([cheap], authors) is None
    assert select_by_mean([_row("kernel", 34, [0.5, 0.5, 0.5], 0.01)], 0.4) is None


def test_per_response_selection_checks_lengths():
    with pytest.raises(ValueError, match="2 per-response errors for 3 responses"):
        select_per_response([_row("kernel", 100, [0.1, 0.1], 0.1)], [0.2, 0.4, 0.6])


def _measured(authors_error, errors_by_config, walls, owen_distance):
    return {"authors": {"wall": 20.0, "cpu": 19.0, "tokens": 1000, "error": authors_error},
            "response": {"v_full": 1.0, "v_empty": 0.0, "exact": [0.5, 0.5], "uniform_split_error": 0.0,
                         "owen": [0.5, 0.5], "owen_shapley": owen_distance, "authors_owen": 0.0},
            "configs": [{"estimator": m, "budget": b, "errors": errs, "coalitions": [b, b], "tokens": [10 * b] * 2,
                         "wall": w, "cpu": w} for (m, b, errs), w in zip(errors_by_config, walls)]}


def test_summary_chooses_by_mean_and_on_every_response():
    # Response 0 is easy for the authors (0.1); kernel 100 beats their mean error but not response 0.
    r0 = _measured(0.1, [("kernel", 100, [0.2, 0.2]), ("kernel", 272, [0.05, 0.1])], [0.1, 0.2], 0.3)
    r1 = _measured(0.7, [("kernel", 100, [0.2, 0.3]), ("kernel", 272, [0.1, 0.1])], [0.1, 0.3], 0.1)
    report = summarize_equal_error("w", [r0, r1], seeds=2, rounds=1)
    by_budget = {r["budget"]: r for r in report.sweep}
    assert by_budget[100]["error_by_response"] == [0.2, 0.25]
    assert by_budget[100]["responses_at_most_authors"] == 1 and by_budget[100]["runs_at_most_authors"] == 0.5
    assert by_budget[272]["wall"] == 0.25 and by_budget[272]["wall_by_response"] == [0.2, 0.3]
    assert report.chosen is by_budget[100] and report.speedup_wall == 20.0 / 0.1
    assert report.chosen_each is by_budget[272] and report.speedup_wall_each == 20.0 / 0.25
    assert report.owen_shapley() == {"mean": 0.2, "min": 0.1, "max": 0.3}
    table = format_equal_error(report)
    assert "(chosen by mean)" in table and "(chosen on every response)" in table
    assert "80.0x by wall time" in table and "Owen values" in table


def test_summary_rejects_responses_with_different_rows():
    r0 = _measured(0.1, [("kernel", 100, [0.2])], [0.1], 0.3)
    r1 = _measured(0.1, [("kernel", 136, [0.2])], [0.1], 0.3)
    with pytest.raises(ValueError, match="same \\(estimator, budget\\) rows"):
        summarize_equal_error("w", [r0, r1], seeds=1, rounds=1)
    with pytest.raises(ValueError, match="at least one measured response"):
        summarize_equal_error("w", [], seeds=1, rounds=1)


def test_report_round_trips_through_its_json_record():
    import dataclasses
    import json

    r0 = _measured(0.1, [("kernel", 100, [0.2, 0.2]), ("kernel", 272, [0.05, 0.1])], [0.1, 0.2], 0.3)
    report = summarize_equal_error("w", [r0], seeds=2, rounds=1)
    back = report_from_record(json.loads(json.dumps({**dataclasses.asdict(report), "table": "t", "command": "c"})))
    assert back.chosen is back.sweep[1] and back.chosen_each is back.sweep[1]
    assert format_equal_error(back) == format_equal_error(report)


@pytest.mark.parametrize("argv", [["--responses", "0"], ["--rounds", "0"], ["--seeds", "0"], ["--max-minutes", "-1"]])
def test_cli_rejects_bad_counts(argv, capsys):
    from scar_bench.cli import main

    with pytest.raises(SystemExit):
        main(["equal-error", "--quick", *argv])
    assert "must be >=" in capsys.readouterr().err


def test_cli_parses_the_per_response_options():
    from scar_bench.cli import build_parser

    args = build_parser().parse_args(["equal-error", "--responses", "20", "--rounds", "1", "--record", "r.json"])
    assert (args.responses, args.rounds, args.seeds, args.record, args.plot) == (20, 1, None, "r.json", None)
