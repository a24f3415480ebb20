"""Inspection of a ``transformers`` ``*ForSequenceClassification`` reward model.

What scoring needs to know about a reward model: is it a causal decoder or a bidirectional encoder,
where are its base model and score head, at which token and how is its scalar score read out, how long
may a sequence be, and can the packed trie score it exactly (deleting tokens equals masking them as keys
and compacting position ids; ``docs/design.md``).
"""

from __future__ import annotations

import inspect
import os
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scar_kernels.ops import dense_mask

__all__ = [
    "RewardModelInfo",
    "attention_layout",
    "base_model",
    "cache_keyword",
    "inspect_model",
    "trie_exactness",
    "probe_ids",
    "probe_error",
    "error_summary",
    "evaluation_mode",
    "model_dtype",
    "model_device",
    "readout_index",
]

# Model types whose forward builds ALiBi biases from raw indices (not from position_ids).
_ALIBI_MODEL_TYPES = frozenset({"bloom", "mpt"})
# Well-known bidirectional encoders; anything else is classified by a probe (see _probe_is_causal).
_ENCODER_MODEL_TYPES = frozenset(
    {
        "bert",
        "distilbert",
        "roberta",
        "xlm-roberta",
        "deberta",
        "deberta-v2",
        "electra",
        "albert",
        "camembert",
        "mpnet",
        "modernbert",
        "xlm-roberta-xl",
        "roberta-prelayernorm",
        "nomic_bert",
    }
)
_DECODER_MODEL_TYPES = frozenset(
    {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gptj", "opt", "gemma", "phi", "phi3"}
)
# RoPE variants whose frequencies depend on the sequence length: a pack's length differs from each
# coalition's own length, so the rotation would differ.
_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})

WINDOW_PROBE_MAX_TOKENS = 8192
"""Longest pack the sliding-window probe of :func:`trie_exactness` runs (its dense mask is this squared); a
model whose window needs a longer probe is not served by the trie."""

WINDOW_PROBE_SLACK = 8  # the probe's prompt and query tokens beyond the window

