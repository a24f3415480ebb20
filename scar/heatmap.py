"""Show credit over a response: a terminal heatmap, an HTML page, and a JSON record.

Each piece of text (a player) is coloured by its credit: green for positive, red for negative,
stronger for larger magnitude relative to the largest magnitude in the response.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

__all__ = ["render_terminal", "render_html", "to_json"]

# 256-colour ANSI backgrounds from faint to strong, for negative (red) and positive (green) credit.
_RED = (224, 217, 210, 203, 196)
_GREEN = (194, 157, 120, 83, 46)


def _check(pieces: Sequence[str], scores: Sequence[float]) -> float:
    if len(pieces) != len(scores):
        raise ValueError(f"got {len(pieces)} text pieces but {len(scores)} scores")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(float(s))]
    if bad:
        raise ValueError(f"scores of pieces {bad} are not finite")
    return max((abs(float(s)) for s in scores), default=0.0)


def _level(score: float, scale: float) -> int:
    if scale == 0.0:
        return 0
    return min(4, int(abs(score) / scale * 4.999))


def render_terminal(pieces: Sequence[str], scores: Sequence[float], *, color: bool = True) -> str:
    """The response with each piece's background coloured by its credit (ANSI 256 colours).

    With ``color=False`` each piece is followed by its credit in brackets instead.
    """
    scale = _check(pieces, scores)
    out = []
    for text, s in zip(pieces, scores):
        s = float(s)
        if not color:
            out.append(f"{text}[{s:+.3f}]")
            continue
        palette = _GREEN if s >= 0 else _RED
        out.append(f"\x1b[48;5;{palette[_level(s, scale)]}m\x1b[38;5;16m{text}\x1b[0m")
    return "".join(out)


def render_html(pieces: Sequence[str], scores: Sequence[float], *, title: str = "SCAR credit", header: str = "") -> str:
    """A self-contained HTML page: pieces coloured by credit, exact value on hover, and a table."""
    scale = _check(pieces, scores) or 1.0
    spans = []
    rows = []
    for i, (text, s) in enumerate(zip(pieces, scores)):
        s = float(s)
        alpha = min(1.0, abs(s) / scale)
        rgb = "0,160,60" if s >= 0 else "220,30,30"
        spans.append(
            f'<span title="player {i}: {s:+.5f}" style="background: rgba({rgb},{alpha:.3f})">{html.escape(text)}</span>'
        )
        rows.append(f"<tr><td>{i}</td><td><code>{html.escape(text)}</code></td><td>{s:+.5f}</td></tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".text{white-space:pre-wrap;font-family:monospace;font-size:1.1em;line-height:1.8}"
        "td{padding:0 1em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(header)}</p>"
        f"<div class='text'>{''.join(spans)}</div>"
        "<table><tr><th>player</th><th>text</th><th>credit</th></tr>"
        f"{''.join(rows)}</table></body></html>"
    )


def to_json(pieces: Sequence[str], scores: Sequence[float], **extra) -> str:
    """A JSON record ``{"players": [{"text", "credit"}...], **extra}``."""
    _check(pieces, scores)
    record = {"players": [{"text": t, "credit": float(s)} for t, s in zip(pieces, scores)]}
    record.update(extra)
    return json.dumps(record, indent=2)
