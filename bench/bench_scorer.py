"""Coalition scorer backends head to head: ``loop`` vs ``batched`` vs ``trie``.

Workload (full size, ``pytest bench/bench_scorer.py --benchmark-only``): a small random GPT-2 reward model,
a 256-token prompt, a 64-token response cut into 16 span-like players, and the coalitions of 32 antithetic
permutations (every prefix of each permutation, duplicates included, 32 x 17 = 544 rows). Each row reports
in ``benchmark.extra_info`` the tokens computed, the trie lower bound and their ratio, the plain-path tokens,
passes, and the median wall time (one torch thread). ``test_group_shares_the_prompt`` scores a GRPO group
(``GROUP`` responses to the same prompt, one antithetic pair of permutations each, what ``SCAR.for_training``
plans) with the group's responses under one prompt root, against one root per response (the scorer before
roots were shared, restored by patching ``share_prompts``). ``test_one_kernel_gelu`` times the trie with the
packed view's one-kernel GELU (what the scorer runs) against the model's GELU as written (seven elementwise
operations; restored by patching ``fuse_activations``), in float32 and bfloat16. With benchmarks disabled
(``--benchmark-disable``, as CI runs) the same code runs once at a tiny size, for correctness only;
``SCAR_BENCH_SIZE=tiny|full`` overrides the choice.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

import scar.scoring.scorer as scorer_module
import scar.scoring.views as views_module
from scar.scoring import CoalitionScorer
from scar.scoring.attention import ATTENTION_NAME
from scar.scoring.games import build_game, pack_games


@dataclass(frozen=True)
class Workload:
    prompt: int
    response: int
    players: int
    permutations: int
    n_layer: int
    n_embd: int


FULL = Workload(prompt=256, response=64, players=16, permutations=32, n_layer=2, n_embd=64)
TINY = Workload(prompt=12, response=10, players=4, permutations=4, n_layer=1, n_embd=16)
GROUP = {"full": 8, "tiny": 3}
"""Responses per prompt in ``test_group_shares_the_prompt`` (TRL's ``num_generations``)."""


@pytest.fixture(scope="module")
def workload(bench_full) -> Workload:
    size = os.environ.get("SCAR_BENCH_SIZE", "full" if bench_full else "tiny")
    if size not in ("full", "tiny"):
        raise ValueError(f"SCAR_BENCH_SIZE must be 'full' or 'tiny', got {size!r}")
    return FULL if size == "full" else TINY


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for every backend and for the reference: the small model's many small
    forwards (loop) drown in thread overhead otherwise on a shared machine, which would flatter the trie."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def span_players(gen: torch.Generator, n_tokens: int, n_players: int) -> list[tuple[int, int]]:
    """``n_players`` contiguous spans of uneven lengths tiling ``n_tokens`` tokens (like word/phrase spans)."""
    cuts = sorted((torch.randperm(n_tokens - 1, generator=gen)[: n_players - 1] + 1).tolist())
    bounds = [0] + cuts + [n_tokens]
    return list(zip(bounds, bounds[1:]))


def antithetic_coalitions(gen: torch.Generator, n_players: int, permutations: int) -> torch.Tensor:
    """Every prefix coalition of ``permutations // 2`` random permutations and of their reverses."""
    perms = [torch.randperm(n_players, generator=gen) for _ in range(permutations // 2)]
    perms += [p.flip(0) for p in perms]
    rows = []
    for perm in perms:
        row = torch.zeros(n_players, dtype=torch.bool)
        rows.append(row.clone())
        for j in perm.tolist():
            row[j] = True
            rows.append(row.clone())
    return torch.stack(rows)


@lru_cache(maxsize=2)
def instance(w: Workload):
    """The model and the scoring problem of a workload (built once per session)."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=w.n_layer, n_embd=w.n_embd, n_head=4, vocab_size=1000, n_positions=512,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=1)
    model = GPT2ForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 1000, (w.prompt,), generator=gen)
    response = torch.randint(3, 1000, (w.response,), generator=gen)
    players = span_players(gen, w.response, w.players)
    coalitions = antithetic_coalitions(gen, w.players, w.permutations)
    return model, (prompt, response, players, coalitions, [2])


@lru_cache(maxsize=2)
def reference_values(w: Workload) -> torch.Tensor:
    model, args = instance(w)
    return CoalitionScorer(model, backend="loop").score(*args)


@pytest.mark.parametrize(
    "backend, budget",
    [("loop", 8192), ("batched", 8192), ("trie", 8192), ("trie", 1024)],
    ids=["loop", "batched", "trie", "trie-1024"],
)
def test_scorer_backend(benchmark, workload: Workload, backend: str, budget: int) -> None:
    """``trie-1024``: the same trie split into passes of <= 1024 tokens on top of the cached prompt; with a
    dense mask the attention cost of a pass grows with its length squared, so smaller passes can win."""
    model, args = instance(workload)
    scorer = CoalitionScorer(model, backend=backend, max_tokens_per_pass=budget)
    rounds = 1 if backend == "loop" else 3
    values = benchmark.pedantic(scorer.score, args=args, rounds=rounds, iterations=1, warmup_rounds=0)
    s = scorer.stats
    torch.testing.assert_close(values, reference_values(workload), atol=1e-4, rtol=0)
    assert s.coalitions == workload.permutations * (workload.players + 1)
    assert s.tokens_computed >= s.trie_tokens
    if backend == "trie" and s.trie_tokens <= budget:
        assert s.tokens_computed == s.trie_tokens and s.passes == 1  # the whole trie fits one pass
    assert s.peak_pack_tokens <= budget
    record(
        benchmark,
        s,
        backend=backend,
        max_tokens_per_pass=budget,
        workload=f"p{workload.prompt}_r{workload.response}_n{workload.players}_k{workload.permutations}",
        distinct_coalitions=s.distinct_coalitions,
        ratio_to_lower_bound=round(s.ratio_to_lower_bound, 3),
        peak_pack_tokens=s.peak_pack_tokens,
    )


def record(benchmark, s, **extra) -> None:
    """The scorer's cost of the run (and the median wall time) in ``benchmark.extra_info``, with ``extra``."""
    benchmark.extra_info.update(
        coalitions=s.coalitions,
        tokens_computed=s.tokens_computed,
        trie_lower_bound=s.trie_tokens,
        plain_tokens=s.plain_tokens,
        passes=s.passes,
        torch_threads=1,
        **extra,
    )
    if benchmark.stats is not None and getattr(benchmark.stats, "stats", None) is not None:
        benchmark.extra_info["median_s"] = benchmark.stats.stats.median


@lru_cache(maxsize=2)
def group_instance(w: Workload):
    """``GROUP`` responses to the workload's prompt, each with its own players and one antithetic pair of
    permutations, plus their ``loop`` reference values."""
    model, (prompt, *_) = instance(w)
    gen = torch.Generator().manual_seed(2)
    size = GROUP["full" if w == FULL else "tiny"]
    responses = [torch.randint(3, 1000, (w.response,), generator=gen) for _ in range(size)]
    players = [span_players(gen, w.response, w.players) for _ in range(size)]
    coalitions = [antithetic_coalitions(gen, w.players, 2) for _ in range(size)]
    args = ([prompt] * size, responses, players, coalitions, [[2]] * size)
    return model, args, CoalitionScorer(model, backend="loop").score_many(*args)


@pytest.mark.parametrize("roots", ["shared", "per-response"])
def test_group_shares_the_prompt(benchmark, workload: Workload, roots: str, monkeypatch) -> None:
    model, args, reference = group_instance(workload)
    if roots == "per-response":
        one_each = lambda games: (list(games), [[r] for r in range(len(games))])
        monkeypatch.setattr(scorer_module, "share_prompts", one_each)
    scorer = CoalitionScorer(model, backend="trie")
    values = benchmark.pedantic(scorer.score_many, args=args, rounds=5, iterations=1, warmup_rounds=1)
    for got, want in zip(values, reference):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    s = scorer.stats
    prompt, size = len(args[0][0]), len(args[0])
    games = [build_game(r, *a, vocab_size=None, filler_id=None) for r, a in enumerate(zip(*args))]
    one_root_each = pack_games(games, [0] * size).n_tokens
    if roots == "shared":  # the prompt once instead of once per response
        assert s.trie_tokens <= one_root_each - (size - 1) * prompt
    else:
        assert s.trie_tokens == one_root_each
    record(
        benchmark,
        s,
        roots=roots,
        responses=size,
        one_root_per_response_tokens=one_root_each,
        workload=f"p{workload.prompt}_r{workload.response}_n{workload.players}_k2",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("gelu", ["one-kernel", "as-written"])
def test_one_kernel_gelu(benchmark, workload: Workload, gelu: str, dtype: torch.dtype, monkeypatch) -> None:
    model, args = instance(workload)
    model = copy.deepcopy(model).to(dtype)  # a model of its own: views are cached per model
    if gelu == "as-written":
        monkeypatch.setattr(views_module, "fuse_activations", lambda module: 0)
    scorer = CoalitionScorer(model, backend="trie")
    values = benchmark.pedantic(scorer.score, args=args, rounds=5, iterations=1, warmup_rounds=1)
    packed = views_module.model_view(model, ATTENTION_NAME, fused_activations=True)
    kinds = {type(m).__name__ for m in packed.modules() if "GELU" in type(m).__name__}
    assert kinds == ({"GELU"} if gelu == "one-kernel" else {"NewGELUActivation"})
    # float32: rounding of the fused tanh; bfloat16: that precision's rounding of these small scores
    atol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(values, reference_values(workload), atol=atol, rtol=0)
    record(benchmark, scorer.stats, gelu=gelu, dtype=str(dtype).removeprefix("torch."),
           workload=f"p{workload.prompt}_r{workload.response}_n{workload.players}_k{workload.permutations}")
