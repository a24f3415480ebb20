"""The "scar_tree" transformers attention: a packed trie equals scoring each deleted sequence alone."""
import pytest
import torch
from transformers import (
    AttentionInterface,
    DynamicCache,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPTNeoXConfig,
    GPTNeoXForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

import scar.scoring.attention as scar_tf
from scar.scoring.attention import ATTENTION_NAME, packed_forward, scar_tree_attention
from scar.scoring.model import cache_keyword
from scar_kernels.layout import build_pack_reference
from scar_kernels.tree_attention import tree_attention_reference

VOCAB = 100
PAD = 0  # no packed token uses it, so the classifiers read out the last token


def make_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_labels=1, pad_token_id=PAD)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1, **common)
        model = GPT2ForSequenceClassification(cfg)
    elif arch == "llama":  # grouped-query attention: 4 query heads share 2 kv heads
        cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=128, max_position_embeddings=64, **common)
        model = LlamaForSequenceClassification(cfg)
    else:
        cfg = GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                            max_position_embeddings=64, **common)
        model = GPTNeoXForSequenceClassification(cfg)
    return model.eval()


# Responses: (prompt, segments with owners (-1 = always-kept gap), suffix, coalitions).
RESPONSES = [
    ([5, 6, 7, 8], [([10, 11], 0), ([12], -1), ([13, 14, 15], 1), ([16], 2)], [99],
     [[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1]]),
    ([20, 21, 22], [([30], 0), ([31, 32], 1)], [],
     [[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]),
]


def build(responses, cached_len):
    """Pack the responses with the reference builder; return (packed ids, layout, deleted sequences)."""
    coal_rows, owner, seg_offsets, seg_player, seg_len, src, sequences = [], [], [0], [], [], [], []
    for r, (prompt, segs, suffix, coals) in enumerate(responses):
        src += prompt + [t for s, _ in segs for t in s] + suffix
        seg_player += [p for _, p in segs]
        seg_len += [len(s) for s, _ in segs]
        seg_offsets.append(len(seg_len))
        for row in coals:
            coal_rows.append(row)
            owner.append(r)
            kept = [t for s, p in segs if p < 0 or row[p] for t in s]
            sequences.append(prompt + kept + suffix)
    layout = build_pack_reference(
        torch.tensor(coal_rows, dtype=torch.bool), torch.tensor(owner), torch.tensor(seg_offsets),
        torch.tensor(seg_player), torch.tensor(seg_len),
        torch.tensor([len(p) for p, *_ in responses]), torch.tensor([len(s) for _, _, s, _ in responses]),
        torch.tensor(cached_len),
    )
    return torch.tensor(src)[layout.gather], layout, sequences


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("cached", [0, 2])
@pytest.mark.parametrize("attention", ["kernel", "flex"])
def test_packed_trie_equals_deleted_sequences(arch, cached, attention, monkeypatch, eager_flex):
    model = make_model(arch)
    base = model.base_model
    responses = RESPONSES if cached == 0 else RESPONSES[:1]  # a cached prompt belongs to one response
    ids, layout, sequences = build(responses, [cached] * len(responses))
    assert ids.shape[0] < sum(len(s) for s in sequences)  # the trie shares prefixes
    cache = None
    if cached:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            base(input_ids=torch.tensor([responses[0][0][:cached]]), use_cache=True, **{cache_keyword(base): cache})
    calls = []

    def counting_op(*args, **kwargs):
        calls.append(args[3].shape[0])
        return real_op(*args, **kwargs)

    op_name = "_tree_attention_op" if attention == "kernel" else "_flex_attention_op"
    real_op = getattr(scar_tf, op_name)
    monkeypatch.setattr(scar_tf, op_name, counting_op)
    before = model.config._attn_implementation
    with torch.no_grad():
        hidden = packed_forward(base, ids, layout.position_ids, layout.horizon, past_key_values=cache,
                                attention=attention)
        packed_scores = model.score(hidden[0, layout.readout]).squeeze(-1)
        for c, seq in enumerate(sequences):
            alone = base(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[0, layout.readout[c]], alone, atol=1e-4, rtol=0)
            score = model(input_ids=torch.tensor([seq])).logits[0, 0]
            torch.testing.assert_close(packed_scores[c], score, atol=1e-4, rtol=0)
    assert calls == [ids.shape[0]] * model.config.num_hidden_layers  # every layer went through scar_tree
    assert model.config._attn_implementation == before
    if cache is not None:
        assert cache.get_seq_length() == cached  # the prompt cache is read, never extended


@pytest.mark.parametrize("attention", ["kernel", "flex"])
def test_output_layout_serves_modules_that_view_it(tiny_model, attention, eager_flex):
    """JetMoE's attention ``.view()``s the attention output, which must then be contiguous, as transformers'
    own attention functions return it."""
    model = tiny_model("jetmoe")
    base = model.base_model
    ids, layout, sequences = build(RESPONSES, [0] * len(RESPONSES))
    with torch.no_grad():
        hidden = packed_forward(base, ids, layout.position_ids, layout.horizon, attention=attention)
        for c, seq in enumerate(sequences):
            alone = base(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[0, layout.readout[c]], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ["kernel", "flex"])
def test_attention_sinks_join_the_packed_softmax(tiny_model, attention, eager_flex):
    """gpt-oss passes its per-head ``sinks`` as ``s_aux``: the packed trie equals each deleted sequence alone, and
    the same pack without the sinks does not."""
    model = tiny_model("gpt_oss", seed=3)
    sinks = [m.sinks for m in model.modules() if isinstance(getattr(m, "sinks", None), torch.nn.Parameter)]
    assert len(sinks) == model.config.num_hidden_layers
    base = model.base_model
    ids, layout, sequences = build(RESPONSES, [0] * len(RESPONSES))
    with torch.no_grad():
        for s in sinks:
            s.normal_(0.0, 2.0)
        hidden = packed_forward(base, ids, layout.position_ids, layout.horizon, attention=attention)
        for c, seq in enumerate(sequences):
            alone = base(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[0, layout.readout[c]], alone, atol=1e-4, rtol=0)
        for s in sinks:
            s.fill_(-float("inf"))  # no sink
        without = packed_forward(base, ids, layout.position_ids, layout.horizon, attention=attention)
    assert float((without - hidden).abs().max()) > 1e-2


def test_attention_sinks_per_head_or_per_query():
    """``s_aux [H]`` and ``sinks [1, H, N, 1]`` reach the kernel as one logit per head or per head and query; any
    other shape, or both at once, is refused."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 9, 8, generator=gen), torch.randn(1, 2, 9, 8, generator=gen), torch.randn(
        1, 2, 9, 8, generator=gen)
    horizon = torch.tensor([9, 3, 3, 9, 6, 6, 9, 8, 9], dtype=torch.int32)
    module = torch.nn.Module()
    plain = tree_attention_reference(q[0], k[0], v[0], horizon, 0.3)
    for name, sinks in (("s_aux", torch.randn(4, generator=gen)), ("sinks", torch.randn(1, 4, 9, 1, generator=gen))):
        out, _ = scar_tree_attention(module, q, k, v, None, 0.3, scar_horizon=horizon, **{name: sinks})
        want = tree_attention_reference(q[0], k[0], v[0], horizon, 0.3, sinks=sinks.reshape(4, -1).expand(4, 9))
        torch.testing.assert_close(out[0].transpose(0, 1), want, rtol=0, atol=1e-6)
        assert float((want - plain).abs().max()) > 1e-2
    with pytest.raises(ValueError, match="attention sinks of shape"):
        scar_tree_attention(module, q, k, v, None, 0.3, scar_horizon=horizon, sinks=torch.zeros(1, 4, 9))
    with pytest.raises(ValueError, match="both s_aux and sinks"):
        scar_tree_attention(module, q, k, v, None, 0.3, scar_horizon=horizon, s_aux=torch.zeros(4),
                            sinks=torch.zeros(1, 4, 9, 1))


@pytest.mark.parametrize("attention", ["kernel", "flex"])
def test_wrong_horizon_changes_the_result(attention, eager_flex):
    # Guards against a silent fallback to plain causal attention over the pack.
    model = make_model("llama")
    ids, layout, _ = build(RESPONSES, [0, 0])
    with torch.no_grad():
        tree = packed_forward(model.base_model, ids, layout.position_ids, layout.horizon, attention=attention)
        causal = packed_forward(model.base_model, ids, layout.position_ids,
                                torch.full_like(layout.horizon, ids.shape[0]), attention=attention)
    assert not torch.allclose(tree, causal, atol=1e-3)


def test_unknown_packed_attention_is_refused():
    model = make_model("gpt2")
    ids, layout, _ = build(RESPONSES, [0, 0])
    with pytest.raises(ValueError, match="attention must be one of"):
        packed_forward(model.base_model, ids, layout.position_ids, layout.horizon, attention="mask")


def test_registered_and_restored_after_errors():
    assert AttentionInterface().get_interface(ATTENTION_NAME, None) is scar_tree_attention
    model = make_model("gpt2")
    ids, layout, _ = build(RESPONSES, [0, 0])
    bad = layout.horizon.clone()
    bad[-1] = ids.shape[0] - 1  # horizon[k] <= k
    with torch.no_grad(), pytest.raises(ValueError, match="horizon"):
        packed_forward(model.base_model, ids, layout.position_ids, bad)
    assert model.config._attn_implementation != ATTENTION_NAME


def test_missing_horizon_and_bad_shapes():
    model = make_model("gpt2")
    base = model.base_model
    ids, layout, _ = build(RESPONSES, [0, 0])
    bad = layout.horizon.clone()
    bad[-1] = ids.shape[0] - 1
    with torch.no_grad():
        packed_forward(base, ids, layout.position_ids, layout.horizon)
        with pytest.raises(ValueError, match="horizon"):
            packed_forward(base, ids, layout.position_ids, bad)
    # neither packed forward, the one that ran nor the one that failed, leaves its pack to later forwards
    base.set_attn_implementation(ATTENTION_NAME)
    with torch.no_grad(), pytest.raises(ValueError, match="scar_horizon"):
        base(input_ids=ids.unsqueeze(0), position_ids=layout.position_ids.unsqueeze(0))
    base.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="position_ids shape"):
        packed_forward(base, ids, layout.position_ids[:-1], layout.horizon)
    with pytest.raises(ValueError, match="horizon must be a 1-D tensor"):
        packed_forward(base, ids, layout.position_ids, layout.horizon[:-1])
    with pytest.raises(ValueError, match=r"input_ids must be \[N\] or \[1, N\]"):
        packed_forward(base, ids.expand(2, -1), layout.position_ids.expand(2, -1), layout.horizon)
