"""Acceptance: every backend (and every attention path of the trie) equals `loop` within 1e-4 (float32) on real
transformers architectures."""

from __future__ import annotations

import pytest
import torch

from scar.scoring import CoalitionScorer

# attention="flex" runs eager here (the compiled run is tested in tests/kernels/test_flex.py)
pytestmark = pytest.mark.usefixtures("eager_flex")

DECODERS = ["gpt2", "llama", "gpt_neox", "opt"]
ENCODERS = ["distilbert", "bert"]
TOL = 1e-4


def random_players(gen: torch.Generator, n_tokens: int, n_players: int, gaps: bool) -> list[tuple[int, int]]:
    """``n_players`` sorted non-overlapping ranges over ``n_tokens`` tokens, optionally leaving gaps."""
    slots = 2 * n_players + 1 if gaps else n_players
    cuts = sorted(torch.randperm(n_tokens - 1, generator=gen)[: slots - 1].add(1).tolist()) if slots > 1 else []
    bounds = [0] + cuts + [n_tokens]
    pieces = list(zip(bounds, bounds[1:]))
    return pieces[1::2] if gaps else pieces


def random_coalitions(gen: torch.Generator, n_players: int, n: int) -> torch.Tensor:
    """Random coalitions plus the empty and full coalition and a duplicated row."""
    rows = torch.rand(n, n_players, generator=gen) < 0.5
    rows = torch.cat([torch.zeros(1, n_players, dtype=torch.bool), torch.ones(1, n_players, dtype=torch.bool),
                      rows, rows[:1]])
    return rows


def make_case(name: str, seed: int = 0) -> dict:
    """One scoring problem. Tokens are drawn from 3..99 (0 is the pad id, 1/2 bos/eos)."""
    gen = torch.Generator().manual_seed(seed)
    spec = {
        "basic": dict(prompt=6, response=14, players=4, gaps=True, suffix=1),
        "single_player": dict(prompt=5, response=7, players=1, gaps=False, suffix=1),
        "one_token_players": dict(prompt=4, response=8, players=8, gaps=False, suffix=0),
        "long_players": dict(prompt=3, response=20, players=2, gaps=False, suffix=2),
        "long_prompt": dict(prompt=30, response=6, players=3, gaps=True, suffix=1),
        "no_suffix_gaps": dict(prompt=5, response=12, players=3, gaps=True, suffix=0),
    }[name]
    tokens = lambda k: torch.randint(3, 100, (k,), generator=gen)
    players = random_players(gen, spec["response"], spec["players"], spec["gaps"])
    return dict(
        prompt_ids=tokens(spec["prompt"]),
        response_ids=tokens(spec["response"]),
        players=players,
        coalitions=random_coalitions(gen, len(players), 8),
        suffix_ids=tokens(spec["suffix"]) if spec["suffix"] else None,
    )


CASES = ["basic", "single_player", "one_token_players", "long_players", "long_prompt", "no_suffix_gaps"]


def score(model, backend: str, case: dict, **kw) -> tuple[torch.Tensor, CoalitionScorer]:
    scorer = CoalitionScorer(model, backend=backend, **kw)
    values = scorer.score(case["prompt_ids"], case["response_ids"], case["players"], case["coalitions"],
                          case["suffix_ids"])
    return values, scorer


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("case_name", CASES)
def test_decoder_backends_equal_loop(tiny_model, kind: str, case_name: str) -> None:
    model = tiny_model(kind)
    case = make_case(case_name, seed=10 * DECODERS.index(kind) + CASES.index(case_name))
    ref, _ = score(model, "loop", case)
    assert ref.dtype == torch.float64 and ref.shape == (case["coalitions"].shape[0],)
    assert ref.std() > 0  # the coalitions really differ, so equality below means something
    for backend, attention in (("batched", "auto"), ("trie", "mask"), ("trie", "kernel"), ("trie", "flex")):
        got, scorer = score(model, backend, case, attention=attention)
        assert backend == "batched" or scorer.attention == attention
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0, msg=f"{kind} {backend} {attention} {case_name}")
    # duplicated coalitions score identically
    assert got[-1] == got[2]


