"""Plain scoring in right-padded batches (:mod:`scar.scoring.padded`) equals one forward per sequence."""

from __future__ import annotations

import pytest
import torch

from scar.scoring.model import evaluation_mode, inspect_model
from scar.scoring.padded import pad_right, score_padded

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 0], [16]]  # the third ends in the pad id (0)


def one_by_one(model, rows):
    with torch.no_grad():
        return [float(model(input_ids=torch.tensor([r])).logits[0, 0]) for r in rows]


def test_pad_right():
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_right([], pad_id=0)
    assert ids.shape == (0, 0)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("limits", [dict(), dict(batch_size=1), dict(max_tokens=8), dict(batch_size=3, max_tokens=64)])
def test_scores_equal_one_forward_per_sequence(tiny_model, kind, limits):
    model = tiny_model(kind)
    info = inspect_model(model)
    with evaluation_mode(model):
        out = score_padded(model, info, ROWS, **limits)
    # transformers reads a decoder out at the rightmost non-pad token: the row ending in pad agrees with it
    assert out.scores.dtype == torch.float64
    assert out.scores.tolist() == pytest.approx(one_by_one(model, ROWS), abs=1e-5)
    assert out.tokens >= sum(len(r) for r in ROWS) and out.passes >= 1
    if "batch_size" in limits:
        assert out.passes >= len(ROWS) / limits["batch_size"]


def test_attention_rows_of_the_readout_token(tiny_model):
    model = tiny_model("gpt2", seed=11)  # its own model: the attention implementation is switched below
    model.set_attn_implementation("eager")
    info = inspect_model(model)
    with evaluation_mode(model):
        out = score_padded(model, info, ROWS[:2], attention=True)
        alone = model.transformer(input_ids=torch.tensor([ROWS[1]]), output_attentions=True)
    assert [a.shape[0] for a in out.attention] == [6, 2]
    expected = alone.attentions[-1][0].mean(0)[-1].double()
    torch.testing.assert_close(out.attention[1], expected, atol=1e-6, rtol=0)
    assert out.attention[0].sum().item() == pytest.approx(1.0, abs=1e-6)
