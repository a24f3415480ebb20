"""Sliding-window decoders on the trie.

A coalition shorter than the window is not affected by it, so the packed trie (which applies no window) scores it
exactly; the coalitions that reach the window are scored in padded batches, where the model applies its own
window. A probe at construction checks that the model applies the window by position, not by index in
the pack. Every score is compared with ``backend="loop"`` (plain deletion, the model's own forward).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from scar.scoring import CoalitionScorer
from scar.scoring.attention import LargestPosition, packed_forward
from scar.scoring.model import inspect_model, trie_exactness
from scar_kernels.flex import COMPILE_BY_DEVICE

from extension_marks import needs_extension

PROMPT = [60, 85, 28, 90, 58]
SHORT = [63, 62, 75, 76, 69, 28, 43, 35, 25, 89, 90, 75]  # 5 + 12 + 1 = 18 tokens: below the window
SHORT_PLAYERS = [(0, 3), (3, 6), (6, 9), (9, 12)]
LONG = [(7 * k + 3) % 97 + 3 for k in range(40)]  # 5 + 40 + 1 = 46 tokens: beyond the window
LONG_PLAYERS = [(0, 10), (10, 20), (20, 30), (30, 40)]
EVERY = torch.tensor([[(c >> j) & 1 for j in range(4)] for c in range(16)], dtype=torch.bool)
SUFFIX = [2]
WINDOW = 32

WINDOWED = [
    ("mistral", {"sliding_window": WINDOW}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0}),
    ("gemma2", {}),  # alternating sliding and full layers, soft-capped attention logits
    ("gemma3_text", {}),
    ("gpt_oss", {}),  # attention sinks
]


def _loop(model, response, players) -> torch.Tensor:
    return CoalitionScorer(model, backend="loop").score(PROMPT, response, players, EVERY, SUFFIX)


@pytest.mark.parametrize("kind, overrides", WINDOWED)
def test_windowed_decoders_are_exact_on_the_trie_below_the_window(tiny_model, kind: str, overrides: dict) -> None:
    model = tiny_model(kind, **overrides)
    assert inspect_model(model).attention_window == WINDOW
    ok, reason = trie_exactness(model)
    assert ok, reason
    short_ref, long_ref = _loop(model, SHORT, SHORT_PLAYERS), _loop(model, LONG, LONG_PLAYERS)
    for attention in ("auto", "mask"):
        scorer = CoalitionScorer(model, backend="auto", attention=attention, max_tokens_per_pass=24)
        assert scorer.backend == "trie"
        got = scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
        assert scorer.stats.backend == "trie" and scorer.stats.prompt_cache_tokens > 0  # passes on a cached prompt
        torch.testing.assert_close(got, short_ref, rtol=0, atol=1e-5)
        # coalitions of 3 or 4 players (36 and 46 tokens) reach the window: padded batches, the rest on the trie
        got = scorer.score(PROMPT, LONG, LONG_PLAYERS, EVERY, SUFFIX)
        assert scorer.stats.batched_coalitions == int((EVERY.sum(1) >= 3).sum()) == 5
        assert scorer.stats.prompt_cache_tokens > 0  # the shorter ones still ran on the trie
        torch.testing.assert_close(got, long_ref, rtol=0, atol=1e-5)
        # several responses, one of them long: only its long coalitions leave the trie
        many = scorer.score_many([PROMPT] * 2, [SHORT, LONG], [SHORT_PLAYERS, LONG_PLAYERS], [EVERY, EVERY],
                                 [SUFFIX] * 2)
        assert scorer.stats.batched_coalitions == 5
        torch.testing.assert_close(many[0], short_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(many[1], long_ref, rtol=0, atol=1e-5)
        scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
        assert scorer.stats.batched_coalitions == 0


def test_the_window_acts_on_the_long_coalitions_only(tiny_model) -> None:
    """The same weights without a window score the coalitions that reach the window differently (so routing them
    to padded batches matters) and every shorter one identically (so the trie needs no window there)."""
    windowed, plain = tiny_model("mistral", sliding_window=WINDOW), tiny_model("mistral", sliding_window=None)
    gap = (_loop(windowed, LONG, LONG_PLAYERS) - _loop(plain, LONG, LONG_PLAYERS)).abs()
    reaches = EVERY.sum(1) >= 3  # 5 + 10 k + 1 >= 32 tokens
    assert float(gap[reaches].min()) > 1e-5 and float(gap[~reaches].max()) < 1e-6


@needs_extension
@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("mistral", {"sliding_window": WINDOW}),
        ("gemma3_text", {}),
        # soft-capped logits: the kernel caps them too, as eager attention does (sdpa drops the cap, and the scorer
        # refuses the kernel for it: tests/scoring/test_softcap_scoring.py)
        ("gemma2", {"attn_implementation": "eager"}),
        ("gpt_oss", {}),  # attention sinks: the kernel adds them to the softmax
    ],
)
@pytest.mark.parametrize("attention", ["kernel", "flex"])
def test_explicit_kernel_is_probed_at_construction(tiny_model, kind: str, overrides: dict, attention: str):
    model = tiny_model(kind, **overrides)
    if kind == "gpt_oss" and attention == "flex" and COMPILE_BY_DEVICE["cpu"]:
        with pytest.raises(ValueError, match=r"attention='flex' is not available: .*log-sum-exp"):
            CoalitionScorer(model, backend="trie", attention=attention)
        return
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=24)
    got = scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.prompt_cache_tokens > 0  # passes on a cached prompt
    torch.testing.assert_close(got, _loop(model, SHORT, SHORT_PLAYERS), rtol=0, atol=1e-5)


@needs_extension
def test_kernel_refuses_a_window_the_positions_reach(tiny_model) -> None:
    base = tiny_model("mistral", sliding_window=WINDOW).model
    ids = torch.tensor(LONG)
    chain = torch.full((len(LONG),), len(LONG), dtype=torch.int32)
    with torch.no_grad():
        packed_forward(base, ids[: WINDOW - 1], torch.arange(WINDOW - 1), chain[: WINDOW - 1].clamp(max=WINDOW - 1))
        with pytest.raises(ValueError, match="sliding_window"):
            packed_forward(base, ids, torch.arange(len(LONG)), chain)


@needs_extension
def test_only_windowed_layers_read_the_largest_position(tiny_model, monkeypatch) -> None:
    """The pack's largest position (a device synchronisation on GPUs) is read only by layers with a window."""
    reads = []
    read = LargestPosition.__int__

    def counted(self) -> int:
        reads.append(1)
        return read(self)

    monkeypatch.setattr(LargestPosition, "__int__", counted)
    ids, chain = torch.tensor(SHORT), torch.full((len(SHORT),), len(SHORT), dtype=torch.int32)
    with torch.no_grad():
        packed_forward(tiny_model("llama").model, ids, torch.arange(len(SHORT)), chain)
        assert not reads
        packed_forward(tiny_model("mistral", sliding_window=WINDOW).model, ids, torch.arange(len(SHORT)), chain)
    assert reads  # once per windowed layer; the tensor itself is read once


