"""``score_dtype``: the coalitions scored by a lower-precision copy of the reward model, ``r`` and ``v(∅)`` by
the model itself as the estimate's empty and full coalitions, so the values sum to ``r - v(∅)`` exactly;
``"auto"`` follows the measurement."""

from __future__ import annotations

import pytest
import torch

import scar.scoring.precision as precision
from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR
from scar.game.tokens import encode_pair
from scar.scoring.model import model_dtype
from scar.scoring.padded import score_padded

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:", "Review:"]
RESPONSES = [" It was great, and lovely!", " Boring, slow. The plot is thin.", " I did not like the ending."]
KW = dict(players="span", method="permutation", budget=4, seed=3, progress=False)


def test_bfloat16_coalitions_keep_r_and_sum_exactly(rm, tokenizer) -> None:
    before = [p.detach().clone() for p in rm.parameters()]
    full = SCAR(rm, tokenizer, **KW)
    half = SCAR(rm, tokenizer, score_dtype="bfloat16", **KW)
    assert half.credit_scorer is not half.scorer and model_dtype(half.credit_scorer.view) == torch.bfloat16
    assert full.credit_scorer is full.scorer
    want, got = full(PROMPTS, RESPONSES), half(PROMPTS, RESPONSES)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        enc = encode_pair(tokenizer, prompt, response)
        with torch.no_grad():
            plain = score_padded(full.scorer.view, full.scorer.info, [enc.ids, enc.prompt_ids], score_fn=None).scores
        # r and v(∅) are the float32 model's plain scores (bfloat16 ones would be ~1e-3 off)
        torch.testing.assert_close(got.rewards[i], plain[0].double(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got.base_values[i], plain[1].double(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got.rewards[i], want.rewards[i], atol=1e-5, rtol=0)
        # the values still split r - v(∅) exactly ...
        assert float(got.values[i].sum()) == pytest.approx(float(got.rewards[i] - got.base_values[i]), abs=1e-9)
        # ... and differ from the float32 split by bfloat16 rounding only (same coalitions, same seed)
        scale = float(want.values[i].abs().max())
        assert float((got.values[i] - want.values[i]).abs().max()) <= 0.05 * scale
        assert not torch.equal(got.values[i], want.values[i])  # the copy really scored them
    assert all(p.dtype == torch.float32 for p in rm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, rm.parameters()))  # the model is untouched
    # the cost of a chunk includes the plain pass that gives r and v(∅)
    assert half.last_stats[0].tokens_computed > half.credit_scorer.stats.tokens_computed


@pytest.mark.parametrize("speedup, cast", [(3.0, True), (1.0, False), (0.0, False)])
def test_auto_follows_the_measurement(rm, tokenizer, monkeypatch, speedup: float, cast: bool) -> None:
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda device, width: speedup)
    scar = SCAR.for_training(rm, tokenizer, progress=False)
    assert scar.config.score_dtype == "auto"
    assert (scar.credit_scorer is not scar.scorer) == cast
    assert precision.resolve_score_dtype("auto", rm) == (torch.bfloat16 if cast else None)
    exact = SCAR.for_training(rm, tokenizer, progress=False, method="exact")
    assert exact.credit_scorer is exact.scorer  # auto never rounds exact values


def test_resolution_against_the_model_dtype(rm, monkeypatch) -> None:
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda device, width: 10.0)
    half = precision.cast_copy(rm, torch.bfloat16)
    assert precision.resolve_score_dtype("auto", half) is None  # only a float32 model is cast by auto
    assert precision.resolve_score_dtype("bfloat16", half) is None  # already in it: no copy
    assert precision.resolve_score_dtype("float16", rm) == torch.float16
    assert precision.resolve_score_dtype(None, rm) is None
    rm.hf_device_map = {"transformer.h.0": 0, "transformer.h.1": 1}  # dispatched over two devices: no copy
    try:
        assert precision.resolve_score_dtype("auto", rm) is None
    finally:
        del rm.hf_device_map
    assert precision.resolve_score_dtype("auto", rm) == torch.bfloat16
    with pytest.raises(ValueError, match=r"unknown score_dtype 'int8'; expected one of \('auto', 'bfloat16'"):
        precision.resolve_score_dtype("int8", rm)  # the message of CreditConfig's check


