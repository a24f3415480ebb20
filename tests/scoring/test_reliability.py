"""The scorer under stress: threads, models that are not reward models, non-finite activations, float64,
weights not loaded, and the runtime exactness check."""

from __future__ import annotations

import threading

import pytest
import torch
import transformers as tf

import scar.scoring.scorer as scorer_module
from scar.scoring import CoalitionScorer
from scar.scoring.scorer import ExactnessError
from scar.scoring.views import model_view
from scar_kernels.ops import has_extension

PROMPT = [5, 6, 7, 8]
RESPONSE = [10, 11, 50, 13, 14, 15, 16]
PLAYERS = [(0, 2), (2, 3), (3, 5), (5, 7)]
COALITIONS = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1],
                           [1, 0, 0, 0]], dtype=torch.bool)
ATTENTIONS = (["kernel", "mask"] if has_extension() else ["mask"]) + ["flex"]
# attention="flex" runs eager here (the compiled run is tested in tests/kernels/test_flex.py)
pytestmark = pytest.mark.usefixtures("eager_flex")


def gpt2(seed: int = 0, **kw) -> tf.GPT2ForSequenceClassification:
    settings = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=128, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2, num_labels=1)
    cfg = tf.GPT2Config(**{**settings, **kw})
    torch.manual_seed(seed)
    return tf.GPT2ForSequenceClassification(cfg).eval()


def loop_scores(model, coalitions=COALITIONS, prompt=PROMPT, response=RESPONSE, players=PLAYERS):
    return CoalitionScorer(model, backend="loop").score(prompt, response, players, coalitions, [2])


# ----------------------------------------------------------------------------------------- threads


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_threads_share_a_scorer_and_the_model_stays_unchanged(attention):
    model = gpt2(seed=1)
    model.train()  # a model a user is training: its flags must survive concurrent scoring
    flags = [m.training for m in model.modules()]
    implementation = model.config._attn_implementation
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=24)
    with torch.no_grad():
        model.eval()
        plain_expected = model(input_ids=torch.tensor([PROMPT + RESPONSE])).logits
        model.train()
    expected = scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    results, errors = [], []

    def score_five_times():
        try:
            for _ in range(5):
                results.append(scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2]))
                assert scorer.stats.coalitions == len(COALITIONS)
        except Exception as err:  # collected: an assertion in a thread would be lost
            errors.append(err)

    def plain_forwards():
        try:
            for _ in range(5):
                with torch.no_grad():
                    model.eval()
                    out = model(input_ids=torch.tensor([PROMPT + RESPONSE])).logits
                    torch.testing.assert_close(out, plain_expected)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=score_five_times) for _ in range(8)]
    threads += [threading.Thread(target=plain_forwards) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 40
    for got in results:
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    model.train()
    assert [m.training for m in model.modules()] == flags
    assert model.config._attn_implementation == implementation
    # a new scorer of another backend and a fresh model of the same config still work
    torch.testing.assert_close(loop_scores(model.eval()), expected, atol=1e-5, rtol=1e-5)
    fresh = tf.GPT2ForSequenceClassification(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(loop_scores(fresh), expected, atol=1e-5, rtol=1e-5)


def test_trie_and_loop_scorers_on_one_model_at_once():
    model = gpt2(seed=2)
    trie = CoalitionScorer(model, backend="trie")
    loop = CoalitionScorer(model, backend="loop")
    expected = loop.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    errors = []

    def run(scorer):
        try:
            for _ in range(4):
                torch.testing.assert_close(scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2]), expected,
                                           atol=1e-5, rtol=1e-5)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in (trie, loop, trie, loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_views_share_parameters_and_never_touch_the_model():
    model = gpt2(seed=3)
    model.train()
    view = model_view(model, "eager")
    assert view is model_view(model, "eager")  # cached
    assert all(a is b for a, b in zip(model.parameters(), view.parameters()))
    assert model.config._attn_implementation == "sdpa" and view.config._attn_implementation == "eager"
    assert model.training and not any(m.training for m in view.modules())
    with torch.no_grad():
        model.transformer.wte.weight[7] += 1.0  # a weight update is seen by the view
    assert torch.equal(view.transformer.wte.weight[7], model.transformer.wte.weight[7])


# ----------------------------------------------------------------------------- what a reward model is


@pytest.mark.parametrize("build", [
    lambda: tf.GPT2ForTokenClassification(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100,
                                                        num_labels=1)),
    lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)),
    lambda: tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                               num_attention_heads=2, vocab_size=100)),
    lambda: tf.BertForMaskedLM(tf.BertConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                             num_attention_heads=2, vocab_size=100)),
], ids=["gpt2-token-classification", "gpt2-lm", "llama-lm", "bert-mlm"])
def test_models_that_are_not_sequence_classifiers_are_refused(build):
    model = build().eval()
    with pytest.raises(ValueError, match="not a sequence classifier"):
        CoalitionScorer(model)


