"""Fuzzing the scorer's and SCAR's inputs: every call returns well-formed scores or raises a TypeError or
ValueError that names what is wrong, never another exception and never a silent NaN."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2ForSequenceClassification

from scar.credit.rewarder import SCAR
from scar.scoring import CoalitionScorer

from tiny_tokenizers import build_tokenizer

VOCAB = 100
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB,
                                                    n_positions=64, pad_token_id=0, num_labels=1)).eval()


@pytest.fixture(scope="module")
def scorers(model):
    return {b: CoalitionScorer(model, backend=b) for b in ("loop", "batched", "trie")}


ids = st.one_of(
    st.lists(st.integers(-5, VOCAB + 5), min_size=0, max_size=12),
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12),
    st.lists(st.floats(allow_nan=True), max_size=3),
    st.just(b"abc"),
    st.just("text"),
    st.just(torch.tensor([[1, 2], [3, 4]])),
    st.just(torch.tensor([1.5, 2.0])),
    st.just(None),
    st.just([2**70]),
)
players = st.one_of(
    st.lists(st.tuples(st.integers(-2, 14), st.integers(-2, 14)), max_size=5),
    st.just([(0, 1), "ab"]),
    st.just(torch.tensor([[0, 1], [1, 3]])),
    st.just(torch.tensor([[0.0, 1.0]])),
)
coalitions = st.one_of(
    st.integers(0, 5).flatmap(lambda n: st.integers(0, 6).map(lambda c: torch.rand(c, n) < 0.5)),
    st.just(torch.ones(3, 2, dtype=torch.int64)),
    st.just(torch.ones(2, 2, 2, dtype=torch.bool)),
    st.just([[True, False]]),
)

ALLOWED = (TypeError, ValueError)


@SETTINGS
@given(prompt=ids, response=ids, players=players, coalitions=coalitions, suffix=st.one_of(st.none(), ids),
       backend=st.sampled_from(["loop", "batched", "trie"]))
def test_scorer_inputs(scorers, prompt, response, players, coalitions, suffix, backend):
    try:
        out = scorers[backend].score(prompt, response, players, coalitions, suffix)
    except ALLOWED as err:
        assert str(err)  # a message, naming the problem
        return
    assert out.dtype == torch.float64 and out.shape == (coalitions.shape[0],)
    assert bool(torch.isfinite(out).all())


@pytest.fixture(scope="module")
def scar_credit():
    tok = build_tokenizer(300)
    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=64,
                                                  pad_token_id=0, num_labels=1)).eval()
    return SCAR(rm, tok, method="exact", progress=False, max_span_tokens=3)


texts = st.one_of(st.text(max_size=30), st.lists(st.integers(-3, 310), max_size=8), st.just(b"x"), st.none(),
                  st.just(3.5))


@SETTINGS
@given(prompts=st.lists(texts, min_size=0, max_size=3), responses=st.lists(texts, min_size=0, max_size=3),
       with_ids=st.booleans())
def test_scar_inputs(scar_credit, prompts, responses, with_ids):
    completion_ids = [[5, 6]] * len(responses) if with_ids else None
    try:
        dense = scar_credit(prompts, responses, completion_ids)
    except ALLOWED as err:
        assert str(err)
        return
    assert len(dense) == len(responses)
    for i in range(len(dense)):
        assert bool(torch.isfinite(dense.token_rewards[i]).all())
        assert dense.values[i].sum().item() == pytest.approx(
            float(dense.rewards[i] - dense.base_values[i]), abs=1e-5)
