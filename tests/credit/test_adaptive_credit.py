"""Adaptive stopping in SCAR (``tol``): per response, the unfinished responses of a chunk are scored together
in one scorer call per round, finished ones drop out, and DenseRewards / last_stats report the cost."""

from __future__ import annotations

import pytest
import torch

from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR, total_stats
from scar.scoring import ScorerStats

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:", "Q: opinion?"]
RESPONSES = [
    " Great.",  # one or two players: exact in the first round
    " I did not like the ending; the plot is thin, the actors were wooden, the music was loud and slow.",
    " The music is lovely. The actors were wonderful, and the story, for once, was sharp.",
]
KW = dict(players="span", method="permutation", seed=5, progress=False, tol=0.1, max_budget=256)


def recording(scar: SCAR) -> list[int]:
    """Record how many responses each scorer call scores."""
    calls: list[int] = []
    inner = scar.scorer.score_many

    def score_many(prompts, responses, *args, **kwargs):
        calls.append(len(responses))
        return inner(prompts, responses, *args, **kwargs)

    scar.scorer.score_many = score_many  # type: ignore[method-assign]
    return calls


def test_unfinished_responses_share_one_call_per_round(rm, tokenizer):
    scar = SCAR(rm, tokenizer, **KW)
    calls = recording(scar)
    d = scar(PROMPTS, RESPONSES)
    est = d.estimates
    assert est is not None and len(est) == 3
    assert len(d.players[0]) <= 3 and est[0].rounds == 1 and est[0].tol_met  # exact at once
    assert bool((est[0].stderr == 0).all())
    # the second meets tol in a later round and drops out; the third continues without it
    assert 1 < est[1].rounds < est[2].rounds and est[1].tol_met
    rounds = max(e.rounds for e in est)
    assert len(calls) == rounds  # one scorer call per round for the whole chunk
    # each call scores exactly the responses still running in that round
    assert calls == [sum(e.rounds > r for e in est) for r in range(rounds)]
    assert calls[0] == 3 and calls[-1] == 1
    for e in est:
        assert e.tol_met or e.budget == 256
        assert e.tol_met == bool((e.stderr <= e.tol).all())
    # the chunk's cost: one stats object, the total of its rounds, each coalition scored once
    stats = scar.last_stats
    assert stats[0] is stats[1] is stats[2]
    assert stats[0].distinct_coalitions == sum(e.n_evals for e in est)
    assert stats[0].passes >= rounds


def test_credit_does_not_depend_on_the_batch(rm, tokenizer):
    together = SCAR(rm, tokenizer, **KW)(PROMPTS, RESPONSES)
    alone = SCAR(rm, tokenizer, batch_size=1, **KW)(PROMPTS, RESPONSES)
    for a, b in zip(together.estimates, alone.estimates):
        assert (a.rounds, a.budget, a.n_evals, a.tol_met) == (b.rounds, b.budget, b.n_evals, b.tol_met)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)
    for a, b in zip(together.token_rewards, alone.token_rewards):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["kernel", "stratified"])
def test_coalition_methods_stop_per_response(rm, tokenizer, method):
    """The coalition-budget methods in rounds through SCAR: each response stops on its own, its credit equals
    the same method run alone with that response's seed, and the sampled ones spend whole pairs."""
    kw = {**KW, "method": method, "max_budget": 400}
    d = SCAR(rm, tokenizer, **kw)(PROMPTS, RESPONSES)
    alone = SCAR(rm, tokenizer, batch_size=1, **kw)(PROMPTS, RESPONSES)
    for e, a, players in zip(d.estimates, alone.estimates, d.players):
        assert e.method == method and e.rounds >= 1 and e.budget <= 400
        assert e.tol_met or e.budget == 400
        assert abs(float(e.values.sum()) - (e.full_value - e.base_value)) < 1e-5
        torch.testing.assert_close(e.values, a.values, atol=1e-5, rtol=0)
        if len(players) > 8:  # not enumerated by its first round
            assert e.rounds >= 2 and e.budget % 2 == 0


def test_max_budget_bounds_every_response(rm, tokenizer):
    d = SCAR(rm, tokenizer, **{**KW, "tol": 1e-6, "max_budget": lambda n: 16})(PROMPTS, RESPONSES)
    for e, players in zip(d.estimates, d.players):
        assert e.budget <= 16
        if len(players) > 3:
            assert e.tol_met is False and e.budget == 16


def test_without_tol_estimates_report_the_plain_estimate(rm, tokenizer):
    scar = SCAR(rm, tokenizer, players="span", method="permutation", budget=8, seed=5, progress=False)
    calls = recording(scar)
    d = scar(PROMPTS, RESPONSES)
    assert calls == [3]
    assert all(e.rounds is None and e.tol_met is None and e.budget in (8, 2, 4, 6) for e in d.estimates)
    assert scar.last_stats[0] is scar.last_stats[2]


def test_total_stats_sums_counts_and_keeps_the_longest_pass():
    a = ScorerStats("trie", coalitions=3, distinct_coalitions=3, tokens_computed=10, passes=1, peak_pack_tokens=10)
    b = ScorerStats("trie", coalitions=2, distinct_coalitions=2, tokens_computed=30, passes=2, peak_pack_tokens=20,
                    verify_max_error=1e-7)
    t = total_stats([a, b], "trie")
    assert (t.coalitions, t.distinct_coalitions, t.tokens_computed, t.passes) == (5, 5, 40, 3)
    assert t.peak_pack_tokens == 20 and t.verify_max_error == 1e-7 and t.backend == "trie"


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tol=0.0), ValueError, "tol must be a finite number > 0"),
    (dict(tol="x"), TypeError, "tol must be a number"),
    (dict(max_budget=64), ValueError, "set tol as well"),
    (dict(tol_absolute=True), ValueError, "set tol as well"),
    (dict(tol=0.1, tol_absolute="yes"), TypeError, "tol_absolute must be a bool"),
    (dict(tol=0.1, max_budget=0), ValueError, "max_budget must be a positive int"),
    (dict(tol=0.1, method="owen", max_budget=1.5), TypeError, "max_budget must be an int"),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        CreditConfig(**kwargs)


def test_odd_max_budget_names_the_response(rm, tokenizer):
    with pytest.raises(ValueError, match=r"response 0: .*max_budget must be even"):
        SCAR(rm, tokenizer, **{**KW, "max_budget": 15})(PROMPTS, RESPONSES)