@pytest.mark.parametrize("bad", ["int8", "fp32", torch.bfloat16, 16])
def test_bad_score_dtype_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="unknown score_dtype"):
        CreditConfig(score_dtype=bad)


def test_the_measurement() -> None:
    assert precision.bfloat16_speedup("meta", 64) == 0.0
    assert precision.bfloat16_speedup("cpu", 64) > 0.0


def test_bfloat16_coalitions_anchor_to_the_games_own_empty_coalition(rm, tokenizer) -> None:
    # with removal="replace" the empty coalition is prompt, fillers and suffix, not prompt and suffix: r and
    # v(∅) come from the model's own scorer of the same game
    kw = dict(KW, removal="replace", suffix_ids=[tokenizer.eos_token_id])  # the fillers come before the suffix
    want = SCAR(rm, tokenizer, **kw)(PROMPTS, RESPONSES)
    got = SCAR(rm, tokenizer, score_dtype="bfloat16", **kw)(PROMPTS, RESPONSES)
    torch.testing.assert_close(got.base_values, want.base_values, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.rewards, want.rewards, atol=1e-5, rtol=0)
    for i in range(len(RESPONSES)):
        assert float(got.values[i].sum()) == pytest.approx(float(got.rewards[i] - got.base_values[i]), abs=1e-9)


def test_the_bfloat16_copy_follows_the_reward_models_weights(rm, tokenizer) -> None:
    # a reward model updated between calls (in place, or with a new shape) is scored with its new weights,
    # as a SCAR built after the update would score it
    import copy

    model = copy.deepcopy(rm)
    half = SCAR(model, tokenizer, score_dtype="bfloat16", **KW)
    before = half(PROMPTS, RESPONSES)
    with torch.no_grad():
        for p in model.transformer.h[0].mlp.parameters():
            p.mul_(-3.0)  # an optimiser step, as far as the copy can tell
    after = half(PROMPTS, RESPONSES)
    fresh = SCAR(model, tokenizer, score_dtype="bfloat16", **KW)(PROMPTS, RESPONSES)
    for i in range(len(RESPONSES)):
        torch.testing.assert_close(after.values[i], fresh.values[i], atol=1e-6, rtol=0)
        assert not torch.allclose(after.values[i], before.values[i], atol=1e-3)
    scorer = half.credit_scorer
    model.resize_token_embeddings(310)  # new shapes: a new copy and a new scorer
    assert half.credit_scorer is not scorer
    resized = half(PROMPTS, RESPONSES)
    want = SCAR(model, tokenizer, score_dtype="bfloat16", **KW)(PROMPTS, RESPONSES)
    for i in range(len(RESPONSES)):
        torch.testing.assert_close(resized.values[i], want.values[i], atol=1e-6, rtol=0)
    assert half.credit_scorer is half.credit_scorer  # unchanged weights: no new copy


def test_cast_copy_syncs_only_what_changed() -> None:
    layer = torch.nn.Linear(4, 3)
    cast = precision.CastCopy(layer, torch.bfloat16)
    assert cast.model.weight.dtype == torch.bfloat16 and not cast.sync()
    with torch.no_grad():
        layer.weight.fill_(0.5)
    assert not cast.sync()  # updated in place: same object
    assert torch.equal(cast.model.weight, torch.full((3, 4), 0.5, dtype=torch.bfloat16))
    layer.bias = torch.nn.Parameter(torch.ones(3))  # replaced, same shape: still in place
    assert not cast.sync() and torch.equal(cast.model.bias, torch.ones(3, dtype=torch.bfloat16))
    layer.weight = torch.nn.Parameter(torch.zeros(5, 4))  # new shape: a new copy
    old = cast.model
    assert cast.sync() and cast.model is not old and cast.model.weight.shape == (5, 4)


def test_cast_copy_copies_only_the_tensors_that_changed() -> None:
    # a buffer that a forward rewrites must not make every sync copy the whole model
    layer = torch.nn.Linear(4, 3)
    cast = precision.CastCopy(layer, torch.bfloat16)
    with torch.no_grad():
        cast.model.weight.fill_(7.0)  # a marker: a sync that copied the weight would overwrite it
        layer.bias.fill_(0.25)
    assert not cast.sync()
    assert torch.equal(cast.model.bias, torch.full((3,), 0.25, dtype=torch.bfloat16))
    assert bool((cast.model.weight == 7.0).all())
