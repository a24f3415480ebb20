"""Shared fixtures: tiny random-weight `transformers` reward models built from configs (no downloads)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from transformers.utils import logging as hf_logging

# Tests run tiny models: intra-op threads only add overhead there (several times slower on a shared
# 2-core machine), so the test session uses one.
torch.set_num_threads(1)

VOCAB = 100
PAD = 0  # every tiny config uses pad id 0; random test tokens are drawn from 1..VOCAB-1


_COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
_DECODER = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                max_position_embeddings=256, **_COMMON)
_CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=32, n_head=4, n_positions=256, **_COMMON)),
    # grouped-query attention: 2 KV heads for 4 query heads
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, **_DECODER)),
    # partial rotary: a quarter of each head's dims rotate
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.25, **_DECODER)),
    "opt": ("OPTConfig", dict(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                              word_embed_proj_dim=32, max_position_embeddings=256, **_COMMON)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, **_DECODER)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, **_DECODER)),
    "phi": ("PhiConfig", dict(**_DECODER)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2, **_DECODER)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=2, head_dim=8, **_DECODER)),
    # sliding-window layers alternating with full ones (Gemma 2 also soft-caps its attention logits)
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=8, sliding_window=32, **_DECODER)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_key_value_heads=2, head_dim=8, sliding_window=32, **_DECODER)),
    # attention sinks, sliding-window layers alternating with full ones, mixture of experts
    "gpt_oss": ("GptOssConfig", dict(num_key_value_heads=2, head_dim=8, sliding_window=32, num_local_experts=2,
                                     num_experts_per_tok=1, **_DECODER)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=8, **_DECODER)),
    "gptj": ("GPTJConfig", dict(n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=256, **_COMMON)),
    # decoders outside the scorer's list of known model types: classified by its causality probe
    "olmo": ("OlmoConfig", dict(**_DECODER)),
    "olmo2": ("Olmo2Config", dict(**_DECODER)),
    "starcoder2": ("Starcoder2Config", dict(num_key_value_heads=2, **_DECODER)),
    "mixtral": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, **_DECODER)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(n_layer=2, n_embd=32, n_head=4, n_positions=256, multi_query=True,
                                             **_COMMON)),
    "smollm3": ("SmolLM3Config", dict(num_key_value_heads=2, **_DECODER)),
    "glm": ("GlmConfig", dict(num_key_value_heads=2, head_dim=8, **_DECODER)),
    "stablelm": ("StableLmConfig", dict(num_key_value_heads=2, partial_rotary_factor=0.25, **_DECODER)),
    "persimmon": ("PersimmonConfig", dict(**_DECODER)),
    "helium": ("HeliumConfig", dict(num_key_value_heads=2, head_dim=8, **_DECODER)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=32, **_DECODER)),
    # multi-head latent attention: low-rank keys/values, a decoupled rotary part
    "deepseek_v3": ("DeepseekV3Config", dict(num_key_value_heads=4, head_dim=4, kv_lora_rank=16, q_lora_rank=16,
                                             qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                                             n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                                             n_group=1, topk_group=1, moe_intermediate_size=32, **_DECODER)),
    "bloom": ("BloomConfig", dict(n_layer=2, hidden_size=32, n_head=4, **_COMMON)),
    "distilbert": ("DistilBertConfig", dict(n_layers=2, dim=32, hidden_dim=64, n_heads=4,
                                            max_position_embeddings=256, vocab_size=VOCAB, pad_token_id=PAD)),
    "bert": ("BertConfig", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                max_position_embeddings=256, vocab_size=VOCAB, pad_token_id=PAD)),
    # models that break an assumption of the fast paths (tests/scoring/test_unusual_models.py)
    "yoso": ("YosoConfig", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                max_position_embeddings=256, **_COMMON)),
    "fnet": ("FNetConfig", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                max_position_embeddings=256, **_COMMON)),
    "xlnet": ("XLNetConfig", dict(d_model=32, n_layer=2, n_head=4, d_inner=64, **_COMMON)),
    "nemotron": ("NemotronConfig", dict(num_key_value_heads=2, head_dim=8, **_DECODER)),
    "jetmoe": ("JetMoeConfig", dict(num_hidden_layers=2, hidden_size=32, num_key_value_heads=2, kv_channels=8,
                                    intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                                    max_position_embeddings=256, **_COMMON)),
    "openai-gpt": ("OpenAIGPTConfig", dict(n_layer=2, n_embd=32, n_head=4, n_positions=256, **_COMMON)),
    "mt5": ("MT5Config", dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                              decoder_start_token_id=PAD, **_COMMON)),
}


def _config(kind: str, **overrides):
    import transformers as tf

    if kind not in _CONFIGS:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    name, kwargs = _CONFIGS[kind]
    if not hasattr(tf, name):
        pytest.skip(f"transformers {tf.__version__} has no {name}")
    return getattr(tf, name)(**{**kwargs, **overrides})


@pytest.fixture(scope="session")
def trie_attentions() -> Callable[[torch.nn.Module], list[str]]:
    """``trie_attentions(model)``: the trie's attention paths ``model`` can run: the mask always; the kernel and
    FlexAttention where its base model supports transformers' attention registry (which differs between
    transformers versions; the others refuse those two with a clear error)."""
    from scar.scoring.model import inspect_model

    def paths(model: torch.nn.Module) -> list[str]:
        registry = getattr(inspect_model(model).base, "_supports_attention_backend", False)
        return ["mask", "kernel", "flex"] if registry else ["mask"]

    return paths


def build_tiny_model(kind: str, *, num_labels: int = 1, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random `*ForSequenceClassification` model of the given architecture, in eval mode."""
    import transformers as tf

    cfg = _config(kind, **overrides)
    cfg.num_labels = num_labels
    torch.manual_seed(seed)
    try:
        model = tf.AutoModelForSequenceClassification.from_config(cfg)
    except ValueError as err:  # "Unrecognized configuration class ... for this kind of AutoModel"
        if "Unrecognized configuration class" not in str(err):
            raise
        pytest.skip(f"transformers {tf.__version__} has no {type(cfg).__name__[:-6]} sequence-classification model")
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Factory ``tiny_model(kind, num_labels=1, seed=0, **config_overrides)``, cached per arguments."""
    cache: dict[tuple, torch.nn.Module] = {}
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    def make(kind: str, *, num_labels: int = 1, seed: int = 0, **overrides) -> torch.nn.Module:
        key = (kind, num_labels, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_tiny_model(kind, num_labels=num_labels, seed=seed, **overrides)
        return cache[key]

    return make


@pytest.fixture
def eager_flex(monkeypatch):
    """Run FlexAttention (``attention="flex"``) eager on CPU during the test: compiling takes seconds per shape
    family, and the compiled path has its own test (``tests/kernels/test_flex.py``)."""
    import scar_kernels.flex as flex

    monkeypatch.setitem(flex.COMPILE_BY_DEVICE, "cpu", False)
