"""Tests of scar.credit.attribution.shapley_values_many: a batch of responses in one scorer call (one forest)."""

from __future__ import annotations

import pytest
import torch

from scar.credit.attribution import ResponseError, shapley_values, shapley_values_many
from scar.scoring import CoalitionScorer

# Three responses of different lengths and player layouts (gap tokens included), on two prompts.
PROMPTS = [[5, 17, 23, 42, 8, 61], [7, 3, 19], [5, 17, 23, 42, 8, 61]]
RESPONSES = [
    [11, 12, 37, 44, 9, 71, 73, 29, 33, 58, 90, 14],
    [40, 41, 42, 43, 44, 45, 46],
    [66, 12, 37, 81, 82, 9],
]
PLAYERS = [
    [(0, 2), (2, 5), (5, 6), (7, 10), (10, 12)],  # token 6 is a gap
    [(0, 3), (3, 4), (4, 7)],
    [(1, 2), (2, 4), (4, 6)],  # token 0 is a gap
]
SUFFIXES = [[2], None, [2]]
SEEDS = [1, 2, 3]


def one_by_one(scorer, **kw):
    """shapley_values per response, with that response's seed / hierarchy."""
    seeds = kw.pop("seed", SEEDS)
    trees = kw.pop("hierarchies", [None] * 3)
    return [shapley_values(scorer, PROMPTS[i], RESPONSES[i], PLAYERS[i], seed=seeds[i], hierarchy=trees[i],
                           suffix_ids=SUFFIXES[i], **kw) for i in range(3)]


def many(scorer, **kw):
    kw.setdefault("seed", SEEDS)
    return shapley_values_many(scorer, PROMPTS, RESPONSES, PLAYERS, suffixes_ids=SUFFIXES, **kw)


@pytest.mark.parametrize("method,budget", [("permutation", 8), ("kernel", 6), ("exact", None)])
def test_one_forest_equals_per_response_calls(tiny_model, method: str, budget: int | None) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    singles = one_by_one(scorer, method=method, budget=budget)
    batch = many(scorer, method=method, budget=budget)
    # the whole batch fits the default token budget: one scorer call, one packed pass
    assert scorer.stats.backend == "trie" and scorer.stats.passes == 1
    assert scorer.stats.distinct_coalitions == sum(r.n_evals for r in batch)
    assert len(batch) == 3
    for one, both in zip(singles, batch):
        assert both.n_evals == one.n_evals and both.method == one.method and both.budget == one.budget
        torch.testing.assert_close(both.values, one.values, atol=1e-5, rtol=0)
        assert both.full_value == pytest.approx(one.full_value, abs=1e-5)
        assert both.base_value == pytest.approx(one.base_value, abs=1e-5)
        assert abs(both.efficiency_gap) < 1e-9
        assert one.values.abs().max() > 1e-3  # non-trivial game


def test_loop_backend_is_bit_identical_and_owen_hierarchies_apply(tiny_model) -> None:
    """Scored one sequence at a time, the batch call gives exactly the per-response numbers."""
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="loop")
    trees = [[[0, 1], [2, 3, 4]], [[0, 1], 2], None]  # None: the flat Owen game = Shapley
    with pytest.raises(ValueError, match="response 2: method='owen' needs a hierarchy"):
        many(scorer, method="owen", hierarchies=trees)
    trees[2] = [0, 1, 2]
    singles = one_by_one(scorer, method="owen", hierarchies=trees)
    batch = many(scorer, method="owen", hierarchies=trees)
    assert scorer.stats.backend == "loop"
    assert scorer.stats.distinct_coalitions == sum(r.n_evals for r in batch)
    for one, both in zip(singles, batch):
        assert torch.equal(both.values, one.values) and both.full_value == one.full_value
    exact = one_by_one(scorer, method="exact")
    assert torch.allclose(batch[2].values, exact[2].values, atol=1e-12)  # flat hierarchy: Shapley
    assert not torch.allclose(batch[0].values, exact[0].values, atol=1e-6)  # groups change the game


def test_small_token_budget_splits_passes_with_same_values(tiny_model) -> None:
    model = tiny_model("gpt2")
    whole = many(CoalitionScorer(model, backend="trie"), method="permutation", budget=8)
    scorer = CoalitionScorer(model, backend="trie", max_tokens_per_pass=64)
    split = many(scorer, method="permutation", budget=8)
    assert scorer.stats.passes > 1 and scorer.stats.peak_pack_tokens <= 64
    for a, b in zip(whole, split):
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)