_WINDOW_PROBES: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class RewardModelInfo:
    """What the scorer needs to know about a sequence-classification reward model.

    Attributes:
        model_type: ``config.model_type``.
        is_causal: True for a causal decoder, False for a bidirectional encoder.
        base: the base (headless) model, e.g. ``model.transformer`` for GPT-2.
        head: the score head applied to the read-out hidden state (decoders; None if not found).
        num_labels: number of output logits.
        max_positions: the position limit (``max_position_embeddings`` / ``n_positions``), or None.
        pad_token_id, eos_token_id, mask_token_id: special token ids from the config (or None).
        vocab_size: vocabulary size from the config (or None).
        is_classifier: True for a ``*ForSequenceClassification`` model, whose logits are ``[B, num_labels]``;
            any other model is scored only through a user ``score_fn``.
        attention_window: the sliding window (in tokens) of the model's windowed attention layers, or None
            when no layer is windowed. A sequence shorter than the window is not affected by it.
    """

    model_type: str
    is_causal: bool
    base: nn.Module
    head: nn.Module | None
    num_labels: int
    max_positions: int | None
    pad_token_id: int | None
    eos_token_id: int | None
    mask_token_id: int | None
    vocab_size: int | None
    is_classifier: bool = True
    attention_window: int | None = None

    def score(self, logits: torch.Tensor, score_fn: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """Scalar score per row of ``logits [B, num_labels]``: the single logit, ``logit[1]-logit[0]`` for
        two labels, else ``score_fn(logits)``; returned as float64 ``[B]``."""
        if score_fn is not None:
            out = torch.as_tensor(score_fn(logits))
            if out.shape != (logits.shape[0],):
                raise ValueError(
                    f"score_fn must map logits {tuple(logits.shape)} to shape ({logits.shape[0]},), "
                    f"got {tuple(out.shape)}"
                )
        elif logits.dim() != 2 or logits.shape[1] != self.num_labels:
            raise ValueError(
                f"the reward model returned logits of shape {tuple(logits.shape)}, not [batch, {self.num_labels}]: "
                "it is not a sequence classifier; pass score_fn to say how to read a score"
            )
        elif self.num_labels == 1:
            out = logits[:, 0]
        elif self.num_labels == 2:
            out = logits[:, 1] - logits[:, 0]
        else:
            raise ValueError(f"model has {self.num_labels} labels: pass score_fn to turn logits into a score")
        return out.to(torch.float64)

    def readout_index(self, ids: Sequence[int] | torch.Tensor) -> int:
        """Where the classifier reads its score on one unpadded sequence (see :func:`readout_index`)."""
        return readout_index(ids, self.pad_token_id if self.is_causal else None, causal=self.is_causal)


def readout_index(ids: Sequence[int] | torch.Tensor, pad_token_id: int | None, *, causal: bool = True) -> int:
    """The read-out token of a sequence-classification model on one unpadded sequence, as transformers
    picks it: for a decoder the last token, or when the config has a pad id, the rightmost token that is
    not the pad id (0 if all are); for an encoder the first token."""
    if not causal:
        return 0
    seq = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if pad_token_id is not None:
        for k in range(len(seq) - 1, -1, -1):
            if seq[k] != pad_token_id:
                return k
        return 0
    return len(seq) - 1


def _text_config(model: nn.Module) -> Any:
    config: Any = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _first_int(value: object) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's parameters (float32 when it has none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU when it has none)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def attention_layout(model: nn.Module) -> tuple[int, int, int] | None:
    """``(query heads, key/value heads, head dim)`` from the model's config, or None where it does not say.

    Reads transformers' common names (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
    ``hidden_size``); a config without key/value heads has as many as query heads.
    """
    config = _text_config(model)
    heads = _first_int(getattr(config, "num_attention_heads", None))
    if not heads or heads < 1:
        return None
    kv_heads = _first_int(getattr(config, "num_key_value_heads", None)) or heads
    head_dim = _first_int(getattr(config, "head_dim", None))
    if head_dim is None:
        hidden = _first_int(getattr(config, "hidden_size", None))
        head_dim = hidden // heads if hidden and hidden % heads == 0 else None
    if not head_dim or kv_heads < 1 or heads % kv_heads:
        return None
    return heads, kv_heads, head_dim


class evaluation_mode:
    """Context manager: ``eval()`` and ``torch.no_grad()`` inside, each module's training flag restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._flags: list[tuple[nn.Module, bool]] = []
        self._grad = torch.no_grad()

    def __enter__(self) -> nn.Module:
        self._flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self._grad.__enter__()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self._grad.__exit__(*exc)
        for m, flag in self._flags:
            m.training = flag


def cache_keyword(base: nn.Module) -> str:
    """The keyword under which ``base.forward`` takes a KV cache.

    transformers renamed ``past_key_values`` to ``cache`` in 5.24 (``past_key_values`` is still accepted there
    with a deprecation warning, and goes in 5.40). Before 5.24 an unknown ``cache=`` is swallowed by the
    forward's ``**kwargs``: the model then fills a cache of its own and the caller's stays empty.
    """
    # The forward itself, then the forwards it may wrap (a subclass's ``forward(*args, **kwargs)``).
    for forward in (base.forward, *(vars(k)["forward"] for k in type(base).__mro__ if "forward" in vars(k))):
        params = inspect.signature(forward).parameters
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
    raise TypeError(f"{type(base).__name__}.forward takes no KV cache (neither `cache` nor `past_key_values`)")


def base_model(model: nn.Module) -> nn.Module:
    """The base model under a ``*ForSequenceClassification`` head (``model.model``, ``model.transformer``, ...).

    Raises:
        ValueError: ``model`` names no base model (``base_model_prefix``).
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module):
        raise ValueError(f"cannot find the base model of {type(model).__name__} (base_model_prefix={prefix!r})")
    return base


def probe_ids(vocab: int | None, n: int, avoid: set[int]) -> list[int]:
    """``n`` deterministic, mostly distinct token ids below ``vocab`` avoiding ``avoid`` (e.g. the pad id), for
    the probes that check a fast path against plain scoring."""
    candidates = [i for i in range(vocab or 2) if i not in avoid] or [0]
    return [candidates[(7 * k + 1) % len(candidates)] for k in range(n)]


def _probe_is_causal(model: nn.Module, base: nn.Module, vocab: int | None) -> bool:
    """Causal iff changing the last token leaves the earlier hidden states unchanged."""
    ids = probe_ids(vocab, 4, set())
    other = ids[:-1] + [ids[0] if ids[-1] != ids[0] else ids[1]]
    device = model_device(model)
    with evaluation_mode(model):
        a = base(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0, :-1].float()
        b = base(input_ids=torch.tensor([other], device=device)).last_hidden_state[0, :-1].float()
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


