"""The resumable grid driver (``scar_bench.grid``) and the command line ``python bench/run.py`` on tiny
workloads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scar_bench import grid as G
from scar_bench import workloads as W
from scar_bench.cli import main

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")

# Same model, prompt and response (the authors' path is shared), different span players / permutations.
W1 = W.Workload("tiny", 16, 8, 4, 4)
W2 = W.Workload("tiny", 16, 8, 2, 2)
W3 = W.Workload("tiny", 12, 8, 4, 2)  # another prompt length: its own authors' run


@pytest.fixture
def count_runs(monkeypatch):
    """Counts the grid driver's run_method calls per (workload name, method), warm-ups included."""
    calls: dict[tuple[str, str], int] = {}
    real = G.run_method

    def counting(inst, method, **kw):
        key = (inst.workload.name, method)
        calls[key] = calls.get(key, 0) + 1
        return real(inst, method, **kw)

    monkeypatch.setattr(G, "run_method", counting)
    return calls


def test_resume_skips_done_rows(tmp_path, count_runs):
    out = str(tmp_path / "grid.jsonl")
    first = G.run_grid([W1], ["scar-trie-kernel"], out=out, rounds=1, progress=False)
    assert [(r["workload"], r["method"]) for r in first.measured] == [(W1.name, "scar-trie-kernel")]
    runs = count_runs[(W1.name, "scar-trie-kernel")]
    assert runs == 2  # one warm-up + one timed round
    again = G.run_grid([W1, W2], ["scar-trie-kernel"], out=out, rounds=1, progress=False)
    assert again.skipped == [(W1.name, "scar-trie-kernel")]
    assert [r["workload"] for r in again.measured] == [W2.name]
    assert count_runs[(W1.name, "scar-trie-kernel")] == runs  # W1 did not run again
    rows = G.load_rows(out)
    assert [(r["workload"], r["method"]) for r in rows] == [(W1.name, "scar-trie-kernel"),
                                                            (W2.name, "scar-trie-kernel")]
    row = rows[0]
    # Each line is strict JSON with the run's context and the engine row's figures.
    assert row["machine"] and row["utc_start"] and row["utc_end"] and row["rounds"] == 1
    assert row["reference"] == "exact" and row["rel_l2_error"] is not None
    assert row["tokens"] == row["trie_lower_bound"]


def test_authors_run_is_shared_across_span_players_and_permutations(tmp_path, count_runs):
    out = str(tmp_path / "grid.jsonl")
    run = G.run_grid([W1, W2, W3], ["shap-partition"], out=out, progress=False)
    rows = {r["workload"]: r for r in run.measured}
    assert set(rows) == {W1.name, W2.name, W3.name}
    # Timed once for W1 and once for W3 (prompt 12); W2 reuses W1's run.
    assert count_runs.get((W1.name, "shap-partition")) == 1
    assert count_runs.get((W2.name, "shap-partition")) is None
    assert count_runs.get((W3.name, "shap-partition")) == 1
    assert rows[W2.name]["shared_from"] == W1.name and "shared_from" not in rows[W1.name]
    assert "shared_from" not in rows[W3.name]
    for k in ("seconds", "cpu_seconds", "tokens", "coalitions", "token_values", "trie_lower_bound"):
        assert rows[W2.name][k] == rows[W1.name][k]
    # Span values are the shared token values summed per span of each workload's players.
    tv = np.array(rows[W1.name]["token_values"])
    for w in (W1, W2):
        expected = [tv[s:e].sum() for s, e in W.span_players(w.response_tokens, w.n_players)]
        np.testing.assert_allclose(rows[w.name]["values"], expected, rtol=1e-12)
    # A later call (e.g. after a restart) reuses the run stored in the file.
    w4 = W.Workload("tiny", 16, 8, 8, 2)
    later = G.run_grid([w4], ["shap-partition"], out=out, progress=False)
    assert later.measured[0]["shared_from"] == W1.name
    assert later.measured[0]["utc_measured"] == rows[W2.name]["utc_measured"] == rows[W1.name]["utc_start"]
    assert count_runs.get((w4.name, "shap-partition")) is None


