"""Private views of a reward model: the same parameters, in module objects and a config the scorer owns.

Scoring needs the model in eval mode and, for the packed trie, with another attention implementation.
Switching those on the user's model is a change of shared state: another thread, another scorer or the
user's own forward running at the same time would see it. A *view* is a structural copy of the model whose
modules are new objects (their own ``training`` flags) and whose config is a copy (its own attention
implementation), while every parameter and buffer is the same tensor as the model's: no memory is copied,
weight updates are seen, and nothing is ever switched on the user's model.

A view may also run one-kernel forms of activations the model computes as chains of elementwise operations
(``fused_activations``, :mod:`scar.scoring.activations`): the same function up to rounding, in the view's own
module tables. Views are cached per (model, attention implementation, fused activations) and built once,
under a lock. A view captures the model's module structure when it is built: replacing a submodule of the
model afterwards (e.g. adding adapters) is not seen by an existing view.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

from torch import nn

from scar.scoring.activations import fuse_activations

__all__ = ["model_view"]

_LOCK = threading.Lock()
_VIEWS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str | None, bool], nn.Module]] = weakref.WeakKeyDictionary()


def _is_config(value: Any) -> bool:
    return hasattr(value, "to_dict") and hasattr(value, "_attn_implementation") and not isinstance(value, nn.Module)


def _clone(module: nn.Module, modules: dict[int, nn.Module], configs: dict[int, Any]) -> nn.Module:
    """A copy of ``module`` sharing its parameters, buffers and hooks, with cloned submodules and configs."""
    if id(module) in modules:
        return modules[id(module)]
    new = copy.copy(module)  # a new object whose __dict__ shares every value with the original
    modules[id(module)] = new
    new.__dict__["_modules"] = {
        name: None if child is None else _clone(child, modules, configs) for name, child in module._modules.items()
    }
    for key, value in module.__dict__.items():
        if _is_config(value):
            new.__dict__[key] = copy.deepcopy(value, configs)  # one memo: shared configs stay shared
    new.__dict__["training"] = False
    return new


def model_view(model: nn.Module, attention: str | None = None, fused_activations: bool = False) -> nn.Module:
    """The cached view of ``model`` (see the module docstring), in eval mode.

    Args:
        model: a ``torch.nn.Module`` (a ``transformers`` model for ``attention``).
        attention: an attention implementation for the view's config (e.g. ``"eager"`` or the packed trie's
            ``"scar_tree"``), set with the model's ``set_attn_implementation``; None keeps the model's.
        fused_activations: run tanh-GELU chains as one kernel (:func:`~scar.scoring.activations.fuse_activations`).

    Raises:
        TypeError: ``model`` is not a module, or ``attention`` is given for a model that cannot switch
            its attention implementation.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    with _LOCK:
        cached = _VIEWS.setdefault(model, {})
        key = (attention, fused_activations)
        if key not in cached:
            view = _clone(model, {}, {})
            if attention is not None and attention != getattr(
                getattr(view, "config", None), "_attn_implementation", None
            ):
                if not hasattr(view, "set_attn_implementation"):
                    raise TypeError(f"{type(model).__name__} cannot switch its attention implementation")
                view.set_attn_implementation(attention)  # type: ignore[operator]
            if fused_activations:
                fuse_activations(view)
            cached[key] = view
        return cached[key]
