"""Tests for scar.credit.rewarder: the SCAR rewarder end to end on tiny random GPT-2 reward models."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from scar.credit.baselines import AttentionCredit, SparseCredit
from scar.credit.rewarder import SCAR
from scar.game.tokens import encode_pair

from tiny_tokenizers import build_tokenizer

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:", "Q: opinion?"]
RESPONSES = [" It was great, and lovely!", " Boring.", " I did not like the ending; the plot is thin. The music too."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(300)


@pytest.fixture(scope="module")
def policy_tokenizer():
    return build_tokenizer(270)


def gpt2_rm(n_positions: int = 128) -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300, n_positions=n_positions, num_labels=1,
                     pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def rm():
    return gpt2_rm()


def provider(credit: str, rm, tokenizer, *, method: str = "exact", beta: float = 1.0, **kw):
    """The credit provider of ``credit`` ("scar", "abc" or "sparse") with SCAR's call signature."""
    if credit == "scar":
        return SCAR(rm, tokenizer, method=method, progress=False, **kw)
    if credit == "abc":
        return AttentionCredit(rm, tokenizer, beta=beta, **kw)
    return SparseCredit(rm, tokenizer, **kw)


def plain_score(model, tokenizer, prompt, response) -> float:
    ids = tokenizer(prompt)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_exact_scar_is_efficient_and_shapes_rewards(rm, tokenizer, alpha):
    scar = SCAR(rm, tokenizer, players="span", method="exact", alpha=alpha, progress=False)
    d = scar(PROMPTS, RESPONSES)
    assert d.method == "scar" and len(d) == 3
    for i in range(3):
        r, v0 = d.rewards[i].item(), d.base_values[i].item()
        assert r == pytest.approx(plain_score(rm, tokenizer, PROMPTS[i], RESPONSES[i]), abs=1e-5)
        prompt_only = tokenizer(PROMPTS[i])["input_ids"]
        with torch.no_grad():
            assert v0 == pytest.approx(rm(input_ids=torch.tensor([prompt_only])).logits[0, 0].item(), abs=1e-5)
        assert d.values[i].sum().item() == pytest.approx(r - v0, abs=1e-6)  # efficiency
        assert d.token_rewards[i].sum().item() == pytest.approx(alpha * (r - v0) + (1 - alpha) * r, abs=1e-5)
        # each player's credit sits on its last token
        players = d.players[i]
        assert len(players) >= (1 if i == 1 else 3) and players[-1].end == d.token_rewards[i].numel()
        for p, phi in zip(players[:-1], d.values[i].tolist()):
            assert d.token_rewards[i][p.end - 1].item() == pytest.approx(alpha * phi, abs=1e-6)
        assert d.stderr[i] is None


def test_trie_and_loop_backends_agree(rm, tokenizer):
    fast = SCAR(rm, tokenizer, players="token", method="exact", progress=False)(PROMPTS[1:2], RESPONSES[1:2])
    loop = SCAR(rm, tokenizer, players="token", method="exact", backend="loop", progress=False)(
        PROMPTS[1:2], RESPONSES[1:2])
    torch.testing.assert_close(fast.values[0], loop.values[0], atol=1e-5, rtol=1e-4)


def test_permutation_is_efficient_and_reproducible_with_seed(rm, tokenizer):
    kw = dict(players="token", method="permutation", budget=4, seed=3, progress=False)
    a = SCAR(rm, tokenizer, **kw)(PROMPTS, RESPONSES)
    b = SCAR(rm, tokenizer, **kw)(PROMPTS, RESPONSES)
    for i in range(3):
        torch.testing.assert_close(a.values[i], b.values[i])
        # every permutation's marginals sum to v(N) - v(∅), so the estimate is efficient too
        assert a.values[i].sum().item() == pytest.approx(a.rewards[i].item() - a.base_values[i].item(), abs=1e-6)
        assert a.stderr[i] is not None and a.stderr[i].shape == a.values[i].shape
    # a different seed samples different permutations
    c = SCAR(rm, tokenizer, **{**kw, "seed": 4})(PROMPTS[2:], RESPONSES[2:])
    assert not torch.allclose(c.values[0], a.values[2])


def test_owen_uses_sentence_hierarchy(rm, tokenizer):
    d = SCAR(rm, tokenizer, players="span", method="owen", progress=False)(PROMPTS[2:], RESPONSES[2:])
    assert d.values[0].sum().item() == pytest.approx(d.rewards[0].item() - d.base_values[0].item(), abs=1e-6)
    assert len(d.players[0]) == d.values[0].numel() >= 3