def test_probe_refuses_a_window_applied_by_index_in_the_pack(tiny_model) -> None:
    """A decoder that windows its 4D mask by packed index passes the short packing probe but not the window
    probe: its trie scores would be wrong once a pack is longer than the window."""
    model = tiny_model("mistral", seed=5, sliding_window=WINDOW)  # this test's own: its forward is replaced
    forward = model.model.forward

    def windowed_by_index(input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            idx = torch.arange(attention_mask.shape[-1])
            far = (idx[:, None] - idx[None, :]) >= WINDOW
            attention_mask = attention_mask.masked_fill(far, torch.finfo(attention_mask.dtype).min)
        return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    model.model.forward = windowed_by_index
    ok, why = trie_exactness(model)
    assert not ok and "applied by index in the pack" in why
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = CoalitionScorer(model, backend="auto")
    assert scorer.backend == "batched" and any("by index" in str(w.message) for w in caught)
    torch.testing.assert_close(
        scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX), _loop(model, SHORT, SHORT_PLAYERS), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("window, reason", [(6, "no longer than the probe"), (100_000, "WINDOW_PROBE_MAX_TOKENS")])
def test_windows_the_probe_cannot_check_are_refused(tiny_model, window: int, reason: str) -> None:
    model = tiny_model("mistral", sliding_window=window, max_position_embeddings=200_000)
    ok, why = trie_exactness(model)
    assert not ok and reason in why
    with pytest.raises(ValueError, match=reason):
        CoalitionScorer(model, backend="trie")
