"""SCAR scores the coalitions of a batch of responses together: one scorer call (one packed forest) per
chunk of ``batch_size`` responses, with the same credit as scoring each response on its own."""

from __future__ import annotations

import pytest
import torch

from scar.credit.rewarder import SCAR
from scar.scoring import CoalitionScorer

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:", "Q: opinion?", "Review:"]
RESPONSES = [" It was great, and lovely!", " Boring, slow.", " I did not like the ending; the plot is thin.",
             " The music is lovely. The actors were wonderful."]


KW = dict(players="span", method="permutation", budget=8, seed=5, progress=False)


def test_batch_of_three_is_one_pass_and_equals_per_response(rm, tokenizer):
    together = SCAR(rm, tokenizer, **KW)
    d = together(PROMPTS[:3], RESPONSES[:3])
    stats = together.last_stats
    assert len(stats) == 3 and stats[0] is stats[1] is stats[2]  # one scorer call for the batch
    assert stats[0].backend == "trie" and stats[0].passes == 1
    alone = SCAR(rm, tokenizer, batch_size=1, **KW)
    e = alone(PROMPTS[:3], RESPONSES[:3])
    assert len({id(s) for s in alone.last_stats}) == 3 and all(s.passes == 1 for s in alone.last_stats)
    # the batch's forest holds exactly the coalitions of the three per-response calls
    assert stats[0].distinct_coalitions == sum(s.distinct_coalitions for s in alone.last_stats)
    assert stats[0].tokens_computed == sum(s.tokens_computed for s in alone.last_stats)  # disjoint trees
    for i in range(3):
        assert len(d.players[i]) >= 2
        torch.testing.assert_close(d.values[i], e.values[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(d.token_rewards[i], e.token_rewards[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(d.stderr[i], e.stderr[i], atol=1e-5, rtol=0)
        assert d.rewards[i].item() == pytest.approx(e.rewards[i].item(), abs=1e-5)
        assert d.base_values[i].item() == pytest.approx(e.base_values[i].item(), abs=1e-5)
    assert not torch.allclose(d.values[0], d.values[0].mean().expand_as(d.values[0]))  # non-trivial credit


def test_chunks_of_batch_size(rm, tokenizer):
    scar = SCAR(rm, tokenizer, **{**KW, "batch_size": 3})
    d = scar(PROMPTS, RESPONSES)
    s = scar.last_stats
    assert s[0] is s[1] is s[2] and s[3] is not s[0]  # chunks [0, 1, 2] and [3]
    whole = SCAR(rm, tokenizer, **{**KW, "batch_size": 4})
    w = whole(PROMPTS, RESPONSES)
    assert len({id(x) for x in whole.last_stats}) == 1
    for i in range(4):
        torch.testing.assert_close(d.values[i], w.values[i], atol=1e-5, rtol=0)


def test_progress_bar_counts_responses(rm, tokenizer, capsys):
    SCAR(rm, tokenizer, **{**KW, "batch_size": 3, "progress": True})(PROMPTS, RESPONSES)
    err = capsys.readouterr().err
    assert "SCAR credit" in err and "4/4" in err


def test_empty_completion_inside_a_chunk_keeps_order(rm, tokenizer):
    eos = tokenizer.eos_token_id
    comp = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in RESPONSES[:2]]
    comp = [comp[0], [eos], comp[1]]
    texts = tokenizer.batch_decode(comp, skip_special_tokens=True)
    assert texts[1] == ""
    scar = SCAR(rm, tokenizer, **KW)
    d = scar(PROMPTS[:3], texts, comp)
    assert [s.backend for s in scar.last_stats] == ["trie", "plain", "trie"]
    assert scar.last_stats[0] is scar.last_stats[2] and scar.last_stats[0].passes == 1
    assert d.players[1] == [] and d.values[1].numel() == 0
    ref = SCAR(rm, tokenizer, **KW)([PROMPTS[0], PROMPTS[2]], [texts[0], texts[2]], [comp[0], comp[2]])
    for i, j in ((0, 0), (2, 1)):  # the same seeds go to the same non-empty responses
        torch.testing.assert_close(d.values[i], ref.values[j], atol=1e-5, rtol=0)


class NaNOnSecondCall(CoalitionScorer):
    """Scores with a NaN in the second response of its second call (a reward model failing mid-run)."""

    calls = 0

    def score_many(self, *args, **kwargs):
        scores = super().score_many(*args, **kwargs)
        self.calls += 1
        if self.calls == 2:
            scores[1][0] = float("nan")
        return scores


def test_errors_name_the_response_of_the_batch(rm, tokenizer):
    scar = SCAR(rm, tokenizer, **{**KW, "batch_size": 2})
    scar.scorer = NaNOnSecondCall(rm, backend="trie")
    with pytest.raises(ValueError, match=r"Shapley credit of response 3: .*not finite"):
        scar(PROMPTS, RESPONSES)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            SCAR(rm, tokenizer, batch_size=bad)
    for bad in (2.0, True):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            SCAR(rm, tokenizer, batch_size=bad)