def test_spread_placement(rm, tokenizer):
    d = SCAR(rm, tokenizer, players="sentence", method="exact", placement="spread", progress=False)(
        PROMPTS[2:], RESPONSES[2:])
    players, rewards, phi = d.players[0], d.token_rewards[0], d.values[0]
    assert len(players) == 2
    for p, v in zip(players, phi.tolist()):
        torch.testing.assert_close(rewards[p.start : p.end], torch.full((p.end - p.start,), v / (p.end - p.start)),
                                   atol=1e-6, rtol=1e-5)


def test_to_tensor_shape_and_padding(rm, tokenizer):
    d = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES)
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in RESPONSES]
    t = d.to_tensor(pad_value=-7.0)
    assert t.shape == (3, max(lengths)) and t.dtype == torch.float32
    for i, n in enumerate(lengths):
        torch.testing.assert_close(t[i, :n], d.token_rewards[i])
        assert bool((t[i, n:] == -7.0).all())


def test_policy_tokenizer_mapping(rm, tokenizer, policy_tokenizer):
    same = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES)
    mapped = SCAR(rm, tokenizer, method="exact", policy_tokenizer=policy_tokenizer, progress=False)(PROMPTS, RESPONSES)
    for i, resp in enumerate(RESPONSES):
        n_policy = len(policy_tokenizer(resp, add_special_tokens=False)["input_ids"])
        assert mapped.token_rewards[i].numel() == n_policy != same.token_rewards[i].numel()
        assert mapped.token_rewards[i].sum().item() == pytest.approx(same.token_rewards[i].sum().item(), abs=1e-5)
        torch.testing.assert_close(mapped.values[i], same.values[i])  # credit itself does not change
    # with the policy's completion ids (ending in EOS, as TRL passes them) the rewards follow those ids
    eos = policy_tokenizer.eos_token_id
    comp = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in RESPONSES]
    texts = policy_tokenizer.batch_decode(comp, skip_special_tokens=True)
    by_ids = SCAR(rm, tokenizer, method="exact", policy_tokenizer=policy_tokenizer, progress=False)(
        PROMPTS, texts, comp)
    for i in range(3):
        assert by_ids.token_rewards[i].numel() == len(comp[i])
        torch.testing.assert_close(by_ids.token_rewards[i][:-1], mapped.token_rewards[i])
        assert by_ids.token_rewards[i][-1].item() == 0.0
    assert by_ids.to_tensor().shape == (3, max(len(c) for c in comp))


def test_completion_ids_without_policy_tokenizer_use_the_reward_tokenizer(rm, tokenizer):
    comp = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    a = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES)
    b = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES, comp)
    for i in range(3):
        torch.testing.assert_close(a.token_rewards[i], b.token_rewards[i])


def test_responses_as_token_ids(rm, tokenizer):
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    a = SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS, RESPONSES)
    b = SCAR(rm, tokenizer, method="exact", progress=False)(prompt_ids, ids)
    for i in range(3):
        torch.testing.assert_close(a.values[i], b.values[i])
        assert [p.text for p in a.players[i]] == [p.text for p in b.players[i]]


def test_credit_switch_gives_consistent_rewards(rm, tokenizer):
    kinds = {}
    for credit in ("scar", "abc", "sparse"):
        kinds[credit] = provider(credit, rm, tokenizer)(PROMPTS, RESPONSES)
        assert kinds[credit].method == credit
    torch.testing.assert_close(kinds["abc"].rewards, kinds["scar"].rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kinds["sparse"].rewards, kinds["scar"].rewards, atol=1e-5, rtol=1e-5)
    for i in range(3):
        assert kinds["abc"].token_rewards[i].numel() == kinds["scar"].token_rewards[i].numel()


def test_suffix_ids_are_scored(rm, tokenizer):
    d = SCAR(rm, tokenizer, method="exact", suffix_ids=[1], progress=False)(PROMPTS[:1], RESPONSES[:1])
    enc = encode_pair(tokenizer, PROMPTS[0], RESPONSES[0], suffix_ids=[1])
    with torch.no_grad():
        r = rm(input_ids=torch.tensor([enc.ids])).logits[0, 0].item()
    assert enc.ids[-1] == 1 and d.rewards[0].item() == pytest.approx(r, abs=1e-5)


def test_progress_bar(rm, tokenizer, capsys):
    SCAR(rm, tokenizer, method="exact", progress=True)(PROMPTS[:2], RESPONSES[:2])
    err = capsys.readouterr().err
    assert "SCAR credit" in err and "2/2" in err
    SCAR(rm, tokenizer, method="exact", progress=False)(PROMPTS[:2], RESPONSES[:2])
    assert "SCAR credit" not in capsys.readouterr().err


