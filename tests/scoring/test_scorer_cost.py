"""Acceptance: the trie computes its lower bound when it fits, and never packs more than the budget."""

from __future__ import annotations

import pytest
import torch

from scar.scoring import CoalitionScorer
from scar_kernels.layout import build_pack_reference


def test_one_pass_computes_exactly_the_trie_lower_bound(tiny_model) -> None:
    model = tiny_model("gpt2")
    prompt, response, suffix = list(range(3, 9)), list(range(10, 22)), [2]
    players = [(0, 3), (3, 4), (6, 12)]  # tokens 4-5 are a gap
    coalitions = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    scorer = CoalitionScorer(model, backend="trie")
    scorer.score(prompt, response, players, coalitions, suffix)
    s = scorer.stats
    # kept sequences (after the prompt): [gap sfx], [p0 p1 gap p2 sfx], [p0 gap p2 sfx] x2, [p1 gap sfx]
    # nodes: root(6) | p0(3) -> p1(1) -> gap(2) -> p2(6) -> sfx(1) ; p0 -> gap(2) -> p2(6) -> sfx(1)
    #        | p1(1) -> gap(2) -> sfx(1) | gap(2) -> sfx(1)
    assert s.trie_tokens == 6 + (3 + 1 + 2 + 6 + 1 + 2 + 6 + 1) + (1 + 2 + 1) + (2 + 1)
    assert s.tokens_computed == s.trie_tokens and s.passes == 1 and s.peak_pack_tokens == s.trie_tokens
    assert s.coalitions == 5 and s.distinct_coalitions == 4
    kept = [2, 3 + 1 + 2 + 6, 3 + 2 + 6, 3 + 2 + 6, 1 + 2]  # the gap is always kept
    assert s.plain_tokens == sum(6 + k + 1 for k in kept)
    assert s.backend == "trie" and s.prompt_cache_tokens == 0
    assert s.ratio_to_lower_bound == 1.0
    assert s.savings_vs_plain == s.plain_tokens / s.trie_tokens


def test_loop_and_batched_costs(tiny_model) -> None:
    model = tiny_model("gpt2")
    coalitions = torch.tensor([[1, 1], [1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    args = ([3, 4, 5], [6, 7, 8, 9], [(0, 1), (1, 4)], coalitions, [2])
    loop = CoalitionScorer(model, backend="loop")
    loop.score(*args)
    lengths = [3 + 4 + 1, 3 + 4 + 1, 3 + 3 + 1, 3 + 1 + 1]
    assert loop.stats.tokens_computed == loop.stats.plain_tokens == sum(lengths)
    assert loop.stats.passes == 4 and loop.stats.peak_pack_tokens == 8
    batched = CoalitionScorer(model, backend="batched", max_tokens_per_pass=16)
    batched.score(*args)
    # 3 distinct sequences of lengths 8, 7, 5, longest first, 16 // 8 = 2 per batch: [8, 7] then [5]
    assert batched.stats.passes == 2
    assert batched.stats.tokens_computed == 2 * 8 + 1 * 5
    assert batched.stats.peak_pack_tokens == 16


@pytest.mark.parametrize(
    "n_players, budget",
    [(16, 256), pytest.param(64, 512, marks=pytest.mark.slow)],
)
def test_twenty_thousand_coalitions_stay_under_the_budget(tiny_model, n_players: int, budget: int) -> None:
    model = tiny_model("gpt2", n_layer=1, n_embd=16, n_head=2)
    gen = torch.Generator().manual_seed(n_players)
    prompt = torch.randint(3, 100, (8,), generator=gen)
    response = torch.randint(3, 100, (64,), generator=gen)
    width = 64 // n_players
    players = [(i * width, (i + 1) * width) for i in range(n_players)]
    coalitions = torch.rand(20_000, n_players, generator=gen) < 0.5
    scorer = CoalitionScorer(model, backend="trie", max_tokens_per_pass=budget)
    values = scorer.score(prompt, response, players, coalitions, [2])
    s = scorer.stats
    assert s.coalitions == 20_000
    assert s.peak_pack_tokens <= budget < s.trie_tokens
    assert s.passes > s.trie_tokens // budget
    # recomputed ancestors and the cached prompt cost something, but little
    assert s.trie_tokens <= s.tokens_computed < 1.2 * s.trie_tokens
    assert s.prompt_cache_tokens == 7
    # a sample of the values agrees with the plain path
    sample = torch.arange(0, 20_000, 2_500)
    ref = CoalitionScorer(model, backend="loop").score(prompt, response, players, coalitions[sample], [2])
    torch.testing.assert_close(values[sample], ref, atol=1e-4, rtol=0)


def test_trie_lower_bound_matches_the_layout(tiny_model) -> None:
    """stats.trie_tokens is the node-token count of the whole-prompt trie, for every backend."""
    model = tiny_model("gpt2")
    gen = torch.Generator().manual_seed(1)
    coalitions = torch.rand(30, 4, generator=gen) < 0.5
    args = (list(range(3, 13)), list(range(20, 32)), [(0, 2), (2, 5), (5, 9), (10, 12)], coalitions, [2])
    # segments: p0 [0,2), p1 [2,5), p2 [5,9), gap [9,10), p3 [10,12)
    layout = build_pack_reference(
        coalitions, torch.zeros(30, dtype=torch.int64), torch.tensor([0, 5]), torch.tensor([0, 1, 2, -1, 3]),
        torch.tensor([2, 3, 4, 1, 2]), torch.tensor([10]), torch.tensor([1]), torch.tensor([0]))
    for backend in ("loop", "batched", "trie"):
        scorer = CoalitionScorer(model, backend=backend)
        scorer.score(*args)
        assert scorer.stats.trie_tokens == layout.n_tokens