def test_markdown_round_trip(tmp_path):
    out = str(tmp_path / "grid.jsonl")
    G.run_grid([W1, W2], ["shap-partition", "scar-trie-kernel"], out=out, rounds=1,
               command="python bench/run.py grid x", progress=False)
    rows = G.load_rows(out)
    md = G.format_grid_markdown(rows, workloads=[W1, W2, W3], methods=["shap-partition", "scar-trie-kernel",
                                                                        "scar-loop"])
    assert "4 of 9 (workload, method) rows measured" in md
    assert "- Command: `python bench/run.py grid x`" in md
    assert "Regenerate: `python bench/run.py grid" in md
    by = {(r["workload"], r["method"]): r for r in rows}
    kern = by[(W1.name, "scar-trie-kernel")]
    authors = by[(W1.name, "shap-partition")]
    line = next(x for x in md.splitlines() if x.startswith(f"| {W1.name} | scar-trie-kernel |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{kern['seconds']:.3f}" and cells[3] == f"{kern['cpu_seconds']:.3f}"
    assert cells[6] == str(kern["tokens"])
    assert cells[11] == f"{authors['seconds'] / kern['seconds']:.1f}x"
    assert cells[12] == f"{authors['cpu_seconds'] / kern['cpu_seconds']:.1f}x"
    assert f"| {W2.name} | shap-partition * |" in md  # the shared authors' row is marked
    # Rows grouped by workload in the given order, authors' row first.
    table = [x for x in md.splitlines() if x.startswith("| tiny_")]
    assert [x.split("|")[1].strip() for x in table] == [W1.name, W1.name, W2.name, W2.name]
    assert f"- `scar-loop` (3 of 3): {W1.name}, {W2.name}, {W3.name}" in md
    assert f"- `shap-partition` (1 of 3): {W3.name}" in md
    speedups = [authors["cpu_seconds"] / by[(w.name, "scar-trie-kernel")]["cpu_seconds"] for w in (W1, W2)]
    assert (f"| `scar-trie-kernel` speedup over `shap-partition` (CPU time) | {min(speedups):.2f} / "
            f"{np.median(speedups):.2f} / {max(speedups):.2f} (2) |") in md


def test_max_minutes_stops_starting_rows(tmp_path):
    out = str(tmp_path / "grid.jsonl")
    none = G.run_grid([W1, W2], ["scar-trie-kernel"], out=out, max_minutes=0, progress=False)
    assert none.measured == [] and len(none.not_started) == 2
    assert G.load_rows(out) == []
    ticks = iter([0.0, 0.0, 61.0, 61.0])  # start, before row 1, before row 2 (past one minute)
    one = G.run_grid([W1, W2], ["scar-trie-kernel"], out=out, max_minutes=1, rounds=1, progress=False,
                     clock=lambda: next(ticks))
    assert [r["workload"] for r in one.measured] == [W1.name]
    assert one.not_started == [(W2.name, "scar-trie-kernel")]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method.*'bogus'"):
        G.parse_methods("scar-trie,bogus")
    with pytest.raises(ValueError, match="listed twice"):
        G.parse_methods("scar-trie,scar-trie")
    with pytest.raises(ValueError, match="no method"):
        G.parse_methods(" , ")
    with pytest.raises(ValueError, match="no grid workload name contains"):
        G.select_workloads("medium_")
    # Any of the comma-separated substrings, in grid order.
    assert [w.name for w in G.select_workloads("large_p1024_r128_n32,small_p64_r32_n8_k8")] == [
        "small_p64_r32_n8_k8", "large_p1024_r128_n32_k32", "large_p1024_r128_n32_k8"]
    out = str(tmp_path / "grid.jsonl")
    with pytest.raises(ValueError, match="max_minutes"):
        G.run_grid([W1], ["scar-trie"], out=out, max_minutes=-1)
    with pytest.raises(ValueError, match="rounds"):
        G.run_grid([W1], ["scar-trie"], out=out, rounds=0)
    with pytest.raises(ValueError, match="no workloads"):
        G.run_grid([], ["scar-trie"], out=out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"workload": "x", "method": "scar-trie"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON line"):
        G.load_rows(str(bad))


def test_grid_has_the_full_workload_grid():
    names = [w.name for w in W.GRID]
    assert len(names) == len(set(names)) == 75
    full = {w for w in W.GRID if w.response_tokens in (32, 128)}
    assert len(full) == 72
    assert {(w.model, w.prompt_tokens, w.response_tokens, w.n_players, w.n_perms) for w in full} == {
        (m, p, r, n, k) for m in ("small", "large") for p in (64, 256, 1024) for r in (32, 128)
        for n in (8, 16, 32) for k in (8, 32)}
    assert W.GRID[0] == W.TARGET_WORKLOAD
    first_large = next(i for i, w in enumerate(W.GRID[8:], 8) if w.model == "large")
    assert all(w.model == "large" for w in W.GRID[first_large:])


def test_default_out_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    bench = os.path.dirname(os.path.abspath(__file__))
    assert os.path.join(bench, "results", "grid.jsonl") == G.DEFAULT_OUT
    monkeypatch.chdir(tmp_path)
    assert G.load_rows(G.DEFAULT_OUT)  # the stored grid, read from another directory


def test_cli_grid_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(G, "GRID", (W1, W2))
    out = str(tmp_path / "g.jsonl")
    assert main(["grid", "--workloads", W2.name, "--methods", "scar-trie-kernel", "--out", out,
                 "--rounds", "1"]) == 0
    assert "1 rows measured, 0 already in" in capsys.readouterr().out
    assert [(r["workload"], r["method"]) for r in G.load_rows(out)] == [(W2.name, "scar-trie-kernel")]
    assert G.load_rows(out)[0]["command"] == (f"python bench/run.py grid --methods scar-trie-kernel "
                                              f"--workloads {W2.name} --out {out} --rounds 1")
    assert main(["markdown", "--out", out]) == 0
    md = capsys.readouterr().out
    assert f"| {W2.name} | scar-trie-kernel |" in md and "1 of 18 (workload, method) rows measured" in md


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required"),
    (["grid", "--methods", "bogus"], "unknown method"),
    (["table", "--methods", "scar-trie"], "unrecognized arguments: --methods"),
    (["markdown", "--rounds", "2"], "unrecognized arguments: --rounds"),
    (["grid", "--max-minutes", "-2"], "--max-minutes must be >= 0"),
    (["grid", "--rounds", "0"], "--rounds must be >= 1"),
    (["grid", "--workloads", "nothing-like-this"], "no grid workload name contains"),
    (["markdown", "--out", "/nonexistent/grid.jsonl"], "no grid rows"),
    (["table", "--out", "x.jsonl"], "unrecognized arguments: --out"),
    (["equal-error", "--grid"], "unrecognized arguments: --grid"),
])
def test_cli_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_run_script_works_from_another_directory(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    done = subprocess.run([sys.executable, RUN, "markdown", "--out", str(bad)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "bad.jsonl:1: not a JSON line" in done.stderr
