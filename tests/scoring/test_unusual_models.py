"""Architectures that break an assumption of a fast path: each is scored exactly (equal to ``backend="loop"``,
plain deletion one sequence at a time) by every backend it is given, or refused with a reason.

- Right padding: YOSO (hashed attention), FNet (Fourier mixing) and XLNet do not honour the attention mask,
  so padded batches would change their scores; they are scored one unpadded sequence at a time.
- The tree attention: Nemotron's layers do not pass the forward's keyword arguments on to their attention,
  which then reads the pack from the packed forward's context; JetMoE caches its keys before repeating them for
  its expert heads and DeepSeek-V3 caches latent vectors, so the trie's passes recompute their prompt instead of
  reading it from the cache.
- Probes that cannot run: OpenAI GPT's forward fails on the packed probe, MT5's base model needs decoder inputs
  for the causality probe; both are classified without crashing.
"""

from __future__ import annotations

import pytest
import torch

from scar.scoring import CoalitionScorer
from scar.scoring.attention import packed_forward
from scar.scoring.model import error_summary, inspect_model, trie_exactness
from scar.scoring.padded import pad_right, padding_exactness
from scar.scoring.scorer import ExactnessError
from scar_kernels.ops import has_extension

from extension_marks import KERNEL

PROMPT = [60, 85, 28, 90, 58]
RESPONSE = [63, 62, 75, 76, 69, 28, 43, 35, 25, 89, 90, 75]
PLAYERS = [(0, 3), (3, 6), (6, 9), (9, 12)]
EVERY = torch.tensor([[(c >> j) & 1 for j in range(4)] for c in range(16)], dtype=torch.bool)
SUFFIX = [2]  # EOS: encoder-decoders read their score there


def _loop(model) -> torch.Tensor:
    return CoalitionScorer(model, backend="loop").score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)


@pytest.mark.parametrize("kind", ["yoso", "fnet", "xlnet"])
def test_models_that_ignore_the_padding_mask_are_scored_unpadded(tiny_model, kind: str) -> None:
    """The model's own padded batch changes a sequence's logits (so padding would give wrong scores); the probe
    says so, and ``auto`` and ``batched`` equal plain deletion to float32 rounding."""
    model = tiny_model(kind)
    rows = [PROMPT + RESPONSE[:3] + SUFFIX, PROMPT + RESPONSE + SUFFIX]
    ids, mask = pad_right(rows, 0)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits[0]
        alone = model(input_ids=torch.tensor([rows[0]])).logits[0]
    assert float((padded - alone).abs().max()) > 1e-5  # padding does change this model's output
    ok, reason = padding_exactness(model)
    assert not ok and "padding" in reason
    reference = _loop(model)
    for backend in ("auto", "batched"):
        scorer = CoalitionScorer(model, backend=backend)
        got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_encoders_that_honour_padding_stay_batched(tiny_model, kind: str) -> None:
    """The probe passes for encoders that mask padded keys, so their batches stay padded (several sequences
    per forward) and exact."""
    model = tiny_model(kind)
    assert padding_exactness(model)[0]
    scorer = CoalitionScorer(model, backend="batched")
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.passes < 16
    torch.testing.assert_close(got, _loop(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["jetmoe", "deepseek_v3"])
@pytest.mark.parametrize(
    "attention",
    [KERNEL, "flex", "mask"],
)
def test_tree_attention_recomputes_the_prompt_where_it_cannot_read_the_cache(
    tiny_model, kind: str, attention: str, eager_flex
) -> None:
    """JetMoE's cache holds its keys before they are repeated for its expert heads, and DeepSeek-V3's cache holds
    latent vectors, not per-head keys and values: the tree attention cannot run on top of their cached prompt.
    The probe finds that and the trie's passes recompute the prompt instead, exactly. The dense mask goes through
    the model's own attention, which reads its cache: it keeps it."""
    model = tiny_model(kind)
    assert trie_exactness(model)[0]
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=24)
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
    torch.testing.assert_close(got, _loop(model), rtol=0, atol=1e-5)
    assert scorer.stats.passes > 1
    assert scorer.cache_prompt == (attention == "mask")
    assert (scorer.stats.prompt_cache_tokens > 0) == (attention == "mask")
    if attention == "kernel":
        assert CoalitionScorer(model, backend="auto").attention == "kernel"
        # a budget below one whole sequence (5 + 12 + 1 tokens) is raised to it: one chain per pass
        narrow = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=12)
        torch.testing.assert_close(narrow.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX), got, rtol=0, atol=1e-6)
        assert narrow.stats.passes > scorer.stats.passes


