"""Sliding-window decoders on the trie.

The tree attention (the C++ kernel, Triton, FlexAttention) applies a layer's window by each token's position in
its own coalition, so every coalition runs on the trie, below the window and beyond it. The dense-mask path holds
no window: there a coalition shorter than the window is scored on the trie (the window changes nothing for it)
and the coalitions that reach the window in padded batches, where the model applies its own window. A probe at
construction checks that the model applies the window by position, not by index in the pack, and the attention
probe scores a game beyond the window. Every score is compared with ``backend="loop"`` (plain deletion, the
model's own forward).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from scar.scoring import CoalitionScorer
from scar.scoring.attention import LargestPosition, packed_forward
from scar.scoring.model import inspect_model, trie_exactness
from scar_kernels.extension import has_extension
from scar_kernels.flex import COMPILE_BY_DEVICE

from extension_marks import KERNEL, needs_extension

PROMPT = [60, 85, 28, 90, 58]
SHORT = [63, 62, 75, 76, 69, 28, 43, 35, 25, 89, 90, 75]  # 5 + 12 + 1 = 18 tokens: below the window
SHORT_PLAYERS = [(0, 3), (3, 6), (6, 9), (9, 12)]
LONG = [(7 * k + 3) % 97 + 3 for k in range(40)]  # 5 + 40 + 1 = 46 tokens: beyond the window
LONG_PLAYERS = [(0, 10), (10, 20), (20, 30), (30, 40)]
EVERY = torch.tensor([[(c >> j) & 1 for j in range(4)] for c in range(16)], dtype=torch.bool)
SUFFIX = [2]
WINDOW = 32
PASS = 48  # passes of at most 48 tokens: several per pack, each holding a whole coalition past the prompt

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
def test_windowed_decoders_are_exact_on_the_trie(tiny_model, kind: str, overrides: dict) -> None:
    model = tiny_model(kind, **overrides)
    assert inspect_model(model).attention_window == WINDOW
    ok, reason = trie_exactness(model)
    assert ok, reason
    short_ref, long_ref = _loop(model, SHORT, SHORT_PLAYERS), _loop(model, LONG, LONG_PLAYERS)
    for attention in ("auto", "mask"):
        scorer = CoalitionScorer(model, backend="auto", attention=attention, max_tokens_per_pass=PASS)
        assert scorer.backend == "trie"
        # sdpa drops a soft-cap, so the kernel is not exact for Gemma 2 there (tests/scoring/test_softcap_scoring.py)
        capped = getattr(model.config, "attn_logit_softcapping", None) and model.config._attn_implementation == "sdpa"
        kernel = attention == "auto" and has_extension() and not capped
        assert scorer.attention == ("kernel" if kernel else "mask") and scorer.window_on_trie == kernel
        got = scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
        assert scorer.stats.backend == "trie" and scorer.stats.prompt_cache_tokens > 0  # passes on a cached prompt
        torch.testing.assert_close(got, short_ref, rtol=0, atol=1e-5)
        # coalitions of 3 or 4 players (36 and 46 tokens) reach the window: the tree attention applies it; with the
        # dense mask they are scored in padded batches, the rest on the trie
        beyond = 0 if kernel else int((EVERY.sum(1) >= 3).sum())
        got = scorer.score(PROMPT, LONG, LONG_PLAYERS, EVERY, SUFFIX)
        assert scorer.stats.batched_coalitions == beyond == (0 if kernel else 5)
        assert scorer.stats.prompt_cache_tokens > 0  # the shorter ones still ran on the trie
        torch.testing.assert_close(got, long_ref, rtol=0, atol=1e-5)
        # several responses, one of them long: only its long coalitions leave the trie
        many = scorer.score_many([PROMPT] * 2, [SHORT, LONG], [SHORT_PLAYERS, LONG_PLAYERS], [EVERY, EVERY],
                                 [SUFFIX] * 2)
        assert scorer.stats.batched_coalitions == beyond
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
@pytest.mark.parametrize("attention", [KERNEL, "flex"])
def test_explicit_kernel_is_probed_at_construction(tiny_model, kind: str, overrides: dict, attention: str):
    model = tiny_model(kind, **overrides)
    # the compiled FlexAttention on CPU neither returns the log-sum-exp (sinks) nor compiles the window's mask: it
    # is refused for sinks and serves only the coalitions shorter than the window; eager FlexAttention applies both
    compiled_flex = attention == "flex" and COMPILE_BY_DEVICE["cpu"]
    if compiled_flex:
        if kind == "gpt_oss":
            with pytest.raises(ValueError, match=r"attention='flex' is not available: .*log-sum-exp"):
                CoalitionScorer(model, backend="trie", attention=attention)
        else:
            _check_explicit(model, attention, window_on_trie=False)
        COMPILE_BY_DEVICE["cpu"] = False
    try:
        _check_explicit(model, attention, window_on_trie=True)
    finally:
        COMPILE_BY_DEVICE["cpu"] = COMPILE_BY_DEVICE["cpu"] or compiled_flex


def _check_explicit(model, attention: str, window_on_trie: bool) -> None:
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=PASS)
    assert scorer.attention == attention and scorer.window_on_trie == window_on_trie
    got = scorer.score(PROMPT, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.prompt_cache_tokens > 0  # passes on a cached prompt
    torch.testing.assert_close(got, _loop(model, SHORT, SHORT_PLAYERS), rtol=0, atol=1e-5)
    got = scorer.score(PROMPT, LONG, LONG_PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.batched_coalitions == (0 if window_on_trie else 5) and scorer.stats.prompt_cache_tokens > 0
    torch.testing.assert_close(got, _loop(model, LONG, LONG_PLAYERS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", [KERNEL, "flex"])
def test_packed_forward_applies_the_window_by_position(tiny_model, attention: str) -> None:
    """A chain beyond the window equals the model's own forward; two branches whose packed distance exceeds the
    window while their positions do not still see their shared prompt."""
    base = tiny_model("mistral", sliding_window=WINDOW).model
    ids = torch.tensor(LONG)
    chain = torch.full((len(LONG),), len(LONG), dtype=torch.int32)
    compiled = COMPILE_BY_DEVICE["cpu"]
    COMPILE_BY_DEVICE["cpu"] = False
    try:
        with torch.no_grad():
            want = base(input_ids=ids[None]).last_hidden_state[0]
            got = packed_forward(base, ids, torch.arange(len(LONG)), chain, attention=attention)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            # prompt (4) | branch a: 30 filler tokens | branch b: the last 4 tokens, packed 34 tokens after the prompt
            prompt, filler, tail = LONG[:4], LONG[4:34], LONG[-4:]
            pack = torch.tensor(prompt + filler + tail)
            positions = torch.tensor(list(range(4)) + list(range(4, 34)) + list(range(4, 8)))
            horizon = torch.tensor([38] * 4 + [34] * 30 + [38] * 4, dtype=torch.int32)
            got = packed_forward(base, pack, positions, horizon, attention=attention)[0, -4:]
            want = base(input_ids=torch.tensor([prompt + tail])).last_hidden_state[0, -4:]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    finally:
        COMPILE_BY_DEVICE["cpu"] = compiled


@pytest.mark.parametrize(
    "kind, overrides", [("mistral", {"sliding_window": WINDOW}), ("gemma2", {"attn_implementation": "eager"})]
)
@pytest.mark.parametrize("attention", [KERNEL, "mask"])
def test_a_prompt_longer_than_the_window(tiny_model, kind: str, overrides: dict, attention: str) -> None:
    """A 40-token prompt: its cache is filled with the model's own window, every coalition reaches the window, and
    on the kernel the response's tokens no longer see the prompt's first tokens."""
    model = tiny_model(kind, **overrides)
    prompt = [(11 * k + 5) % 97 + 3 for k in range(40)]
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=PASS)
    got = scorer.score(prompt, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.batched_coalitions == (0 if attention == "kernel" else 16)
    want = CoalitionScorer(model, backend="loop").score(prompt, SHORT, SHORT_PLAYERS, EVERY, SUFFIX)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # a prompt shorter than the window whose passes append more than the window to its cache (dense mask: crop)
    prompt = prompt[:20]
    got = scorer.score(prompt, SHORT[:8], SHORT_PLAYERS[:2], EVERY[:4, :2], SUFFIX)
    want = CoalitionScorer(model, backend="loop").score(prompt, SHORT[:8], SHORT_PLAYERS[:2], EVERY[:4, :2], SUFFIX)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@needs_extension
def test_a_tree_attention_that_misses_the_window_serves_only_shorter_coalitions(tiny_model, monkeypatch) -> None:
    """A model whose layers do not pass their window to the attention function (PhiMoE windows its mask only): only
    the probe beyond the window sees it, and the coalitions that reach the window then leave the trie."""
    import scar.scoring.attention as attention_module

    model = tiny_model("mistral", sliding_window=WINDOW)
    monkeypatch.setattr(attention_module, "_window", lambda kwargs: None)
    scorer = CoalitionScorer(model, backend="trie", attention="kernel", max_tokens_per_pass=PASS)
    assert scorer.attention == "kernel" and not scorer.window_on_trie
    got = scorer.score(PROMPT, LONG, LONG_PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.batched_coalitions == 5
    torch.testing.assert_close(got, _loop(model, LONG, LONG_PLAYERS), rtol=0, atol=1e-5)


@needs_extension
def test_a_window_the_positions_reach_needs_the_positions(tiny_model) -> None:
    """Called without packed_forward, the tree attention refuses a window it cannot apply."""
    from scar.scoring.attention import scar_tree_attention

    layer = tiny_model("mistral", sliding_window=WINDOW).model.layers[0].self_attn
    q = k = v = torch.randn(1, 2, 40, 16)
    horizon = torch.full((40,), 40, dtype=torch.int32)
    common = {"scar_horizon": horizon, "sliding_window": WINDOW}
    scar_tree_attention(layer, q[:, :, :8], k[:, :, :8], v[:, :, :8], None, scar_horizon=horizon[:8].clamp(max=8),
                        sliding_window=WINDOW, scar_max_position=7)  # below the window: nothing to apply
    with pytest.raises(ValueError, match="pass scar_positions"):
        scar_tree_attention(layer, q, k, v, None, scar_max_position=39, **common)
    with pytest.raises(ValueError, match="not one window size"):
        scar_tree_attention(layer, q, k, v, None, **{**common, "sliding_window": 0})


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
