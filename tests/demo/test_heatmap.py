import json

import pytest

from scar.heatmap import render_html, render_terminal, to_json


def test_terminal_colours_follow_sign_and_magnitude():
    out = render_terminal(["good", " bad", " meh"], [1.0, -1.0, 0.0])
    # strongest green for the largest positive, strongest red for the largest negative, faintest for zero
    assert "\x1b[48;5;46mgood" in out.replace("\x1b[38;5;16m", "")
    assert "\x1b[48;5;196m bad" in out.replace("\x1b[38;5;16m", "")
    assert "\x1b[48;5;194m meh" in out.replace("\x1b[38;5;16m", "")


def test_terminal_without_colour_prints_values():
    assert render_terminal(["a", "b"], [0.5, -0.25], color=False) == "a[+0.500]b[-0.250]"


def test_html_escapes_text_and_shows_values():
    page = render_html(["<b>", " x"], [0.1, -0.2], title="t")
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1].split("<table>")[0]
    assert "-0.20000" in page and "rgba(220,30,30,1.000)" in page


def test_json_round_trip():
    rec = json.loads(to_json(["a", "b"], [1.0, 2.0], reward=3.0))
    assert rec["players"] == [{"text": "a", "credit": 1.0}, {"text": "b", "credit": 2.0}]
    assert rec["reward"] == 3.0


@pytest.mark.parametrize("scores", [[1.0], [float("nan"), 1.0]])
def test_bad_input(scores):
    with pytest.raises(ValueError):
        render_terminal(["a", "b"], scores)