@pytest.mark.parametrize(
    "attention",
    [KERNEL, "flex"],
)
def test_layers_that_drop_the_pack_arguments_read_them_from_the_context(tiny_model, attention, eager_flex) -> None:
    """Nemotron's decoder layers do not pass the forward's keyword arguments to their attention: the tree
    attention reads the pack from the packed forward's context instead, in passes on a cached prompt, exactly."""
    model = tiny_model("nemotron")
    scorer = CoalitionScorer(model, backend="trie", attention=attention, max_tokens_per_pass=24)
    got = scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX)
    assert scorer.stats.passes > 1 and scorer.stats.prompt_cache_tokens > 0
    torch.testing.assert_close(got, _loop(model), rtol=0, atol=1e-5)
    if attention == "kernel":
        assert CoalitionScorer(model, backend="auto").attention == "kernel"


def test_auto_attention_keeps_the_kernel_where_it_runs(tiny_model) -> None:
    """The probe does not demote a model the kernel serves (when the compiled kernel is built)."""
    if not has_extension():
        pytest.skip("the compiled kernels are not built")
    assert CoalitionScorer(tiny_model("llama"), backend="auto").attention == "kernel"


def test_a_forward_that_fails_the_packed_probe_is_refused_not_crashed(tiny_model) -> None:
    """OpenAI GPT's forward cannot run the packed probe: the trie is refused with the error as the reason,
    ``auto`` falls back to padded batches, exactly."""
    model = tiny_model("openai-gpt")
    ok, reason = trie_exactness(model)
    assert not ok and reason.startswith("probe: the packed forward raised")
    assert "(at openai/modeling_openai.py:" in reason  # the model's line that failed, not torch's wrappers
    with pytest.warns(UserWarning, match="not 'trie'"):
        scorer = CoalitionScorer(model, backend="auto")
    assert scorer.backend == "batched"
    torch.testing.assert_close(scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX), _loop(model), rtol=0,
                               atol=1e-6)


def test_encoder_decoder_is_inspected_and_scored(tiny_model) -> None:
    """MT5's base model needs decoder inputs, so the causality probe cannot run it: it is taken as not
    prefix-sharing and scored whole, equal to plain deletion."""
    model = tiny_model("mt5")
    info = inspect_model(model)
    assert not info.is_causal
    scorer = CoalitionScorer(model, backend="auto")
    assert scorer.backend == "batched"
    torch.testing.assert_close(scorer.score(PROMPT, RESPONSE, PLAYERS, EVERY, SUFFIX), _loop(model), rtol=0,
                               atol=1e-6)


def test_a_negative_position_limit_means_none(tiny_model) -> None:
    """XLNet's config says ``max_position_embeddings``-like -1 (relative positions): no limit, not a limit of
    -1 tokens."""
    model = tiny_model("xlnet")
    assert inspect_model(model).max_positions is None
    assert CoalitionScorer(model, backend="loop").score(PROMPT, RESPONSE, PLAYERS, EVERY[:2], SUFFIX).shape == (2,)


def test_exactness_error_of_batched_does_not_suggest_batched() -> None:
    batched = str(ExactnessError("batched", 0, [1], 0.5, 0.7, 1e-4, "M"))
    trie = str(ExactnessError("trie", 0, [1], 0.5, 0.7, 1e-4, "M"))
    assert "use backend='loop'," in batched and "(or 'batched')" not in batched
    assert "use backend='loop' (or 'batched')" in trie


def test_error_summary_names_the_innermost_frame_outside_torch_and_this_project(tiny_model) -> None:
    def model_code() -> None:
        torch.zeros(2).view(3)  # raises inside torch: the place is this line

    def calls_this_project() -> None:
        packed_forward(tiny_model("llama").model, torch.tensor([3, 4]), torch.tensor([0, 1]), torch.tensor([2]))

    for fn, error in ((model_code, RuntimeError), (calls_this_project, ValueError)):
        with pytest.raises(error) as raised:
            fn()
        line = fn.__code__.co_firstlineno + 1
        assert error_summary(raised.value).endswith(f"(at scoring/test_unusual_models.py:{line} in {fn.__name__})")
