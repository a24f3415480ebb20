"""Amortized credit (:class:`scar.credit.amortized.AmortizedSCAR`): efficient by construction, even split
before any label, a head that fits its labels, labels chosen by the response alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scar.credit.amortized import AmortizedConfig, AmortizedSCAR
from scar.credit.rewarder import SCAR

PROMPTS = ["Review:", "Q: opinion?", "Tell me:", "Review:"]
RESPONSES = [" It was great, and lovely! The end was sad.", " Boring, slow and long.",
             " I did not like the ending; the plot is thin.", " Fine, I guess; nothing more."]


def test_before_any_label_the_credit_is_an_even_split(rm, tokenizer):
    am = AmortizedSCAR(rm, tokenizer, label_fraction=1e-9, progress=False, seed=0)  # no response is labelled
    d = am(PROMPTS, RESPONSES)
    assert am.labels_seen == 0
    exact = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES)
    for i in range(len(RESPONSES)):
        total = float(d.rewards[i] - d.base_values[i])
        n = d.values[i].numel()
        torch.testing.assert_close(d.values[i], torch.full((n,), total / n, dtype=torch.float64))
        assert float(d.rewards[i]) == pytest.approx(float(exact.rewards[i]), abs=1e-5)  # r = v(N), v(∅) as SCAR's
        assert float(d.base_values[i]) == pytest.approx(float(exact.base_values[i]), abs=1e-5)
    assert am.last_stats[0].backend == "amortized" and am.last_stats[0].passes == 2


def test_the_head_fits_its_labels_and_stays_efficient(rm, tokenizer):
    """With exact labels for every response and fewer equations than features, the ridge head reproduces
    them; the values always sum to v(N) - v(∅)."""
    am = AmortizedSCAR(rm, tokenizer, method="exact", budget=None, label_fraction=1.0, ridge=1e-8, progress=False,
                       players="span", max_span_tokens=4)
    exact = SCAR(rm, tokenizer, method="exact", progress=False, players="span", max_span_tokens=4)
    want = exact(PROMPTS[:2], RESPONSES[:2])
    got = am(PROMPTS[:2], RESPONSES[:2])
    assert am.labels_seen == 2
    for i in range(2):
        assert float(got.values[i].sum()) == pytest.approx(float(got.rewards[i] - got.base_values[i]), abs=1e-9)
        assert np.corrcoef(got.values[i].numpy(), want.values[i].numpy())[0, 1] > 0.95
        assert float((got.values[i] - want.values[i]).abs().max()) < 0.05 * float(want.values[i].abs().max()) + 1e-3


def test_labelled_responses_depend_on_the_response_alone(rm, tokenizer):
    am = AmortizedSCAR(rm, tokenizer, label_fraction=0.5, progress=False, seed=3)
    from scar.game.tokens import encode_pair

    chosen = [am._labelled(encode_pair(tokenizer, p, r)) for p, r in zip(PROMPTS, RESPONSES)]
    again = [am._labelled(encode_pair(tokenizer, p, r)) for p, r in zip(PROMPTS[::-1], RESPONSES[::-1])][::-1]
    assert chosen == again
    many = [am._labelled(encode_pair(tokenizer, "Q:", f" answer number {k}.")) for k in range(200)]
    assert 0.35 < np.mean(many) < 0.65


def test_bad_settings_and_encoders_are_refused(rm, tokenizer, tiny_model):
    with pytest.raises(ValueError, match="label_fraction"):
        AmortizedConfig(label_fraction=0.0)
    with pytest.raises(ValueError, match="ridge"):
        AmortizedConfig(ridge=0.0)
    with pytest.raises(TypeError, match="AmortizedConfig"):
        AmortizedSCAR(rm, tokenizer, config=object())
    with pytest.raises(ValueError, match="causal decoder"):
        AmortizedSCAR(tiny_model("bert"), tokenizer)
