"""The engine's packed forward: a ``transformers`` decoder over a packed prefix tree with tree attention.

Importing this module registers the attention function :func:`scar_tree_attention` with transformers'
attention registry under the name ``"scar_tree"``. A model whose attention implementation is
``"scar_tree"`` reads the packed-trie mask from the forward call's keyword arguments (transformers 5
forwards ``**kwargs`` from the model's forward down to the attention function):

- ``scar_horizon``: int32 ``[N]``; packed token ``i`` attends packed token ``j`` iff
  ``j <= i < scar_horizon[j]`` (the layout of :mod:`scar_kernels.layout`);
- ``scar_prefix`` (optional): the cached prompt's keys/values, a ``transformers`` ``Cache``
  (e.g. a ``DynamicCache`` filled by a forward over the prompt) or a sequence of ``(key, value)`` pairs,
  one per layer, each ``[1, Hkv, P, D]``. Every packed token attends every cached key. The cache is
  read, never extended: the attention takes the prefix as a separate operand, so nothing is appended to
  the cache nor cropped from it afterwards, and one cache serves any number of passes.
- ``scar_block_mask`` (optional): a FlexAttention ``BlockMask`` of the pack
  (:func:`scar_kernels.ops.flex_block_mask` of ``scar_horizon`` and the prefix length). When given, the
  attention runs through ``flex_attention`` (:func:`scar_kernels.ops.flex_tree_attention`) instead of the
  ``scar::tree_attention`` op; one mask serves every layer of the forward.
- ``scar_positions`` (set by :func:`packed_forward`): int32 ``[N]``, each packed token's position in its own
  coalition sequence (the cached prompt's keys sit at positions ``0..P-1``). A layer with a ``sliding_window``
  has the tree attention apply it by these positions: a key is an ancestor of its query, so ``position(query) -
  position(key) < window`` is exactly the window the model applies to that query's own sequence.
- ``scar_max_position`` (set by :func:`packed_forward`): the largest position id in the pack, an ``int`` or a
  :class:`LargestPosition` that reads it from the device on first use (so that only models with a window
  pay that synchronisation). A window that no position reaches excludes nothing, and is not applied.
- ``scar_window_masks`` (set by :func:`packed_forward` with ``scar_block_mask``): a dict in which the
  FlexAttention ``BlockMask`` of each sliding window is built on first use and shared by the layers of that
  window.

A decoder whose layers do not pass the forward's keyword arguments on to their attention modules (Nemotron)
gets the same arguments from a context variable that :func:`packed_forward` sets for the duration of its call:
``scar_tree_attention`` reads it when its own arguments hold no ``scar_horizon``. A context variable is private to
its thread, so concurrent packed forwards do not see each other's packs.

No mask function is registered: ``"scar_tree"`` is absent from transformers' mask registry, so
``create_causal_mask`` returns ``None`` without building an ``N x N`` mask.

:func:`packed_forward` runs a base model (e.g. ``model.model`` of a ``LlamaForSequenceClassification``
or ``model.transformer`` of GPT-2) this way. It never switches the attention implementation of the model
it is given: it runs a private view of it (:func:`scar.scoring.views.model_view`: the same parameters, its
own config selecting ``"scar_tree"``), so other threads and the model's own forwards are unaffected. The
attention itself is the ``scar::tree_attention`` op (Triton on CUDA, C++/torch on CPU), or FlexAttention
(``attention="flex"``).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AttentionInterface

from scar.scoring.views import model_view
from scar_kernels.ops import flex_block_mask
from scar_kernels.ops import flex_tree_attention as _flex_attention_op
from scar_kernels.ops import tree_attention as _tree_attention_op

__all__ = [
    "ATTENTION_NAME",
    "LargestPosition",
    "PACKED_ATTENTIONS",
    "scar_tree_attention",
    "register",
    "packed_forward",
    "uses_scar_tree",
    "prefix_length",
]

ATTENTION_NAME = "scar_tree"
PACKED_ATTENTIONS = ("kernel", "flex")
"""What :func:`packed_forward` can run the tree attention with: the ``scar::tree_attention`` op or FlexAttention."""


_PACK: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("scar_pack", default=None)
"""The ``scar_*`` arguments of the packed forward running in this context (None outside one)."""


class LargestPosition:
    """The largest of a pack's ``position_ids``, read (one device synchronisation) the first time it is asked
    for and kept for the other layers of the forward."""

    def __init__(self, position_ids: torch.Tensor) -> None:
        self._position_ids: torch.Tensor | None = position_ids
        self._value = 0

    def __int__(self) -> int:
        if self._position_ids is not None:
            self._value = int(self._position_ids.max()) if self._position_ids.numel() else 0
            self._position_ids = None
        return self._value


def _prefix_for_layer(prefix: Any, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[1, Hkv, P, D]`` of one layer of a cache or of a list of ``(k, v)`` pairs."""
    layers = getattr(prefix, "layers", None)
    if layers is not None:
        if layer_idx >= len(layers):
            raise ValueError(f"scar_tree attention: scar_prefix has {len(layers)} layers, layer {layer_idx} requested")
        layer = layers[layer_idx]
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise ValueError(f"scar_tree attention: layer {layer_idx} of scar_prefix holds no keys/values")
        return keys, values
    if isinstance(prefix, Sequence):
        if layer_idx >= len(prefix):
            raise ValueError(f"scar_tree attention: scar_prefix has {len(prefix)} layers, layer {layer_idx} requested")
        keys, values = prefix[layer_idx]
        return keys, values
    raise TypeError(
        "scar_tree attention: scar_prefix must be a transformers Cache or a sequence of (key, value) pairs, "
        f"got {type(prefix).__name__}"
    )


