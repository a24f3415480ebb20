"""Tests for scar.credit.baselines: attention-based credit (ABC) and the sparse baseline, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from scar.credit.baselines import attention_credit, sparse_credit

from tiny_tokenizers import build_tokenizer

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:", "Q: opinion?"]
RESPONSES = [" It was great, and lovely!", " Boring.", " I did not like the ending; the plot is thin, the music too."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(300)


@pytest.fixture(scope="module")
def policy_tokenizer():
    return build_tokenizer(270)


def gpt2_rm(num_labels: int = 1, n_positions: int = 128, attn: str | None = None) -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=n_positions, num_labels=num_labels,
        pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )
    if attn is not None:
        cfg._attn_implementation = attn
    return GPT2ForSequenceClassification(cfg)


@pytest.fixture(scope="module")
def rm():
    return gpt2_rm()


def by_hand(model, tokenizer, prompt, response):
    """r and the normalised head-averaged last-layer attention of the last token, from an eager copy."""
    eager = gpt2_rm(attn="eager")
    eager.load_state_dict(model.state_dict())
    eager.eval()
    p = tokenizer(prompt)["input_ids"]
    q = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + q])
    assert 0 not in ids  # no pad id inside, so the classifier's own pooling reads the last token
    with torch.no_grad():
        out = eager(input_ids=ids, output_attentions=True)
    a = out.attentions[-1][0].mean(0)[-1, len(p) :].double()
    return out.logits[0, 0].double().item(), a / a.sum()


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_abc_equals_hand_computation(rm, tokenizer, beta):
    d = attention_credit(rm, tokenizer, PROMPTS, RESPONSES, beta=beta, batch_size=1)
    assert d.method == "abc" and len(d) == 3
    for i, (p, resp) in enumerate(zip(PROMPTS, RESPONSES)):
        r, a = by_hand(rm, tokenizer, p, resp)
        assert d.rewards[i].item() == pytest.approx(r, abs=1e-5)
        expected = beta * r * a
        expected[-1] += (1 - beta) * r
        torch.testing.assert_close(d.token_rewards[i], expected.float(), atol=1e-6, rtol=1e-5)
        # one player per token here (every byte-level token has text): values = beta * r * a
        assert [(pl.start, pl.end) for pl in d.players[i]] == [(t, t + 1) for t in range(len(a))]
        torch.testing.assert_close(d.values[i], beta * r * a, atol=1e-6, rtol=1e-5)


def test_abc_weights_are_a_distribution_and_rewards_sum_to_r(rm, tokenizer):
    d = attention_credit(rm, tokenizer, PROMPTS, RESPONSES, beta=1.0)
    for i in range(len(d)):
        r = d.rewards[i].item()
        a = d.values[i] / r
        assert bool((a > 0).all())
        assert a.sum().item() == pytest.approx(1.0, abs=1e-9)
        assert d.token_rewards[i].sum().item() == pytest.approx(r, abs=1e-5)
        assert torch.isnan(d.base_values[i]) and d.stderr[i] is None
    # not all weight on the last token (that would be the sparse reward)
    assert d.token_rewards[2][:-1].abs().sum().item() > 0


def test_abc_batch_equals_one_by_one(rm, tokenizer):
    batched = attention_credit(rm, tokenizer, PROMPTS, RESPONSES, beta=0.7, batch_size=3)
    lengths = [t.numel() for t in batched.token_rewards]
    assert len(set(lengths)) == 3  # different lengths: padding is exercised
    for i in range(3):
        single = attention_credit(rm, tokenizer, PROMPTS[i : i + 1], RESPONSES[i : i + 1], beta=0.7)
        torch.testing.assert_close(batched.token_rewards[i], single.token_rewards[0], atol=1e-6, rtol=1e-5)
        assert batched.rewards[i].item() == pytest.approx(single.rewards[0].item(), abs=1e-6)


def test_abc_restores_attention_implementation_and_training_mode(tokenizer):
    model = gpt2_rm()
    model.train()
    before = model.config._attn_implementation
    assert before != "eager"
    attention_credit(model, tokenizer, PROMPTS[:1], RESPONSES[:1])
    assert model.config._attn_implementation == before
    assert model.training


def test_abc_reads_out_like_transformers_when_sequence_ends_in_pad_id(rm, tokenizer):
    # the suffix is the pad id (EOS used as pad): transformers (and the coalition scorer) read the score at
    # the rightmost token that is not the pad id; the attention row is taken from that token too
    d = attention_credit(rm, tokenizer, PROMPTS[:2], RESPONSES[:2], suffix_ids=[0, 0], batch_size=2)
    for i in range(2):
        r, a = by_hand(rm, tokenizer, PROMPTS[i], RESPONSES[i])  # same sequence without the suffix
        assert d.rewards[i].item() == pytest.approx(r, abs=1e-5)
        torch.testing.assert_close(d.values[i], r * a, atol=1e-6, rtol=1e-5)
        p = tokenizer(PROMPTS[i])["input_ids"]
        q = tokenizer(RESPONSES[i], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            pooled = rm.eval()(input_ids=torch.tensor([p + q + [0, 0]])).logits[0, 0].item()
        assert d.rewards[i].item() == pytest.approx(pooled, abs=1e-5)


def test_two_label_model_scores_logit_difference(tokenizer):
    model = gpt2_rm(num_labels=2).eval()
    d = sparse_credit(model, tokenizer, PROMPTS[:1], RESPONSES[:1])
    ids = tokenizer(PROMPTS[0])["input_ids"] + tokenizer(RESPONSES[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    assert d.rewards[0].item() == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)


def test_sparse_credit_matches_abc_reward_and_puts_r_last(rm, tokenizer):
    s = sparse_credit(rm, tokenizer, PROMPTS, RESPONSES)
    a = attention_credit(rm, tokenizer, PROMPTS, RESPONSES)
    assert s.method == "sparse"
    torch.testing.assert_close(s.rewards, a.rewards)
    for i in range(3):
        t = s.token_rewards[i]
        assert t[-1].item() == pytest.approx(s.rewards[i].item(), abs=1e-6)
        assert t[:-1].abs().sum().item() == 0.0
        assert len(s.players[i]) == 1 and s.players[i][0].text == RESPONSES[i]
        assert s.values[i].tolist() == [s.rewards[i].item()]


def test_abc_maps_onto_policy_tokenizer(rm, tokenizer, policy_tokenizer):
    d = attention_credit(rm, tokenizer, PROMPTS, RESPONSES, policy_tokenizer=policy_tokenizer)
    ref = attention_credit(rm, tokenizer, PROMPTS, RESPONSES)
    for i, resp in enumerate(RESPONSES):
        n_policy = len(policy_tokenizer(resp, add_special_tokens=False)["input_ids"])
        assert d.token_rewards[i].numel() == n_policy != ref.token_rewards[i].numel()
        assert d.token_rewards[i].sum().item() == pytest.approx(ref.token_rewards[i].sum().item(), abs=1e-5)
    assert d.to_tensor().shape == (3, max(t.numel() for t in d.token_rewards))


def test_abc_with_policy_completion_ids(rm, tokenizer, policy_tokenizer):
    # as TRL passes them: the policy's ids ending in EOS, and the completion text decoded without it
    eos = policy_tokenizer.eos_token_id
    comp = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in RESPONSES]
    texts = policy_tokenizer.batch_decode(comp, skip_special_tokens=True)
    d = attention_credit(rm, tokenizer, PROMPTS, texts, policy_tokenizer=policy_tokenizer, completion_ids=comp)
    for i in range(3):
        assert d.token_rewards[i].numel() == len(comp[i])
        assert d.token_rewards[i][-1].item() == 0.0  # EOS holds no text
        assert d.token_rewards[i].sum().item() == pytest.approx(d.rewards[i].item(), abs=1e-5)
    with pytest.raises(ValueError, match="decode to"):
        attention_credit(rm, tokenizer, PROMPTS[:1], [" other text"], policy_tokenizer=policy_tokenizer,
                         completion_ids=comp[:1])


def test_encoder_reward_model_reads_first_token(tokenizer):
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=300, dim=32, hidden_dim=64, n_layers=2, n_heads=4, num_labels=1,
                           max_position_embeddings=128, pad_token_id=0)
    model = DistilBertForSequenceClassification(cfg)
    d = attention_credit(model, tokenizer, PROMPTS, RESPONSES, batch_size=3)
    eager = DistilBertForSequenceClassification(cfg)
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    eager.eval()
    for i in range(3):
        p = tokenizer(PROMPTS[i])["input_ids"]
        ids = p + tokenizer(RESPONSES[i], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = eager(input_ids=torch.tensor([ids]), output_attentions=True)
        a = out.attentions[-1][0].mean(0)[0, len(p) :].double()
        assert d.rewards[i].item() == pytest.approx(out.logits[0, 0].item(), abs=1e-5)
        torch.testing.assert_close(d.values[i], d.rewards[i].item() * a / a.sum(), atol=1e-6, rtol=1e-5)


def test_bad_input(rm, tokenizer):
    with pytest.raises(ValueError, match="beta"):
        attention_credit(rm, tokenizer, PROMPTS[:1], RESPONSES[:1], beta=1.5)
    with pytest.raises(ValueError, match="response is empty"):
        attention_credit(rm, tokenizer, PROMPTS[:1], [""])
    with pytest.raises(ValueError, match="prompt is empty"):
        sparse_credit(rm, tokenizer, [""], RESPONSES[:1])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sparse_credit(rm, tokenizer, PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(ValueError, match="too long"):
        attention_credit(gpt2_rm(n_positions=16), tokenizer, PROMPTS[:1], [" great" * 20])
    with pytest.raises(ValueError, match="score_fn"):
        sparse_credit(gpt2_rm(num_labels=3), tokenizer, PROMPTS[:1], RESPONSES[:1])


def test_nan_from_reward_model_is_an_error(tokenizer):
    model = gpt2_rm()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="nan"):
        sparse_credit(model, tokenizer, PROMPTS[:1], RESPONSES[:1])
    with pytest.raises(ValueError, match="nan"):
        attention_credit(model, tokenizer, PROMPTS[:1], RESPONSES[:1])


def test_slow_tokenizer_is_refused(rm):
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast"):
        attention_credit(rm, Slow(), PROMPTS[:1], RESPONSES[:1])


def test_sequence_part_on_eos_of_policy_completion(rm, tokenizer, policy_tokenizer):
    # the (1 - beta) * r part of ABC and the sparse r sit on the EOS that ends the policy's completion
    eos = policy_tokenizer.eos_token_id
    comp = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in RESPONSES]
    texts = policy_tokenizer.batch_decode(comp, skip_special_tokens=True)
    kw = dict(policy_tokenizer=policy_tokenizer, completion_ids=comp)
    abc = attention_credit(rm, tokenizer, PROMPTS, texts, beta=0.4, **kw)
    sparse = sparse_credit(rm, tokenizer, PROMPTS, texts, **kw)
    for i in range(3):
        r = abc.rewards[i].item()
        assert abc.token_rewards[i][-1].item() == pytest.approx(0.6 * r, abs=1e-6)
        assert abc.token_rewards[i].sum().item() == pytest.approx(r, abs=1e-5)
        assert sparse.token_rewards[i].tolist()[:-1] == [0.0] * (len(comp[i]) - 1)
        assert sparse.token_rewards[i][-1].item() == pytest.approx(r, abs=1e-6)