def test_a_score_fn_reads_any_model_through_the_loop_backend():
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)).eval()

    def last_token_logit_of_id_3(logits):  # [1, T, V] -> [1]
        return logits[:, -1, 3]

    scorer = CoalitionScorer(model, score_fn=last_token_logit_of_id_3)
    assert scorer.backend == "loop"
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS[:2], [2])
    with torch.no_grad():
        full = model(input_ids=torch.tensor([PROMPT + RESPONSE + [2]])).logits[0, -1, 3]
    assert float(got[0]) == pytest.approx(float(full), abs=1e-5)
    with pytest.raises(ValueError, match="needs a \\*ForSequenceClassification"):
        CoalitionScorer(model, score_fn=last_token_logit_of_id_3, backend="trie")


def test_weights_on_the_meta_device_are_refused():
    with torch.device("meta"):
        model = tf.GPT2ForSequenceClassification(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100,
                                                               num_labels=1))
    with pytest.raises(ValueError, match="meta device"):
        CoalitionScorer(model)


# ----------------------------------------------------------------------------- non-finite activations


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_one_inf_embedding_poisons_only_the_coalitions_that_contain_it(attention):
    model = gpt2(seed=4)
    with torch.no_grad():
        model.transformer.wte.weight[50] = float("inf")  # token 50 is player 1 of the response
    expected = loop_scores(model)
    contains = COALITIONS[:, 1]
    assert bool(torch.isnan(expected[contains]).all()) and bool(torch.isfinite(expected[~contains]).all())
    scorer = CoalitionScorer(model, backend="trie", attention=attention)
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    torch.testing.assert_close(got[~contains], expected[~contains], atol=1e-5, rtol=1e-5)


def test_scar_names_the_response_whose_token_is_non_finite():
    from scar.credit.rewarder import SCAR

    from tiny_tokenizers import word_level_tokenizer

    words = ["good", "bad", "film", "plot", "poison", "fine", "ok", "the", "was", "and"]
    tok = word_level_tokenizer(words)
    model = gpt2(seed=5, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.transformer.wte.weight[tok.convert_tokens_to_ids("poison")] = float("inf")
    scar = SCAR(model, tok, method="exact", players="token", progress=False, batch_size=3)
    responses = ["good film", "the plot was fine", "the poison was ok", "bad and fine"]
    with pytest.raises(ValueError, match=r"Shapley credit of response 2: .*not finite"):
        scar(["the film"] * 4, responses)


# ----------------------------------------------------------------------------- dtypes


def test_float64_models_work_under_the_defaults():
    model = gpt2(seed=6).double()
    scorer = CoalitionScorer(model)
    assert scorer.backend == "trie" and scorer.attention == "mask"
    torch.testing.assert_close(scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2]), loop_scores(model),
                               atol=1e-10, rtol=1e-10)
    if has_extension():
        with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
            CoalitionScorer(model, attention="kernel")
    with pytest.raises(ValueError, match=r"attention='flex' is not available: .*float32, float16 or bfloat16"):
        CoalitionScorer(model, attention="flex")


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_trie_agrees_with_plain_deletion_per_dtype(tiny_model, kind, dtype, tolerance):
    """Stated tolerance per dtype: the packed forward sums in another order than the plain one."""
    base = tiny_model(kind, seed=7)
    model = type(base)(base.config).to(dtype).eval()
    model.load_state_dict({k: v.to(dtype) for k, v in base.state_dict().items()})
    expected = loop_scores(model)
    for attention in ATTENTIONS:
        got = CoalitionScorer(model, backend="trie", attention=attention).score(PROMPT, RESPONSE, PLAYERS,
                                                                                COALITIONS, [2])
        assert float((got - expected).abs().max()) <= tolerance * (1 + float(expected.abs().max()))


# ----------------------------------------------------------------------------- the runtime exactness check


class PositionBlindGPT2Model(tf.GPT2Model):
    """A decoder whose forward takes position_ids and ignores them: the packed trie is wrong for it."""

    def forward(self, *args, position_ids=None, **kwargs):
        return super().forward(*args, **kwargs)