def inspect_model(model: nn.Module) -> RewardModelInfo:
    """Inspect a ``*ForSequenceClassification`` model (see :class:`RewardModelInfo`).

    Raises:
        TypeError: ``model`` is not a ``transformers`` model with a config.
        ValueError: its base model cannot be found, or its weights are on the meta device.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"expected a transformers *ForSequenceClassification model, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} has parameters on the meta device (no weights loaded): load the model's "
            "weights (or move it to a real device) before scoring with it"
        )
    config = _text_config(model)
    model_type = str(getattr(config, "model_type", ""))
    base = base_model(model)
    vocab = _first_int(getattr(config, "vocab_size", None))
    if model_type in _ENCODER_MODEL_TYPES:
        is_causal = False
    elif model_type in _DECODER_MODEL_TYPES:
        is_causal = True
    else:
        try:
            is_causal = _probe_is_causal(model, base, vocab)
        except Exception:  # a base whose forward needs more than input_ids (encoder-decoder, Perceiver, ...)
            is_causal = False  # not a prefix-sharing decoder: scored whole, never on the trie
    head = getattr(model, "score", None) if is_causal else None
    max_positions = None
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        max_positions = _first_int(getattr(config, name, None))
        if max_positions is not None:
            break
    if max_positions is not None and max_positions <= 0:  # e.g. XLNet's -1: relative positions, no limit
        max_positions = None
    return RewardModelInfo(
        model_type=model_type,
        is_causal=is_causal,
        base=base,
        head=head if isinstance(head, nn.Module) else None,
        num_labels=int(getattr(model, "num_labels", getattr(config, "num_labels", 1))),
        max_positions=max_positions,
        pad_token_id=_first_int(getattr(config, "pad_token_id", None)),
        eos_token_id=_first_int(getattr(config, "eos_token_id", None)),
        mask_token_id=_first_int(getattr(config, "mask_token_id", None)),
        vocab_size=vocab,
        is_classifier=type(model).__name__.endswith("ForSequenceClassification"),
        attention_window=_attention_window(config),
    )


def _attention_window(config: Any) -> int | None:
    """The sliding window the config applies to some layer (None: no windowed layer, or a window that is not
    one positive int, which :func:`trie_exactness` refuses)."""
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and not any("sliding" in str(t) for t in layer_types):
        return None
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def _structural_refusal(model: nn.Module, info: RewardModelInfo) -> str | None:
    config = _text_config(model)
    if not info.is_causal:
        return f"{info.model_type or type(model).__name__} is a bidirectional encoder: coalitions share no prefix"
    if info.head is None:
        return f"{type(model).__name__} has no `score` head to apply at the read-out rows"
    attn_impl = str(getattr(model.config, "_attn_implementation", None) or "")
    if "flash" in attn_impl:
        return (
            f"attn_implementation={attn_impl!r} takes no arbitrary 4D mask; load the model with "
            f"attn_implementation='sdpa' or 'eager' for the trie"
        )
    window = getattr(config, "sliding_window", None)
    malformed = not isinstance(window, int) or isinstance(window, bool) or window <= 0
    if window is not None and getattr(config, "use_sliding_window", True) and malformed:
        return f"sliding_window={window!r} is not one window size in tokens"
    if info.attention_window is not None and info.attention_window <= WINDOW_PROBE_SLACK:
        return (
            f"sliding_window={info.attention_window} is no longer than the probe's own sequence "
            f"({WINDOW_PROBE_SLACK} tokens) that checks the window is applied by position"
        )
    if info.attention_window is not None and info.attention_window + WINDOW_PROBE_SLACK > WINDOW_PROBE_MAX_TOKENS:
        return (
            f"sliding-window attention (sliding_window={info.attention_window}) is longer than the probe that "
            f"checks it is applied by position (WINDOW_PROBE_MAX_TOKENS={WINDOW_PROBE_MAX_TOKENS})"
        )
    layer_types = getattr(config, "layer_types", None) or []
    if any("chunked" in str(t) for t in layer_types):
        return f"layer_types contain chunked attention layers ({sorted(set(map(str, layer_types)))})"
    if any("local" in str(t) for t in getattr(config, "attention_layers", None) or []):
        return "local (windowed) attention layers"
    attn_config = getattr(config, "attn_config", None)
    attn_alibi = attn_config.get("alibi") if isinstance(attn_config, dict) else getattr(attn_config, "alibi", False)
    if info.model_type in _ALIBI_MODEL_TYPES or getattr(config, "alibi", False) or attn_alibi:
        return f"ALiBi attention bias ({info.model_type}) is computed from raw indices, not position_ids"
    if getattr(config, "position_embedding_type", None) == "alibi":
        return "ALiBi position embeddings are computed from raw indices, not position_ids"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if rope_type in _LENGTH_DEPENDENT_ROPE:
        return f"rope_type={rope_type!r} depends on the sequence length, which differs in a pack"
    if "position_ids" not in inspect.signature(info.base.forward).parameters:
        return f"{type(info.base).__name__}.forward takes no position_ids"
    return None


def _packed_states(
    model: nn.Module, info: RewardModelInfo, ids: list[int], position: list[int], horizon: list[int]
) -> torch.Tensor:
    """Last hidden states ``[N, hidden]`` of one packed forward with the trie's dense mask of ``horizon``."""
    device, dtype = model_device(model), model_dtype(model)
    mask = dense_mask(torch.tensor(horizon, dtype=torch.int32, device=device), dtype=dtype)[None, None]
    with evaluation_mode(model):
        return info.base(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=mask,
            position_ids=torch.tensor([position], device=device),
            use_cache=False,
        ).last_hidden_state[0]


