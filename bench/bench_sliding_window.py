"""Sliding-window reward models: the trie, whose tree attention applies the window by position, against padded
batches and against the trie on a dense mask (which holds no window, so its coalitions that reach the window
leave for padded batches).

Workload (full size, ``pytest bench/bench_sliding_window.py --benchmark-only``): random-weight Mistral, Gemma 2
and gpt-oss sequence classifiers (4 layers, width 256, sliding window 128 tokens, gpt-oss's own; Gemma 2 and
gpt-oss alternate windowed and full layers, Gemma 2 soft-caps its attention logits, gpt-oss adds attention
sinks and routes 4 experts), a 256-token prompt, a 64-token response cut into 16 span players and the distinct
coalitions of ``method="permutation"``'s plan at 32 permutations (what the library scores for that estimate):
every coalition is longer than the window. Paths: ``batched``, ``auto`` (the trie on the tree-attention kernel
where the model's attention allows it) and ``trie-mask`` (the trie on the model's own attention with a dense
mask). Each row records the tokens computed, the passes, the coalitions scored in padded batches, the backend
and attention that ran and the median wall time (one torch thread); every row's values equal ``batched`` to
float32 rounding. With benchmarks disabled (as CI runs) the same code runs once at a tiny size with a 32-token
window, where a second call with a longer response checks which coalitions leave the trie.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import transformers as tf

from scar.scoring import CoalitionScorer
from scar.shapley import plan
from scar_bench.measure import bench_threads
from scar_bench.workloads import span_players

ARCHITECTURES = {"mistral": "MistralConfig", "gemma2": "Gemma2Config", "gpt_oss": "GptOssConfig"}
EXTRA = {"gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2)}
"""Settings of an architecture besides the shared ones (gpt-oss: a small mixture of experts)."""
FULL = dict(prompt=256, response=64, players=16, permutations=32, layers=4, width=256, window=128)
TINY = dict(prompt=12, response=10, players=4, permutations=4, layers=1, width=16, window=32)


@pytest.fixture(scope="module")
def size(bench_full) -> dict:
    return FULL if bench_full else TINY


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with bench_threads():
        yield


@lru_cache(maxsize=4)
def _instance(kind: str, full: bool):
    w = FULL if full else TINY
    config = getattr(tf, ARCHITECTURES[kind])(
        num_hidden_layers=w["layers"], hidden_size=w["width"], intermediate_size=4 * w["width"],
        num_attention_heads=4, num_key_value_heads=4, head_dim=w["width"] // 4, max_position_embeddings=8192,
        sliding_window=w["window"], vocab_size=1000, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=1,
        **EXTRA.get(kind, {}),
    )
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(config).eval()
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 1000, (w["prompt"],), generator=gen)
    response = torch.randint(3, 1000, (w["response"],), generator=gen)
    players = span_players(w["response"], w["players"])
    coalitions = plan(w["players"], method="permutation", budget=w["permutations"], seed=0).coalitions
    return model, (prompt, response, players, coalitions, [2])


@lru_cache(maxsize=4)
def _batched(kind: str, full: bool) -> torch.Tensor:
    model, args = _instance(kind, full)
    return CoalitionScorer(model, backend="batched").score(*args)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
@pytest.mark.parametrize("backend", ["batched", "auto", "trie-mask"])
def test_windowed_model(benchmark, size: dict, kind: str, backend: str) -> None:
    full = size is FULL
    model, args = _instance(kind, full)
    if backend == "trie-mask":  # the trie on the model's own attention with the dense mask, beside the kernel
        scorer = CoalitionScorer(model, backend="trie", attention="mask")
    else:
        scorer = CoalitionScorer(model, backend=backend)
    assert scorer.backend == ("batched" if backend == "batched" else "trie")
    values = benchmark.pedantic(scorer.score, args=args, rounds=3, iterations=1, warmup_rounds=1)
    s = scorer.stats
    torch.testing.assert_close(values, _batched(kind, full), atol=1e-4, rtol=0)
    assert s.backend == scorer.backend
    benchmark.extra_info.update(
        architecture=kind, backend=s.backend, attention=scorer.attention, coalitions=s.coalitions,
        tokens_computed=s.tokens_computed, plain_tokens=s.plain_tokens, passes=s.passes, torch_threads=1,
        window=size["window"], batched_coalitions=s.batched_coalitions,
    )
    if benchmark.stats is not None and getattr(benchmark.stats, "stats", None) is not None:
        benchmark.extra_info["median_s"] = benchmark.stats.stats.median
    if not full:  # a response that reaches the window: on the dense mask its longer coalitions leave the trie
        prompt, _, players, coalitions, suffix = args
        long = torch.arange(3, 3 + size["window"])
        wide = [(a * size["window"] // len(args[1]), b * size["window"] // len(args[1])) for a, b in players]
        got = scorer.score(prompt, long, wide, coalitions, suffix)
        assert (scorer.stats.batched_coalitions > 0) == (scorer.attention == "mask")
        want = CoalitionScorer(model, backend="loop").score(prompt, long, wide, coalitions, suffix)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