def test_one_int_seed_is_every_response_seed(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    shared = many(scorer, method="permutation", budget=4, seed=9)
    listed = many(scorer, method="permutation", budget=4, seed=[9, 9, 9])
    other = many(scorer, method="permutation", budget=4, seed=[10, 9, 9])
    for a, b in zip(shared, listed):
        assert torch.equal(a.values, b.values)
    # response 0 has 5 players, so 4 permutations sample (a smaller response's budget is capped to exact)
    assert shared[0].budget == 4 and shared[0].stderr is not None and bool((shared[0].stderr > 0).any())
    assert not torch.allclose(shared[0].values, other[0].values)
    # response 1 drew the same coalitions; its scores agree to float32 rounding (the pack around it changed)
    torch.testing.assert_close(shared[1].values, other[1].values, atol=1e-6, rtol=0)


def test_empty_batch_calls_no_scorer(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    assert shapley_values_many(scorer, [], [], []) == []
    assert scorer.stats.passes == 0 and scorer.stats.coalitions == 0


class PoisonedScorer(CoalitionScorer):
    """A scorer whose scores of response 1 contain a NaN (as a broken reward model would give)."""

    def score_many(self, *args, **kwargs):
        scores = super().score_many(*args, **kwargs)
        scores[1][1] = float("nan")
        return scores


def test_errors_name_the_response(tiny_model) -> None:
    model = tiny_model("gpt2")
    with pytest.raises(ResponseError, match=r"response 1: .*not finite\) for coalition") as info:
        many(PoisonedScorer(model, backend="trie"), method="permutation", budget=4)
    assert info.value.index == 1 and "not finite" in info.value.reason
    scorer = CoalitionScorer(model, backend="trie")
    long_players = [[(k, k + 1) for k in range(21)], PLAYERS[1], PLAYERS[2]]
    with pytest.raises(ResponseError, match="response 0: method='exact' enumerates") as info:
        shapley_values_many(scorer, PROMPTS, [list(range(3, 24))] + RESPONSES[1:], long_players, method="exact")
    assert info.value.index == 0 and scorer.stats.passes == 0  # refused before scoring anything
    with pytest.raises(ValueError, match="one entry per response; got 2, 3 and 3"):
        shapley_values_many(scorer, PROMPTS[:2], RESPONSES, PLAYERS)
    with pytest.raises(ValueError, match="seed needs one entry per response: got 2 for 3"):
        many(scorer, seed=[1, 2])
    with pytest.raises(TypeError, match="suffixes_ids must be a list"):
        shapley_values_many(scorer, PROMPTS, RESPONSES, PLAYERS, suffixes_ids=2)
    with pytest.raises(TypeError, match="response 0: seed must be an int"):
        many(scorer, seed="x")
    with pytest.raises(TypeError, match="responses_ids must be a list"):
        shapley_values_many(scorer, PROMPTS, torch.tensor(RESPONSES[1]), PLAYERS)
    with pytest.raises(TypeError, match="scorer must be a CoalitionScorer"):
        shapley_values_many(model, PROMPTS, RESPONSES, PLAYERS)
    with pytest.raises(ValueError, match="response 1"):  # the scorer names the response with bad players
        shapley_values_many(scorer, PROMPTS, RESPONSES, [PLAYERS[0], [(0, 9)], PLAYERS[2]])


@pytest.mark.parametrize("method,budget,tol", [("permutation", 4, None), ("kernel", 8, None), ("permutation", 2, 0.3)])
def test_known_ends_are_used_and_not_scored(tiny_model, method: str, budget: int, tol: float | None) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    kw = dict(method=method, budget=budget, tol=tol)
    scored = many(scorer, **kw)
    calls = []
    own = many(scorer, ends=[(r.base_value, r.full_value) for r in scored], round_stats=calls, **kw)
    # the responses' own ends: the same values, two coalitions fewer per response scored
    assert sum(s.distinct_coalitions for s in calls) == sum(r.n_evals for r in scored) - 2 * 3
    for a, b in zip(scored, own):
        torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=0)
    # other ends: they are the results' r and v(∅), and the values split them exactly
    shifted = many(scorer, ends=[(r.base_value - 1.0, r.full_value + 2.0) for r in scored], **kw)
    for a, b in zip(scored, shifted):
        assert (b.base_value, b.full_value) == (a.base_value - 1.0, a.full_value + 2.0)
        assert float(b.values.sum()) == pytest.approx(b.full_value - b.base_value, abs=1e-9)
        assert not torch.allclose(b.values, a.values, atol=1e-3)


def test_known_ends_of_a_one_player_response_score_nothing(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    res = shapley_values_many(scorer, [PROMPTS[0]], [RESPONSES[0]], [[(0, 12)]], ends=[(0.25, 1.0)],
                              method="permutation", budget=2, seed=0)
    assert scorer.stats.distinct_coalitions == 0
    assert res[0].values.tolist() == [0.75] and (res[0].base_value, res[0].full_value) == (0.25, 1.0)
    with pytest.raises(ValueError, match="ends needs one entry per response"):
        shapley_values_many(scorer, [PROMPTS[0]], [RESPONSES[0]], [[(0, 12)]], ends=[], method="permutation")
