"""Model inspection, trie refusal and backend selection, evaluation mode, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from scar.scoring import CoalitionScorer
from scar.scoring.model import inspect_model, trie_exactness

ARGS = ([3, 4, 5], [6, 7, 8, 9], [(0, 2), (2, 4)])
COALITIONS = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)

# ----------------------------------------------------------------------------- inspection


@pytest.mark.parametrize(
    "kind, causal, base_attr",
    [("gpt2", True, "transformer"), ("llama", True, "model"), ("gpt_neox", True, "gpt_neox"),
     ("opt", True, "model"), ("distilbert", False, "distilbert"), ("bert", False, "bert")],
)
def test_inspect_model(tiny_model, kind: str, causal: bool, base_attr: str) -> None:
    model = tiny_model(kind, num_labels=2)
    info = inspect_model(model)
    assert info.is_causal is causal
    assert info.base is getattr(model, base_attr)
    assert (info.head is model.score) if causal else (info.head is None)
    assert info.num_labels == 2 and info.max_positions == 256 and info.pad_token_id == 0
    assert info.vocab_size == 100
    logits = torch.tensor([[1.0, 3.5], [2.0, -1.0]])
    assert info.score(logits, None).tolist() == [2.5, -3.0]
    assert info.score(logits, lambda x: x.sum(1)).dtype == torch.float64


def test_causality_probe_for_unlisted_model_types(tiny_model, monkeypatch) -> None:
    """Unknown model types are classified by whether the last token changes earlier hidden states."""
    import scar.scoring.model as models

    monkeypatch.setattr(models, "_DECODER_MODEL_TYPES", frozenset())
    monkeypatch.setattr(models, "_ENCODER_MODEL_TYPES", frozenset())
    assert inspect_model(tiny_model("gpt2")).is_causal
    assert inspect_model(tiny_model("llama")).is_causal
    assert not inspect_model(tiny_model("bert")).is_causal
    assert not inspect_model(tiny_model("distilbert")).is_causal


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gpt_neox", "opt", "qwen2"])
def test_known_good_decoders_are_accepted(tiny_model, kind: str) -> None:
    ok, reason = trie_exactness(tiny_model(kind))
    assert ok, reason


@pytest.mark.parametrize(
    "kind, overrides, reason",
    [
        # a window longer than the probe that checks it is applied by position
        ("mistral", {"sliding_window": 100_000, "max_position_embeddings": 200_000}, "WINDOW_PROBE_MAX_TOKENS"),
        ("bloom", {}, "ALiBi"),
        ("bert", {}, "encoder"),
        ("distilbert", {}, "encoder"),
    ],
)
def test_refused_models(tiny_model, kind: str, overrides: dict, reason: str) -> None:
    model = tiny_model(kind, **overrides)
    ok, why = trie_exactness(model)
    assert not ok and reason in why
    with pytest.raises(ValueError, match=reason):
        CoalitionScorer(model, backend="trie")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = CoalitionScorer(model, backend="auto")
    assert scorer.backend == "batched"
    # decoders say why they fall back; encoders simply take the batched path
    assert any(reason in str(w.message) for w in caught) == inspect_model(model).is_causal
    values = scorer.score(*ARGS, COALITIONS)
    ref = CoalitionScorer(model, backend="loop").score(*ARGS, COALITIONS)
    torch.testing.assert_close(values, ref, atol=1e-4, rtol=0)


def test_mistral_without_sliding_window_is_served(tiny_model) -> None:
    model = tiny_model("mistral", sliding_window=None)
    assert CoalitionScorer(model).backend == "trie"


def test_probe_catches_a_forward_that_ignores_position_ids(tiny_model) -> None:
    """A decoder whose forward takes position_ids but derives positions from raw indices is refused."""
    model = tiny_model("gpt2", seed=3)
    base_forward = model.transformer.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, **kw):
        return base_forward(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.transformer.forward = forward
    try:
        ok, why = trie_exactness(model)
        assert not ok and "probe" in why
        assert trie_exactness(model, probe=False)[0]  # the structural checks alone cannot see it
        with pytest.warns(UserWarning, match="probe"):
            assert CoalitionScorer(model).backend == "batched"
    finally:
        del model.transformer.forward


def test_forward_without_position_ids_parameter_is_refused(tiny_model) -> None:
    model = tiny_model("gpt2", seed=4)
    base_forward = model.transformer.forward
    model.transformer.forward = lambda input_ids=None, attention_mask=None, **kw: base_forward(
        input_ids=input_ids, attention_mask=attention_mask)
    try:
        ok, why = trie_exactness(model)
        assert not ok and "position_ids" in why
    finally:
        del model.transformer.forward


# ----------------------------------------------------------------------------- evaluation mode


@pytest.mark.parametrize("backend", ["loop", "batched", "trie"])
def test_runs_in_eval_mode_and_restores_training_mode(tiny_model, backend: str) -> None:
    model = tiny_model("gpt2", seed=5, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    scorer = CoalitionScorer(model, backend=backend)
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back exactly as it was
    before = {name: m.training for name, m in model.named_modules()}
    first = scorer.score(*ARGS, COALITIONS)
    second = scorer.score(*ARGS, COALITIONS)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(first, second)  # with dropout 0.5 active these would differ
    assert not first.requires_grad
    model.eval()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([3, 4], [6, 7, 8, 9], [(0, 2), (1, 4)], COALITIONS[:, :2]), ValueError, "overlaps"),
        (([3, 4], [6, 7, 8, 9], [(2, 4), (0, 2)], COALITIONS[:, :2]), ValueError, "out of order"),
        (([3, 4], [6, 7, 8, 9], [(0, 2), (2, 5)], COALITIONS[:, :2]), ValueError, "outside"),
        (([3, 4], [6, 7, 8, 9], [(0, 0), (2, 4)], COALITIONS[:, :2]), ValueError, "empty"),
        (([3, 4], [], [(0, 1)], COALITIONS[:, :1]), ValueError, "response 0: response is empty"),
        (([], [6, 7], [(0, 1)], COALITIONS[:, :1]), ValueError, "response 0: prompt is empty"),
        (([3, 4], [6, 7], [], COALITIONS[:, :0]), ValueError, "no players"),
        (([3, 4], [6, 7, 8, 9], [(0, 2), (2, 4)], COALITIONS.int()), TypeError, "bool"),
        (([3, 4], [6, 7, 8, 9], [(0, 2), (2, 4)], COALITIONS[:, :1]), ValueError, "one column per player"),
        (([3, 4], [6, 7, 8, 900], [(0, 2), (2, 4)], COALITIONS[:, :2]), ValueError, "vocabulary"),
        (([3, 4], [6.0, 7.0], [(0, 2)], COALITIONS[:, :1]), TypeError, "integer"),
        (([3, 4], [6, 7, 8, 9], [(0, 2), "ab"], COALITIONS[:, :2]), TypeError, "player 1"),
    ],
)
def test_bad_input(tiny_model, args, error, match) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    with pytest.raises(error, match=match):
        scorer.score(*args)


def test_sequence_longer_than_position_limit(tiny_model) -> None:
    model = tiny_model("gpt2", n_positions=12)
    scorer = CoalitionScorer(model, backend="trie")
    coalitions = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="position limit of 12"):
        scorer.score([3] * 5, [4] * 8, [(0, 4), (4, 8)], coalitions, [2])  # 5 + 8 + 1 = 14 tokens
    # only the sequences actually scored count: without the second player the longest is 10
    assert scorer.score([3] * 5, [4] * 8, [(0, 4), (4, 8)], coalitions[:1], [2]).shape == (1,)


def test_constructor_errors(tiny_model) -> None:
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="backend"):
        CoalitionScorer(model, backend="fast")
    with pytest.raises(ValueError, match="removal"):
        CoalitionScorer(model, removal="mask")
    with pytest.raises(ValueError, match="max_tokens_per_pass"):
        CoalitionScorer(model, max_tokens_per_pass=0)
    with pytest.raises(ValueError, match="score_fn"):
        CoalitionScorer(tiny_model("gpt2", num_labels=3))
    with pytest.raises(ValueError, match="filler_id"):
        CoalitionScorer(tiny_model("gpt2", pad_token_id=None), removal="replace")
    with pytest.raises(ValueError, match="vocabulary"):
        CoalitionScorer(model, removal="replace", filler_id=1000)
    with pytest.raises(TypeError, match="transformers"):
        CoalitionScorer(torch.nn.Linear(2, 2))


def test_three_labels_with_score_fn_and_no_pad_id(tiny_model) -> None:
    """No pad id is needed to pad batches: padded slots are masked and read-outs are explicit."""
    model = tiny_model("gpt2", num_labels=3, pad_token_id=None)
    fn = lambda logits: logits[:, 2] - logits[:, 0]
    ref = CoalitionScorer(model, backend="loop", score_fn=fn).score(*ARGS, COALITIONS, [2])
    for backend in ("batched", "trie"):
        got = CoalitionScorer(model, backend=backend, score_fn=fn).score(*ARGS, COALITIONS, [2])
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_empty_coalition_batch(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie")
    out = scorer.score(*ARGS, torch.zeros(0, 2, dtype=torch.bool))
    assert out.shape == (0,) and out.dtype == torch.float64
    assert scorer.stats.tokens_computed == 0 and scorer.stats.coalitions == 0


def test_batched_budget_smaller_than_a_sequence(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="batched", max_tokens_per_pass=5)
    with pytest.raises(ValueError, match="cannot split"):
        scorer.score(*ARGS, COALITIONS)


def test_trie_budget_smaller_than_one_chain(tiny_model) -> None:
    scorer = CoalitionScorer(tiny_model("gpt2"), backend="trie", max_tokens_per_pass=3)
    with pytest.raises(ValueError, match="max_tokens"):
        scorer.score(*ARGS, COALITIONS)


def test_flash_attention_is_refused(tiny_model, monkeypatch) -> None:
    model = tiny_model("llama", seed=6)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2", raising=False)
    ok, why = trie_exactness(model, probe=False)
    assert not ok and "flash_attention_2" in why


def test_attention_path_selection(tiny_model, monkeypatch) -> None:
    from scar_kernels import extension

    model = tiny_model("gpt2")
    assert CoalitionScorer(model, backend="trie").attention == ("kernel" if extension.has_extension() else "mask")
    assert CoalitionScorer(model, backend="batched").attention == "none"
    with pytest.raises(ValueError, match="unknown attention"):
        CoalitionScorer(model, attention="flash")
    assert CoalitionScorer(model, backend="batched").max_tokens_per_pass == 8192
    assert CoalitionScorer(model, backend="trie", attention="mask").max_tokens_per_pass == 1024
    wide = CoalitionScorer(model, backend="trie", attention="mask", max_tokens_per_pass=4096)
    assert wide.max_tokens_per_pass == 4096
    flex_scorer = CoalitionScorer(model, backend="trie", attention="flex")
    assert flex_scorer.attention == "flex" and flex_scorer.max_tokens_per_pass == 8192
    assert CoalitionScorer(model, backend="batched", attention="flex").attention == "none"
    monkeypatch.setattr(extension, "load", lambda: None)
    assert CoalitionScorer(model, backend="trie").attention == "mask"  # auto does not measure flex on CPU
    with pytest.raises(ValueError, match="compiled kernels"):
        CoalitionScorer(model, backend="trie", attention="kernel")
    assert CoalitionScorer(model, backend="trie", attention="flex").attention == "flex"  # needs no extension
    import scar_kernels.flex as flex

    monkeypatch.setattr(flex, "_flex_module", lambda: None)
    with pytest.raises(ValueError, match=r"attention='flex' is not available: .*flex_attention"):
        CoalitionScorer(model, backend="trie", attention="flex")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_auto_attention_follows_the_measurement(tiny_model, monkeypatch, eager_flex, kind: str) -> None:
    """Where auto measures (CUDA; forced on CPU here), the scorer runs what the measurement chose, exactly."""
    import functools

    import scar.scoring.scorer as scorer_module
    from scar_kernels import extension, ops, selection

    if not extension.has_extension():
        pytest.skip("the C++ extension is not built")
    model = tiny_model(kind)
    monkeypatch.setitem(selection.MEASURE_BY_DEVICE, "cpu", True)
    monkeypatch.setattr(ops, "permutation_pack", functools.partial(ops.permutation_pack, 6, 2, response=12))
    monkeypatch.setattr(ops, "_CHOICES", {})
    measured = CoalitionScorer(model, backend="trie")
    heads, kv_heads = (4, 4) if kind == "gpt2" else (4, 2)
    choice = ops.fastest_tree_attention("cpu", torch.float32, heads, kv_heads, 8)  # the scorer's, cached
    assert measured.attention == choice.choice and choice.flex_ms is not None
    reference = CoalitionScorer(model, backend="loop").score(*ARGS, COALITIONS)
    for winner in selection.CANDIDATES:
        forced = selection.AttentionChoice(winner, "cpu", 1, 0, 1.0, 1.0)
        monkeypatch.setattr(scorer_module, "fastest_tree_attention", lambda *args, forced=forced: forced)
        scorer = CoalitionScorer(model, backend="trie")
        assert scorer.attention == winner
        torch.testing.assert_close(scorer.score(*ARGS, COALITIONS), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["olmo", "starcoder2"])
def test_probe_classified_decoders_score_exactly_on_every_trie_path(
    tiny_model, trie_attentions, eager_flex, kind: str
) -> None:
    """A decoder type the scorer does not know is classified by a probe forward; building the packed view must
    not run that probe through the tree attention (which needs a pack), and every path must equal deletion."""
    from scar.scoring.model import _DECODER_MODEL_TYPES

    model = tiny_model(kind)
    assert model.config.model_type not in _DECODER_MODEL_TYPES and inspect_model(model).is_causal
    reference = CoalitionScorer(model, backend="loop").score(*ARGS, COALITIONS)
    for attention in trie_attentions(model):
        scorer = CoalitionScorer(model, backend="trie", attention=attention)
        torch.testing.assert_close(scorer.score(*ARGS, COALITIONS), reference, rtol=1e-5, atol=1e-5)


def test_attention_layout_reads_the_config(tiny_model) -> None:
    from scar.scoring.model import attention_layout

    assert attention_layout(tiny_model("gpt2")) == (4, 4, 8)
    assert attention_layout(tiny_model("llama")) == (4, 2, 8)  # grouped-query attention
    model = tiny_model("gpt2")
    config = model.config
    original = config.num_attention_heads
    try:
        config.n_head = 5  # 32 wide, 5 heads: no integer head dim
        assert attention_layout(model) is None
    finally:
        config.n_head = original