# Arguments of transformers' attention calls that change the attention itself (additive position biases, sparse
# key selection): the tree attention computes none of them. Logit soft-capping (``softcap``) and attention sinks
# (``s_aux``, ``sinks``) it does.
_UNSUPPORTED = ("position_bias", "indices", "block_indices")


def _sink_logits(kwargs: dict[str, Any], heads: int, n: int) -> torch.Tensor | None:
    """The attention-sink logits a layer passes, as the kernels take them: ``[H]`` (one per head: ``s_aux``, as
    gpt-oss passes its ``sinks`` parameter) or ``[H, N]`` (per head and query: ``sinks [1, H, N, 1]``, computed
    from each token's hidden state); None when the layer passes none."""
    s_aux, sinks = kwargs.get("s_aux"), kwargs.get("sinks")
    if s_aux is not None and sinks is not None:
        raise ValueError("scar_tree attention: the layer passes both s_aux and sinks; expected one")
    given = s_aux if s_aux is not None else sinks
    if given is None:
        return None
    if not isinstance(given, torch.Tensor):
        raise TypeError(f"scar_tree attention: attention sinks must be a tensor, got {type(given).__name__}")
    if given.dim() == 1 and given.shape[0] == heads:
        return given
    if given.dim() == 4 and tuple(given.shape) == (1, heads, n, 1):
        return given[0, :, :, 0]
    raise ValueError(
        f"scar_tree attention: attention sinks of shape {tuple(given.shape)}; expected [{heads}] (per head) or "
        f"[1, {heads}, {n}, 1] (per head and query)"
    )


def _window(kwargs: dict[str, Any]) -> int | None:
    """The sliding window the tree attention applies to this layer: the layer's ``sliding_window`` when some
    position of the pack reaches it, else None (a window no position reaches excludes nothing)."""
    window = kwargs.get("sliding_window")
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"scar_tree attention: sliding_window={window!r} is not one window size in tokens")
    top = kwargs.get("scar_max_position")
    if top is not None and int(top) < window:
        return None
    if kwargs.get("scar_positions") is None:
        raise ValueError(
            f"scar_tree attention: the layer has sliding_window={window}; pass scar_positions=<int32 [N] position "
            "ids> (or scar_max_position below the window) to apply it (scar.scoring.attention.packed_forward does)"
        )
    return window


