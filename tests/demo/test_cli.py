"""The command line: ``scar demo`` and ``scar explain`` on the tiny local sentiment world."""
import json

import pytest

from scar.cli import main


@pytest.fixture(scope="module")
def world_root(tiny_world):
    return tiny_world.path.parent


def test_demo_prints_heatmap_and_costs(world_root, capsys):
    assert main(["demo", "--size", "tiny", "--cache-dir", str(world_root), "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "reward r = v(N)" in out
    assert "backend trie" in out
    # every player of the demo response is listed with its credit in brackets
    assert "delight!" in out and ("[+" in out or "[-" in out)


def test_explain_json_is_efficient(tiny_world, capsys, tmp_path):
    world = tiny_world
    page = tmp_path / "credit.html"
    code = main(["explain", "--model", str(world.path / "reward_model"), "--tokenizer",
                 str(world.path / "tokenizer"), "--prompt", "My room was", "--response",
                 " clean and bright, but noisy.", "--method", "exact", "--json", "--html", str(page)])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)
    credit = [p["credit"] for p in rec["players"]]
    # exact Shapley values are efficient: they sum to v(N) - v(empty)
    assert sum(credit) == pytest.approx(rec["reward"] - rec["empty_value"], abs=1e-6)
    assert "".join(p["text"] for p in rec["players"]) == " clean and bright, but noisy."
    assert page.read_text().count("<span title=") == len(credit)


def test_bad_alpha_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--alpha", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err