def _plain_states(model: nn.Module, info: RewardModelInfo, ids: list[int]) -> torch.Tensor:
    """Last hidden states ``[len(ids), hidden]`` of the sequence ``ids`` run on its own."""
    with evaluation_mode(model):
        return info.base(input_ids=torch.tensor([ids], device=model_device(model)), use_cache=False).last_hidden_state[
            0
        ]


def probe_error(model: nn.Module, got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The largest difference of a probe's outputs from their reference when it exceeds rounding in the model's
    dtype (relative to ``1 + max |want|``); None when it does not."""
    dtype = model_dtype(model)
    tol = 1e-3 if dtype == torch.float32 or dtype == torch.float64 else 5e-2
    err = float((got.float() - want.float()).abs().max())
    return None if err <= tol * (1.0 + float(want.float().abs().max())) else err


def _probe_packed_equals_deleted(model: nn.Module, info: RewardModelInfo) -> str | None:
    """Check the packing identity on a 6-token probe: a packed forward with a gap equals the deleted sequence."""
    avoid = {t for t in (info.pad_token_id,) if t is not None}
    ids = probe_ids(info.vocab_size, 6, avoid)
    kept = [ids[k] for k in (0, 1, 4, 5)]
    # Two coalitions in one pack: the full sequence (a chain) and a branch that skips tokens 2-3.
    # Packed order: [0 1 2 3 4 5 | 4' 5'], horizon: tokens 0,1 see everything; 2..5 end at 6; 4',5' at 8.
    packed = _packed_states(model, info, ids + [ids[4], ids[5]], [0, 1, 2, 3, 4, 5, 2, 3], [8, 8, 6, 6, 6, 6, 8, 8])
    full, deleted = _plain_states(model, info, ids), _plain_states(model, info, kept)
    for name, got, want in (("kept", packed[:6], full), ("deleted", packed[6:], deleted[2:])):
        err = probe_error(model, got, want)
        if err is not None:
            return (
                f"probe: the packed forward differs from the {name} sequence by {err:.3g} "
                f"(its forward does not honour position_ids / a 4D float mask)"
            )
    return None


def _probe_window_by_position(model: nn.Module, info: RewardModelInfo) -> str | None:
    """Check that the sliding window is applied by position, not by index in the pack.

    In a pack, a token's ancestors can sit further back than the window in the packed sequence while its own
    coalition is shorter than the window. The probe packs a 4-token prompt, sibling filler branches of at
    least ``window`` tokens in all, and a 4-token branch, and compares that branch with the same 8 tokens
    run on their own: a model that windowed by packed index would hide the prompt from it.
    """
    window = info.attention_window
    if window is None:
        return None
    avoid = {t for t in (info.pad_token_id,) if t is not None}
    ids = probe_ids(info.vocab_size, 8, avoid)
    prompt, branch = ids[:4], ids[4:]
    # filler branches within the window and the position limit, together at least the window
    longest = window - 1 if info.max_positions is None else min(window - 1, info.max_positions - len(prompt))
    longest = max(1, longest)
    sizes = [longest] * (window // longest) + ([window % longest] if window % longest else [])
    pack, position, horizon = list(prompt), list(range(len(prompt))), []
    for size in sizes:
        start = len(pack)
        pack += [ids[(start + k) % len(ids)] for k in range(size)]
        position += [len(prompt) + k for k in range(size)]
        horizon += [start + size] * size
    pack += branch
    position += [len(prompt) + k for k in range(len(branch))]
    horizon = [len(pack)] * len(prompt) + horizon + [len(pack)] * len(branch)
    packed = _packed_states(model, info, pack, position, horizon)[-len(branch) :]
    err = probe_error(model, packed, _plain_states(model, info, prompt + branch)[-len(branch) :])
    if err is not None:
        return (
            f"probe: with sliding_window={window}, a branch {len(pack) - len(branch) - len(prompt)} packed tokens "
            f"away from its prompt differs from its sequence alone by {err:.3g} (the window is applied by index "
            f"in the pack, not by position)"
        )
    return None


def trie_exactness(model: nn.Module, *, probe: bool = True) -> tuple[bool, str]:
    """Can the packed trie score this model exactly (equal to deleting tokens, up to rounding)?

    Refuses bidirectional encoders, decoders without a ``score`` head, flash-attention implementations
    (they ignore a 4D mask), local / chunked attention, ALiBi (bloom, mpt, falcon with ``alibi``),
    sequence-length-dependent RoPE, and models whose forward takes no ``position_ids``.
    With ``probe=True`` (default) it also runs a 6-token check that a packed forward with a gap equals
    the deleted sequence, which catches forwards that take ``position_ids`` but derive positions
    elsewhere, or mishandle a 4D float mask.

    Sliding-window attention is accepted: the tree attention applies the window by position, and on the dense
    mask (which holds no window) a coalition shorter than the window is not affected by it, and the scorer
    scores the coalitions that reach the window in padded batches instead. With
    ``probe=True`` a second probe (:func:`_probe_window_by_position`, about ``window`` tokens) checks that
    the model does not apply the window by index in the pack; windows longer than
    :data:`WINDOW_PROBE_MAX_TOKENS` are refused.

    Returns:
        ``(ok, reason)``; ``reason`` says why not, or what was checked when ``ok``.
    """
    info = inspect_model(model)
    refusal = _structural_refusal(model, info)
    if refusal is None and probe:
        try:
            refusal = _probe_packed_equals_deleted(model, info)
            if refusal is None and info.attention_window is not None:
                if model not in _WINDOW_PROBES:  # about a window's worth of tokens: run once per model
                    _WINDOW_PROBES[model] = _probe_window_by_position(model, info)
                refusal = _WINDOW_PROBES[model]
        except Exception as err:  # the forward cannot run a packed probe at all
            refusal = f"probe: the packed forward raised {error_summary(err)}"
    if refusal is not None:
        return False, refusal
    return True, f"{info.model_type}: causal decoder honouring position_ids and a 4D float mask"


def error_summary(err: BaseException) -> str:
    """``"TypeName: first line of the message (at file:line in function)"``, for a probe's reason.

    The place is the innermost frame outside torch's and this project's own Python files (whose frames wrap the
    call or check its arguments), so that a model that cannot run a probe is named with the line of its code
    that failed or made the failing call; no place when every frame is in those files.
    """
    text = str(err).strip()
    summary = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    # torch's folder, this package's (scar/) and the kernels' (the folder of a module of scar_kernels)
    own = (
        _package_dir(torch.__file__),
        _package_dir(os.path.dirname(__file__)),
        _package_dir(inspect.getfile(dense_mask)),
    )
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not os.path.abspath(f.filename).startswith(own)]
    if not frames:
        return summary
    where = frames[-1]
    short = os.path.join(*os.path.normpath(where.filename).split(os.sep)[-2:])
    return f"{summary} (at {short}:{where.lineno} in {where.name})"


def _package_dir(inside: str | None) -> str:
    """The folder of the package holding ``inside`` (a package's ``__init__.py`` or a subpackage's folder)."""
    return os.path.dirname(os.path.abspath(str(inside))) + os.sep