@pytest.mark.parametrize("kind", ENCODERS)
@pytest.mark.parametrize("case_name", ["basic", "single_player", "long_prompt", "no_suffix_gaps"])
def test_encoder_batched_equals_loop(tiny_model, kind: str, case_name: str) -> None:
    model = tiny_model(kind)
    case = make_case(case_name, seed=7)
    ref, _ = score(model, "loop", case)
    assert ref.std() > 0
    got, scorer = score(model, "auto", case)
    assert scorer.backend == "batched"
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", DECODERS + ENCODERS)
def test_two_label_models_score_logit_difference(tiny_model, kind: str) -> None:
    model = tiny_model(kind, num_labels=2)
    case = make_case("basic", seed=3)
    ref, _ = score(model, "loop", case)
    # the loop reference itself: logit[1] - logit[0] of the deleted sequence
    keep = case["coalitions"][1]  # the full coalition
    seqs = torch.cat([case["prompt_ids"], case["response_ids"], case["suffix_ids"]])
    with torch.no_grad():
        logits = model(input_ids=seqs[None]).logits[0]
    assert keep.all()
    assert abs(float(ref[1]) - float(logits[1] - logits[0])) < 1e-5
    for backend in ("batched", "trie") if kind in DECODERS else ("batched",):
        got, _ = score(model, backend, case)
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", DECODERS + ENCODERS)
def test_forest_of_responses_in_one_call(tiny_model, kind: str) -> None:
    model = tiny_model(kind)
    cases = [make_case(name, seed=11 + i) for i, name in enumerate(["basic", "long_prompt", "no_suffix_gaps"])]
    args = [[c[k] for c in cases] for k in ("prompt_ids", "response_ids", "players", "coalitions", "suffix_ids")]
    refs = [score(model, "loop", c)[0] for c in cases]
    for backend in ("batched", "trie") if kind in DECODERS else ("batched",):
        scorer = CoalitionScorer(model, backend=backend)
        got = scorer.score_many(*args)
        assert len(got) == 3
        for g, r in zip(got, refs):
            torch.testing.assert_close(g, r, atol=TOL, rtol=0)
        # everything fits one forward: one batch, or one pass of the trie at exactly its lower bound
        assert scorer.stats.passes == 1
    if kind in DECODERS:
        assert scorer.stats.tokens_computed == scorer.stats.trie_tokens


# 24 < the longest sequence (37 tokens) <= 40; encoders have only batched, which cannot split a sequence
@pytest.mark.parametrize("kind, budget", [(k, b) for k in DECODERS for b in (24, 40)] + [(k, 40) for k in ENCODERS])
def test_split_passes_and_cached_prompt_equal_loop(tiny_model, kind: str, budget: int) -> None:
    model = tiny_model(kind)
    cases = [make_case("long_prompt", seed=5), make_case("basic", seed=6), make_case("single_player", seed=8)]
    args = [[c[k] for c in cases] for k in ("prompt_ids", "response_ids", "players", "coalitions", "suffix_ids")]
    refs = [score(model, "loop", c)[0] for c in cases]
    if kind in ENCODERS:
        backends = ["batched"]
    else:
        backends = ["batched", "trie"] if budget >= 37 else ["trie"]
    runs = [(b, "auto") for b in backends if b == "batched"]
    runs += [("trie", a) for a in ("mask", "kernel", "flex") if "trie" in backends]
    for backend, attention in runs:
        scorer = CoalitionScorer(model, backend=backend, max_tokens_per_pass=budget, attention=attention)
        got = scorer.score_many(*args)
        for g, r in zip(got, refs):
            torch.testing.assert_close(g, r, atol=TOL, rtol=0, msg=f"{kind} {backend} {attention}")
        assert scorer.stats.peak_pack_tokens <= budget
        assert scorer.stats.passes > 1
    if kind in DECODERS:  # the long prompt (30 tokens) cannot share a pass: its prompt went through the KV cache
        assert scorer.stats.backend == "trie" and scorer.stats.prompt_cache_tokens > 0


@pytest.mark.parametrize("kind", DECODERS + ENCODERS)
def test_replace_removal_equals_loop(tiny_model, kind: str) -> None:
    model = tiny_model(kind)
    case = make_case("basic", seed=21)
    ref, _ = score(model, "loop", case, removal="replace", filler_id=2)
    # the reference really substitutes: every sequence keeps its full length
    deleted, _ = score(model, "loop", case)
    assert not torch.allclose(ref[2:], deleted[2:])
    torch.testing.assert_close(ref[1], deleted[1])  # nothing removed: same sequence
    backends = ("batched", "trie") if kind in DECODERS else ("batched",)
    for backend in backends:
        for budget in (8192, 30):
            got, scorer = score(model, backend, case, removal="replace", filler_id=2, max_tokens_per_pass=budget)
            torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
            assert scorer.stats.peak_pack_tokens <= budget