def test_exactness_check_catches_a_model_the_structural_checks_let_through(monkeypatch):
    model = gpt2(seed=9)
    model.transformer.__class__ = PositionBlindGPT2Model
    ok, why = scorer_module.trie_exactness(model)
    assert not ok and "probe" in why  # the probe sees it; pretend it did not
    monkeypatch.setattr(scorer_module, "trie_exactness", lambda m: (True, "pretend"))
    # an explicit kernel is probed against plain deletion at construction and refused
    with pytest.raises(ValueError, match=r"attention='kernel' is not available: .*differs from plain deletion"):
        CoalitionScorer(model, backend="trie", attention="kernel")
    monkeypatch.setattr(CoalitionScorer, "_probe_attention", lambda self, attention: None)  # pretend again
    for attention in ATTENTIONS:
        scorer = CoalitionScorer(model, backend="trie", attention=attention, verify=len(COALITIONS))
        with pytest.raises(ExactnessError, match="exactness check failed: backend 'trie'"):
            scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    off = CoalitionScorer(model, backend="trie", attention="mask", verify=0)
    off.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])  # unchecked: the wrong values pass silently
    assert off.stats.verify_coalitions == 0


@pytest.mark.parametrize("backend", ["trie", "batched"])
def test_exactness_check_costs_one_plain_forward_by_default(backend):
    scorer = CoalitionScorer(gpt2(seed=8), backend=backend)
    scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    st = scorer.stats
    assert st.verify_coalitions == 1 and 0 < st.verify_tokens <= len(PROMPT) + len(RESPONSE) + 1
    assert st.verify_max_error < 1e-4
    with pytest.raises(ValueError, match="verify"):
        CoalitionScorer(gpt2(), verify=-1)


def _scorer_with_wrong_packed_scores(dtype, wrong, verify, by=3.0):
    """A trie scorer of a ``dtype`` GPT-2 whose packed scores of the coalitions ``wrong`` are off by ``by``."""
    scorer = CoalitionScorer(gpt2(seed=8).to(dtype), backend="trie", attention="mask", verify=verify)
    run = scorer._run

    def shifted(*args, **kwargs):
        scores = run(*args, **kwargs)
        scores[0][list(wrong)] += by
        return scores

    scorer._run = shifted
    return scorer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_check_tolerates_one_outlier_after_rechecking_others(dtype):
    # Rounding in half precision can put one coalition of an ill-conditioned input far from its plain
    # score; the check re-scores others and lets it through when they agree.
    scorer = _scorer_with_wrong_packed_scores(dtype, [2], verify=len(COALITIONS))
    scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
    st = scorer.stats
    assert st.verify_tolerated == 1 and st.verify_coalitions == len(COALITIONS) and st.verify_max_error > 2.5
    # default verify=1: a disagreeing draw is followed by HALF_PRECISION_RECHECK more coalitions
    scorer = _scorer_with_wrong_packed_scores(dtype, range(len(COALITIONS)), verify=1)
    with pytest.raises(ExactnessError, match="exactness check failed"):
        scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_check_raises_on_a_second_disagreement(dtype):
    scorer = _scorer_with_wrong_packed_scores(dtype, [1, 5], verify=len(COALITIONS))
    with pytest.raises(ExactnessError, match="exactness check failed"):
        scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])


def test_float32_check_tolerates_no_outlier():
    scorer = _scorer_with_wrong_packed_scores(torch.float32, [2], verify=len(COALITIONS))
    with pytest.raises(ExactnessError, match="exactness check failed"):
        scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])


def test_half_precision_recheck_draws_other_coalitions(monkeypatch):
    # one wrong coalition out of seven, verify=1: whichever the first draw is, the check never raises, and
    # when it drew the wrong one it re-scored min(HALF_PRECISION_RECHECK, 6) more
    monkeypatch.setattr(scorer_module, "HALF_PRECISION_RECHECK", 3)
    tolerated = 0
    for seed in range(30):
        scorer = _scorer_with_wrong_packed_scores(torch.bfloat16, [4], verify=1)
        scorer._verify_rng.seed(seed)
        scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
        st = scorer.stats
        assert st.verify_coalitions == (4 if st.verify_tolerated else 1)
        tolerated += st.verify_tolerated
    assert 0 < tolerated < 30  # some first draws hit the wrong coalition, some did not


def test_half_precision_check_never_tolerates_a_nan():
    scorer = _scorer_with_wrong_packed_scores(torch.bfloat16, [2], verify=len(COALITIONS), by=float("nan"))
    with pytest.raises(ExactnessError, match="nan"):
        scorer.score(PROMPT, RESPONSE, PLAYERS, COALITIONS, [2])