def _window_block_mask(kwargs: dict[str, Any], horizon: torch.Tensor, prefix_len: int, window: int) -> Any:
    """The FlexAttention ``BlockMask`` of the pack within ``window``, built once per window and forward."""
    masks = kwargs.get("scar_window_masks")
    if masks is None:
        masks = {}
    if window not in masks:
        masks[window] = flex_block_mask(horizon, prefix_len, positions=kwargs["scar_positions"], window=window)
    return masks[window]


def scar_tree_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function for a packed prefix-tree (registered as ``"scar_tree"``).

    Takes ``query [1, H, N, D]`` and ``key``/``value`` ``[1, Hkv, N, D]`` as transformers passes them,
    ``scar_horizon`` (and optionally ``scar_prefix``, ``scar_block_mask`` and ``scar_positions``) from ``kwargs``,
    and applies the logit soft-cap the model passes as ``softcap`` (Gemma 2), the attention sinks it passes as
    ``s_aux`` (gpt-oss; per head) or ``sinks`` (per head and query) and its ``sliding_window``; returns
    ``([1, N, H, D], None)`` like transformers' own attention functions (no attention weights).
    """
    horizon = kwargs.get("scar_horizon")
    pack = _PACK.get() if horizon is None else None
    if pack is not None:  # a model whose layers did not pass the pack's arguments on
        kwargs = {**kwargs, **pack}
        horizon = kwargs["scar_horizon"]
    if horizon is None:
        raise ValueError(
            "scar_tree attention: pass scar_horizon=<int32 [N] tensor> to the model's forward "
            "(or use scar.scoring.attention.packed_forward)"
        )
    if attention_mask is not None:
        raise ValueError("scar_tree attention: the mask comes from scar_horizon; do not pass attention_mask")
    if dropout and module.training:
        raise ValueError("scar_tree attention is forward-only: put the model in eval() mode (dropout > 0)")
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"scar_tree attention does not implement {name}; the packed trie would be inexact")
    window = _window(kwargs)
    if query.dim() != 4 or query.shape[0] != 1:
        raise ValueError(
            f"scar_tree attention: the pack is one sequence, expected query [1, H, N, D], got {tuple(query.shape)}"
        )
    n = query.shape[2]
    if key.shape[2] != n:
        raise ValueError(
            f"scar_tree attention: {key.shape[2]} keys for {n} queries; pass the cached prompt as scar_prefix, "
            "not as the model's cache"
        )
    prefix_k = prefix_v = None
    prefix = kwargs.get("scar_prefix")
    if prefix is not None:
        layer_idx = getattr(module, "layer_idx", None)
        if layer_idx is None:
            raise ValueError(f"scar_tree attention: {type(module).__name__} has no layer_idx to find its cached prefix")
        pk, pv = _prefix_for_layer(prefix, layer_idx)
        if pk.dim() != 4 or pk.shape[0] != 1:
            raise ValueError(f"scar_tree attention: cached keys must be [1, Hkv, P, D], got {tuple(pk.shape)}")
        if pk.shape[2] > 0:
            prefix_k = pk[0].to(query.dtype).contiguous()
            prefix_v = pv[0].to(query.dtype).contiguous()
    args = (
        query[0].contiguous(),
        key[0].contiguous(),
        value[0].contiguous(),
        horizon,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
        prefix_k,
        prefix_v,
        kwargs.get("softcap"),
        _sink_logits(kwargs, query.shape[1], n),
    )
    positions = kwargs.get("scar_positions") if window is not None else None
    block_mask = kwargs.get("scar_block_mask")
    if block_mask is not None:
        if window is not None:
            block_mask = _window_block_mask(kwargs, horizon, 0 if prefix_k is None else prefix_k.shape[1], window)
        out = _flex_attention_op(*args, positions, window, block_mask=block_mask)
    else:
        out = _tree_attention_op(*args, positions, window)
    # transformers expects [batch, seq, heads, head_dim], contiguous as its own attention functions return it
    # (some attention modules .view() it)
    return out.transpose(0, 1).contiguous().unsqueeze(0), None


def register() -> None:
    """Register :func:`scar_tree_attention` as ``"scar_tree"`` (idempotent; done on import)."""
    AttentionInterface.register(ATTENTION_NAME, scar_tree_attention)


def uses_scar_tree(model: torch.nn.Module) -> bool:
    """True when ``model``'s config selects the ``"scar_tree"`` attention implementation."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTENTION_NAME