def test_replace_defaults_to_pad_id(tiny_model) -> None:
    model = tiny_model("gpt2")
    case = make_case("basic", seed=2)
    explicit, _ = score(model, "loop", case, removal="replace", filler_id=0)
    default, scorer = score(model, "trie", case, removal="replace")
    assert scorer.filler_id == 0
    torch.testing.assert_close(default, explicit, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_pad_tokens_in_sequence_follow_transformers_readout(tiny_model, kind: str) -> None:
    """With pad id == the suffix token and pads inside the response, transformers reads the score at the
    rightmost non-pad token; every backend must pick the same row (also across cached-prompt passes)."""
    model = tiny_model(kind)
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(3, 100, (12,), generator=gen)
    prompt[-1] = 0
    response = torch.randint(3, 100, (9,), generator=gen)
    response[[2, 3, 8]] = 0  # pad ids at a player's end and at the very end of the response
    players = [(0, 4), (4, 6), (6, 9)]
    coalitions = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    case = dict(prompt_ids=prompt, response_ids=response, players=players, coalitions=coalitions, suffix_ids=[0, 0])
    ref, _ = score(model, "loop", case)
    for backend, budget in (("batched", 8192), ("batched", 24), ("trie", 8192), ("trie", 20)):
        got, _ = score(model, backend, case, max_tokens_per_pass=budget)
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


def test_all_pad_sequence_reads_out_first_token(tiny_model) -> None:
    model = tiny_model("gpt2")
    case = dict(prompt_ids=[0, 0], response_ids=[0, 5], players=[(0, 1), (1, 2)],
                coalitions=torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.bool), suffix_ids=[0])
    ref, _ = score(model, "loop", case)
    for backend in ("batched", "trie"):
        got, _ = score(model, backend, case)
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


OTHER_DECODERS = [("qwen2", {}), ("mistral", {"sliding_window": None})] + [
    (kind, {})
    for kind in ("phi", "phi3", "gemma", "qwen3", "gptj", "olmo", "olmo2", "starcoder2", "mixtral", "gpt_bigcode",
                 "smollm3", "glm", "stablelm", "persimmon", "helium", "qwen3_moe")
]


@pytest.mark.parametrize("kind, overrides", OTHER_DECODERS)
def test_other_served_decoders_equal_loop(tiny_model, trie_attentions, kind: str, overrides: dict) -> None:
    """The other decoders the trie serves (grouped-query and multi-query attention, RoPE variants, partial
    rotary, mixture of experts, model types the scorer classifies by its probe), through every attention
    path, in passes on top of a cached prompt (the pack of 58 tokens does not fit the budget of 24)."""
    model = tiny_model(kind, **overrides)
    case = make_case("basic", seed=31)
    ref, _ = score(model, "loop", case)
    assert ref.std() > 0
    attentions = trie_attentions(model)
    for refused in {"kernel", "flex"} - set(attentions):
        with pytest.raises(ValueError, match=f"attention='{refused}' is not available: .*attention registry"):
            score(model, "trie", case, attention=refused)
    for attention in attentions:
        got, scorer = score(model, "trie", case, attention=attention, max_tokens_per_pass=24)
        assert scorer.attention == attention and scorer.stats.prompt_cache_tokens > 0
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0, msg=f"{kind} {attention}")


def _group_case(seed: int, prompt_ids: torch.Tensor, suffix_ids: torch.Tensor | None) -> dict:
    case = make_case(["basic", "no_suffix_gaps", "single_player", "long_players"][seed % 4], seed=seed)
    return {**case, "prompt_ids": prompt_ids, "suffix_ids": suffix_ids}


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("removal", ["delete", "replace"])
def test_responses_to_one_prompt_share_its_root(tiny_model, kind: str, removal: str) -> None:
    """A GRPO-like batch: three responses to one prompt, one to another prompt, one to the first prompt with
    another suffix. The prompt's tokens are computed once per (prompt, suffix); every score equals `loop`."""
    model = tiny_model(kind)
    prompt, other = torch.arange(10, 19), torch.arange(40, 45)
    eos, other_eos = torch.tensor([2]), torch.tensor([7])
    cases = [_group_case(s, prompt, eos) for s in range(3)]
    cases += [_group_case(3, other, eos), _group_case(4, prompt, other_eos)]
    kw = dict(removal="replace", filler_id=1) if removal == "replace" else {}
    refs = [score(model, "loop", c, **kw)[0] for c in cases]
    singles = [score(model, "trie", c, **kw)[1].stats.trie_tokens for c in cases]
    args = [[c[k] for c in cases] for k in ("prompt_ids", "response_ids", "players", "coalitions", "suffix_ids")]
    for attention in ("mask", "kernel", "flex"):
        scorer = CoalitionScorer(model, backend="trie", attention=attention, **kw)
        got = scorer.score_many(*args)
        for g, r in zip(got, refs):
            torch.testing.assert_close(g, r, atol=TOL, rtol=0, msg=f"{kind} {attention} {removal}")
        # the three responses to (prompt, eos) share one root: two copies of the prompt are not computed
        # (nor, with no gaps and delete, the duplicated prompt+suffix of their empty coalitions)
        saved = sum(singles) - scorer.stats.trie_tokens
        assert saved >= 2 * len(prompt)
        assert scorer.stats.tokens_computed == scorer.stats.trie_tokens
    # split into passes: the shared tree no longer fits one pass and its prompt goes through the KV cache
    scorer = CoalitionScorer(model, backend="trie", attention="kernel", max_tokens_per_pass=48, **kw)
    for g, r in zip(scorer.score_many(*args), refs):
        torch.testing.assert_close(g, r, atol=TOL, rtol=0)
    assert scorer.stats.passes > 1 and scorer.stats.prompt_cache_tokens > 0