def test_bad_input(rm, tokenizer):
    scar = SCAR(rm, tokenizer, method="exact", progress=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        scar([""], RESPONSES[:1])
    with pytest.raises(ValueError, match="response is empty"):
        scar(PROMPTS[:1], [""])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scar(PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(TypeError, match="list"):
        scar(PROMPTS[0], RESPONSES[0])
    with pytest.raises(ValueError, match="too long"):
        SCAR(gpt2_rm(n_positions=16), tokenizer, progress=False)(PROMPTS[:1], [" great" * 20])
    with pytest.raises(ValueError, match="alpha"):
        SCAR(rm, tokenizer, alpha=1.2)
    with pytest.raises(ValueError, match="beta"):
        AttentionCredit(rm, tokenizer, beta=-0.5)
    with pytest.raises(ValueError, match="player kind"):
        SCAR(rm, tokenizer, players="word")
    with pytest.raises(TypeError, match=r"unknown settings.*credit"):
        SCAR(rm, tokenizer, credit="abc")
    with pytest.raises(ValueError, match="method"):
        SCAR(rm, tokenizer, method="banzhaf")
    with pytest.raises(ValueError, match="placement"):
        SCAR(rm, tokenizer, placement="first")


def test_slow_tokenizer_is_refused(rm):
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast"):
        SCAR(rm, Slow())


def test_nan_reward_is_an_error_not_a_zero(tokenizer):
    model = gpt2_rm()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="response 0"):
        SCAR(model, tokenizer, method="exact", progress=False)(PROMPTS[:1], RESPONSES[:1])


@pytest.mark.parametrize("credit", ["scar", "abc"])
def test_plugs_into_trl_reward_function(rm, tokenizer, policy_tokenizer, credit):
    from scar.integrations.trl import DenseRewardFunction

    eos = policy_tokenizer.eos_token_id
    comp = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in RESPONSES]
    texts = policy_tokenizer.batch_decode(comp, skip_special_tokens=True)
    fn = DenseRewardFunction(provider(credit, rm, tokenizer, policy_tokenizer=policy_tokenizer))
    # TRL logs the reward under the provider's class name
    assert fn.__name__ == ("SCAR" if credit == "scar" else "AttentionCredit")
    rewards = fn(prompts=PROMPTS, completions=texts, completion_ids=comp)
    dense = fn.take(comp)
    assert rewards == pytest.approx([plain_score(rm, tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)
    assert [t.numel() for t in dense.token_rewards] == [len(c) for c in comp]
    assert dense.to_tensor().shape == (3, max(len(c) for c in comp))


def with_eos(policy_tokenizer, responses):
    """The policy's completion ids ending in EOS and their text, as TRL passes them to a reward function."""
    eos = policy_tokenizer.eos_token_id
    comp = [policy_tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    return comp, policy_tokenizer.batch_decode(comp, skip_special_tokens=True)


@pytest.mark.parametrize("suffix", [None, [1]])
def test_empty_completion_with_ids_is_scored_as_prompt_only(rm, tokenizer, policy_tokenizer, suffix):
    """A completion that is only EOS decodes to "": r = v(∅) = score(prompt ⊕ suffix), no players, and the
    dense reward (1 - alpha) * r on the EOS."""
    eos = policy_tokenizer.eos_token_id
    comp, texts = with_eos(policy_tokenizer, RESPONSES[:1])
    comp, texts = comp + [[eos]], texts + [""]
    scar = SCAR(rm, tokenizer, method="exact", alpha=0.6, policy_tokenizer=policy_tokenizer, suffix_ids=suffix,
                progress=False)
    d = scar(PROMPTS[:2], texts, comp)
    prompt_only = tokenizer(PROMPTS[1])["input_ids"] + (suffix or [])
    with torch.no_grad():
        v0 = rm(input_ids=torch.tensor([prompt_only])).logits[0, 0].item()
    assert d.rewards[1].item() == pytest.approx(v0, abs=1e-5)
    assert d.base_values[1].item() == d.rewards[1].item()
    assert d.players[1] == [] and d.values[1].numel() == 0 and d.stderr[1] is None
    torch.testing.assert_close(d.token_rewards[1], torch.tensor([0.4 * d.rewards[1].item()]))
    assert scar.last_stats[1].backend == "plain" and scar.last_stats[1].tokens_computed == len(prompt_only)
    assert scar.last_stats[0].backend != "plain"
    # the non-empty response of the same batch is unaffected
    alone = scar(PROMPTS[:1], texts[:1], comp[:1])
    torch.testing.assert_close(d.token_rewards[0], alone.token_rewards[0])


@pytest.mark.parametrize("credit", ["sparse", "abc"])
def test_empty_completion_baselines_put_r_on_eos(rm, tokenizer, credit):
    eos = tokenizer.eos_token_id
    d = provider(credit, rm, tokenizer, beta=0.3)(PROMPTS[:1], [""], [[eos]])
    with torch.no_grad():
        v0 = rm(input_ids=torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])).logits[0, 0].item()
    assert d.rewards[0].item() == pytest.approx(v0, abs=1e-5)
    torch.testing.assert_close(d.token_rewards[0], torch.tensor([d.rewards[0].item()], dtype=torch.float32))
    assert d.players[0] == [] and d.values[0].numel() == 0


@pytest.mark.parametrize("credit", ["scar", "sparse", "abc"])
def test_empty_response_without_completion_ids_is_an_error(rm, tokenizer, credit):
    scar = provider(credit, rm, tokenizer)
    with pytest.raises(ValueError, match=r"response is empty.*completion_ids"):
        scar(PROMPTS[:1], [""])
    with pytest.raises(ValueError, match="response is empty"):
        scar(PROMPTS[:1], [[]])
    # with ids, the text must still be what they decode to
    ids = tokenizer(RESPONSES[1], add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="decode to"):
        scar(PROMPTS[:1], [""], [ids])


def test_sequence_reward_sits_on_the_eos(rm, tokenizer, policy_tokenizer):
    """DESIGN's 1[t == T] with T the last completion token: the EOS, when the completion ends in one."""
    comp, texts = with_eos(policy_tokenizer, RESPONSES)
    kw = dict(method="exact", policy_tokenizer=policy_tokenizer, progress=False)
    d = SCAR(rm, tokenizer, alpha=0.6, **kw)(PROMPTS, texts, comp)
    no_eos = SCAR(rm, tokenizer, alpha=0.6, **kw)(PROMPTS, texts, [c[:-1] for c in comp])
    for i in range(3):
        r, v0 = d.rewards[i].item(), d.base_values[i].item()
        assert d.token_rewards[i][-1].item() == pytest.approx(0.4 * r, abs=1e-6)
        # the text tokens carry the credit alpha * phi only
        assert d.token_rewards[i][:-1].sum().item() == pytest.approx(0.6 * (r - v0), abs=1e-5)
        # without EOS the last text token carries both its credit and (1 - alpha) * r
        expected = d.token_rewards[i][:-1].clone()
        expected[-1] += d.token_rewards[i][-1]
        torch.testing.assert_close(no_eos.token_rewards[i], expected)
    # alpha = 0 is exactly the sparse reward, r on the EOS
    zero = SCAR(rm, tokenizer, alpha=0.0, **kw)(PROMPTS, texts, comp)
    sparse = SparseCredit(rm, tokenizer, policy_tokenizer=policy_tokenizer)(PROMPTS, texts, comp)
    for i in range(3):
        torch.testing.assert_close(zero.token_rewards[i], sparse.token_rewards[i], atol=1e-5, rtol=1e-5)
        assert sparse.token_rewards[i][-1].item() == pytest.approx(sparse.rewards[i].item(), abs=1e-6)
        assert sparse.token_rewards[i][:-1].abs().sum().item() == 0.0
    # ABC: the (1 - beta) * r part on the EOS, the attention-weighted part on the text
    abc = AttentionCredit(rm, tokenizer, beta=0.25, policy_tokenizer=policy_tokenizer)(PROMPTS, texts, comp)
    for i in range(3):
        r = abc.rewards[i].item()
        assert abc.token_rewards[i][-1].item() == pytest.approx(0.75 * r, abs=1e-6)
        assert abc.token_rewards[i][:-1].sum().item() == pytest.approx(0.25 * r, abs=1e-5)




def test_a_repeated_prompt_is_encoded_once_with_the_same_ids(rm, tokenizer, monkeypatch):
    """GRPO batches repeat each prompt: its text is tokenized once per call, and the rewards are those of
    encoding it for every response."""
    prompts, responses = [PROMPTS[1]] * 3 + [PROMPTS[0]], RESPONSES + [" Fine."]
    kw = dict(players="span", method="permutation", budget=2, seed=0, progress=False)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    expected = SCAR(rm, tokenizer, **kw)(ids, responses)
    seen = []
    real = type(tokenizer).__call__

    def counting(self, text, *args, **kwargs):
        seen.append(text)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    got = SCAR(rm, tokenizer, **kw)(prompts, responses)
    assert seen.count(PROMPTS[1]) == 1 and seen.count(PROMPTS[0]) == 1
    for a, b in zip(got.token_rewards, expected.token_rewards):
        assert torch.equal(a, b)
    assert torch.equal(got.rewards, expected.rewards)
