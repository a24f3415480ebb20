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


# ---------------------------------------------------------------------------------- bad arguments


def explain(world, *extra, response=" clean and bright.", model=None):
    return main(["explain", "--model", model or str(world.path / "reward_model"), "--tokenizer",
                 str(world.path / "tokenizer"), "--prompt", "My room was", "--response", response, *extra])


def test_missing_and_non_model_folders_are_one_line_errors(tiny_world, tmp_path, capsys):
    assert explain(tiny_world, model=str(tmp_path / "nowhere")) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert explain(tiny_world, model=str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert "not a transformers model folder" in err and "Traceback" not in err


def test_a_checkpoint_without_a_trained_head_is_refused(tiny_world, tmp_path, capsys):
    """A causal LM (the world's policy) would load as a classifier with a random score head."""
    assert explain(tiny_world, model=str(tiny_world.path / "policy")) == 2
    err = capsys.readouterr().err
    assert "no trained sequence-classification head" in err and "score" in err


def test_empty_response_and_unwritable_html_fail_before_scoring(tiny_world, tmp_path, capsys):
    assert explain(tiny_world, response="   ") == 2
    assert "--response is empty" in capsys.readouterr().err
    assert explain(tiny_world, "--html", str(tmp_path / "missing" / "page.html")) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and captured.out == ""  # nothing was scored or printed
    assert explain(tiny_world, "--html", str(tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err