def prefix_length(prefix: Any) -> int:
    """Cached tokens of a prompt cache (a transformers ``Cache`` or per-layer ``(key, value)`` pairs)."""
    if prefix is None:
        return 0
    if hasattr(prefix, "get_seq_length"):
        return int(prefix.get_seq_length())
    if isinstance(prefix, Sequence) and len(prefix):
        return int(prefix[0][0].shape[2])
    return 0


def packed_forward(
    model_base: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    horizon: torch.Tensor,
    past_key_values: Any = None,
    attention: str = "kernel",
) -> torch.Tensor:
    """Run a transformers base model over a packed trie with tree attention; return ``last_hidden_state``.

    Args:
        model_base: the decoder base model (``LlamaModel``, ``GPT2Model``, ``GPTNeoXModel``, ...). A model
            whose config already selects ``"scar_tree"`` runs as it is; any other runs through its view
            (see the module docstring), in eval mode. Call it under ``torch.no_grad()``.
        input_ids: packed token ids ``[N]`` or ``[1, N]``.
        position_ids: position of each packed token in its own coalition sequence (cached prompt
            tokens included), ``[N]`` or ``[1, N]``.
        horizon: ``[N]`` subtree ends (int32; other integer dtypes are converted once).
        past_key_values: optional cache holding the prompt's first ``P`` tokens (a ``DynamicCache``
            or per-layer ``(key, value)`` pairs); visible to every packed token, so a pack with a
            cache must hold coalitions of that one prompt. It is read only, never modified.
        attention: ``"kernel"`` (the ``scar::tree_attention`` op) or ``"flex"`` (FlexAttention, with one
            ``BlockMask`` built from ``horizon`` for all layers); see :data:`PACKED_ATTENTIONS`.

    Returns:
        ``last_hidden_state [1, N, hidden]``.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"packed_forward: input_ids must be [N] or [1, N], got {tuple(input_ids.shape)}")
    n = input_ids.shape[1]
    if position_ids.shape != input_ids.shape:
        raise ValueError(
            f"packed_forward: position_ids shape {tuple(position_ids.shape)} != input_ids shape "
            f"{tuple(input_ids.shape)}"
        )
    if not isinstance(horizon, torch.Tensor) or horizon.dim() != 1 or horizon.shape[0] != n:
        raise ValueError(f"packed_forward: horizon must be a 1-D tensor of {n} entries")
    if horizon.dtype.is_floating_point or horizon.dtype == torch.bool:
        raise TypeError(f"packed_forward: horizon must be an integer tensor, got {horizon.dtype}")
    if attention not in PACKED_ATTENTIONS:
        raise ValueError(f"packed_forward: attention must be one of {PACKED_ATTENTIONS}, got {attention!r}")
    if getattr(model_base, "config", None) is None or not hasattr(model_base, "set_attn_implementation"):
        raise TypeError("packed_forward: model_base must be a transformers PreTrainedModel")
    base = model_base if uses_scar_tree(model_base) else model_view(model_base, ATTENTION_NAME, fused_activations=True)
    horizon = horizon.to(device=input_ids.device, dtype=torch.int32).contiguous()
    kwargs: dict[str, Any] = {
        "scar_horizon": horizon,
        "use_cache": False,
        "scar_positions": position_ids[0].to(torch.int32).contiguous(),
        "scar_max_position": LargestPosition(position_ids),
    }
    if past_key_values is not None:
        kwargs["scar_prefix"] = past_key_values
    if attention == "flex":
        kwargs["scar_block_mask"] = flex_block_mask(horizon, prefix_length(past_key_values))
        kwargs["scar_window_masks"] = {}
    if "return_dict" in inspect.signature(base.forward).parameters:
        kwargs["return_dict"] = True
    token = _PACK.set({k: v for k, v in kwargs.items() if k.startswith("scar_")})
    try:
        return base(input_ids=input_ids, position_ids=position_ids, **kwargs).last_hidden_state
    finally:
        _PACK.reset(token)


register()
