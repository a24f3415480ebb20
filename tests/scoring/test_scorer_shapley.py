"""Acceptance: Shapley values through `shapley_values` agree between the trie and the loop backends."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scar.credit.attribution import shapley_values
from scar.scoring import CoalitionScorer

PROMPT = [5, 17, 23, 42, 8, 61]
RESPONSE = [11, 12, 37, 44, 9, 71, 73, 29, 33, 58, 90, 14]
PLAYERS = [(0, 2), (2, 5), (5, 6), (7, 10), (10, 12)]  # token 6 is a gap
SUFFIX = [2]


def brute_force_shapley(model, n: int) -> torch.Tensor:
    """Shapley values from the definition, each coalition scored on its own with the plain classifier."""
    def v(subset: frozenset) -> float:
        kept = [t for j, (s, e) in enumerate(PLAYERS) if j in subset for t in RESPONSE[s:e]]
        full = PROMPT + [RESPONSE[i] for i in range(len(RESPONSE)) if _kept(i, subset)] + SUFFIX
        assert len(full) == len(PROMPT) + len(kept) + 1 + len(SUFFIX)  # + the gap token
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([full])).logits[0, 0])

    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += w * (v(frozenset(s) | {i}) - v(frozenset(s)))
    return phi


def _kept(i: int, subset: frozenset) -> bool:
    for j, (s, e) in enumerate(PLAYERS):
        if s <= i < e:
            return j in subset
    return True  # gap token


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_exact_shapley_trie_equals_loop(tiny_model, kind: str) -> None:
    model = tiny_model(kind)
    results = {}
    for backend in ("loop", "trie"):
        scorer = CoalitionScorer(model, backend=backend)
        results[backend] = shapley_values(scorer, PROMPT, RESPONSE, PLAYERS, method="exact", suffix_ids=SUFFIX)
        # the whole plan (all 2^5 coalitions) was scored in one scorer call
        assert scorer.stats.coalitions == 2 ** len(PLAYERS) == results[backend].n_evals
    loop, trie = results["loop"], results["trie"]
    torch.testing.assert_close(trie.values, loop.values, atol=1e-4, rtol=0)
    assert abs(trie.full_value - loop.full_value) < 1e-4 and abs(trie.base_value - loop.base_value) < 1e-4
    assert abs(trie.efficiency_gap) < 1e-9
    assert loop.values.abs().max() > 1e-3  # non-trivial game
    if kind == "gpt2":
        torch.testing.assert_close(loop.values, brute_force_shapley(model, len(PLAYERS)), atol=1e-6, rtol=0)


def test_sampled_methods_agree_between_backends(tiny_model) -> None:
    model = tiny_model("gpt_neox")
    for method, budget in (("permutation", 8), ("kernel", 10)):
        a = shapley_values(CoalitionScorer(model, backend="trie", max_tokens_per_pass=40), PROMPT, RESPONSE,
                           PLAYERS, method=method, budget=budget, seed=3, suffix_ids=SUFFIX)
        b = shapley_values(CoalitionScorer(model, backend="batched"), PROMPT, RESPONSE, PLAYERS,
                           method=method, budget=budget, seed=3, suffix_ids=SUFFIX)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)
        assert a.n_evals == b.n_evals


def test_owen_with_hierarchy(tiny_model) -> None:
    model = tiny_model("gpt2")
    scorer = CoalitionScorer(model, backend="trie")
    owen = shapley_values(scorer, PROMPT, RESPONSE, PLAYERS, method="owen", hierarchy=[[0, 1], [2, 3, 4]],
                          suffix_ids=SUFFIX)
    exact = shapley_values(scorer, PROMPT, RESPONSE, PLAYERS, method="exact", suffix_ids=SUFFIX)
    assert owen.method == "owen"
    assert abs(owen.values.sum() - exact.values.sum()) < 1e-9  # both efficient
    assert not torch.allclose(owen.values, exact.values)  # the hierarchy changes the split


def test_scorer_type_is_checked() -> None:
    with pytest.raises(TypeError, match="CoalitionScorer"):
        shapley_values(object(), PROMPT, RESPONSE, PLAYERS)  # type: ignore[arg-type]
