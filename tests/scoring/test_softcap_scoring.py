"""Reward models that soft-cap their attention logits (Gemma 2) on the trie's tree attention.

The tree attention applies ``softcap * tanh(score / softcap)`` as the model's own attention does, so the kernel and
FlexAttention paths serve such models. The test model's query and key projections are scaled up so that its
logits are large and the cap changes every score by far more than the tolerance: a path that ignored the cap
would fail. Every score is compared with ``backend="loop"`` (plain deletion, the model's own forward).

The models run eager attention, the implementation that applies Gemma 2's cap (and the only one newer transformers
allows for it). Older transformers also run Gemma 2 on ``sdpa``, which drops the cap: the model's own forward is
then uncapped, the tree attention would not be, and the scorer must refuse the kernel paths for the mask.
"""

from __future__ import annotations

import pytest
import torch

from scar.scoring import CoalitionScorer

from extension_marks import KERNEL, needs_extension

PROMPT = [60, 85, 28, 90, 58]
RESPONSE = [63, 62, 75, 76, 69, 28, 43, 35, 25, 89, 90, 75]  # 18 tokens with prompt and suffix: below the window
PLAYERS = [(0, 3), (3, 6), (6, 9), (9, 12)]
EVERY = torch.tensor([[(c >> j) & 1 for j in range(4)] for c in range(16)], dtype=torch.bool)
SUFFIX = [2]
CAP = 2.0
ATOL = 1e-5  # fp32 scores of size ~0.5; the cap moves them by ~0.2 on this model


SEED = 11  # these models are this file's own: their weights are changed


def sharp_gemma2(tiny_model, softcap: float | None, attn_implementation: str = "eager") -> torch.nn.Module:
    """A tiny Gemma 2 whose attention logits reach tens, so that a cap of 2 bites (built once per cap)."""
    model = tiny_model("gemma2", seed=SEED, attn_logit_softcapping=softcap, attn_implementation=attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    if not getattr(model, "_sharpened", False):
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(30.0)
                layer.self_attn.k_proj.weight.mul_(30.0)
        model._sharpened = True
    return model


@pytest.fixture(scope="module")
def capped(tiny_model) -> torch.nn.Module:
    return sharp_gemma2(tiny_model, CAP)


def _loop(model: torch.nn.Module) -> torch.Tensor:
    return CoalitionScorer(model, backend="loop").score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)


def test_the_cap_changes_the_scores(capped, tiny_model) -> None:
    assert float((_loop(capped) - _loop(sharp_gemma2(tiny_model, None))).abs().max()) > 1000 * ATOL


@pytest.mark.parametrize(
    "attention",
    [
        KERNEL,
        "flex",
        "mask",
    ],
)
def test_trie_paths_equal_plain_deletion(capped, attention: str, eager_flex) -> None:
    scorer = CoalitionScorer(capped, backend="trie", attention=attention, max_tokens_per_pass=24)
    assert scorer.attention == attention
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.backend == "trie" and scorer.stats.prompt_cache_tokens > 0
    torch.testing.assert_close(got, _loop(capped), rtol=0, atol=ATOL)


@needs_extension
def test_auto_runs_the_kernel(capped) -> None:
    scorer = CoalitionScorer(capped, backend="auto")
    assert scorer.backend == "trie" and scorer.attention == "kernel"
    torch.testing.assert_close(scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX), _loop(capped), rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def capped_sdpa(tiny_model) -> torch.nn.Module:
    try:
        return sharp_gemma2(tiny_model, CAP, attn_implementation="sdpa")
    except ValueError as err:  # newer transformers: "Gemma2... does not support ... sdpa"
        pytest.skip(f"this transformers does not run Gemma 2 on sdpa: {err}")


def test_sdpa_drops_the_cap_and_the_kernel_paths_refuse(capped_sdpa, tiny_model) -> None:
    uncapped = sharp_gemma2(tiny_model, None, attn_implementation="sdpa")
    torch.testing.assert_close(_loop(capped_sdpa), _loop(uncapped), rtol=0, atol=ATOL)
    for attention in ("kernel", "flex"):
        with pytest.raises(ValueError, match="attn_implementation='eager'"):
            CoalitionScorer(capped_sdpa, backend="trie", attention=attention)
    scorer = CoalitionScorer(capped_sdpa, backend="auto")
    assert scorer.backend == "trie" and scorer.attention == "mask"
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
    torch.testing.assert_close(got, _loop(capped_sdpa), rtol=0, atol=ATOL)
