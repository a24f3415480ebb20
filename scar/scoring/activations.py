"""One-kernel equivalents of activation modules that a model computes as chains of elementwise operations.

transformers' ``NewGELUActivation`` (``gelu_new``: GPT-2, GPT-J, GPT-Neo, CodeGen, Phi) and
``FastGELUActivation`` (``gelu_fast``) compute the tanh approximation of GELU as five to seven elementwise
operations, each a pass over the MLP's widest activation; ``torch.nn.GELU(approximate="tanh")`` computes the
same function in one. Over a packed trie of thousands of tokens the chain can cost more than the MLP's matrix
products (on a CPU in bfloat16 above all), so the scorer's packed view runs the one-kernel form.

The two differ by rounding only. The replacement is made only in a view the library owns (never in the
user's model, never in the plain path the runtime exactness check compares the packed scores with), only
for modules of exactly those classes without hooks of their own, and only after the module and the
replacement agree on a probe to float32 rounding: a class whose forward was changed (a newer
``transformers``, a kernel from the hub) keeps its own forward.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["TANH_GELU_CLASSES", "fuse_activations"]

TANH_GELU_CLASSES = ("NewGELUActivation", "FastGELUActivation")
"""``transformers.activations`` classes that compute the tanh approximation of GELU as a chain of operations."""

_PROBE_TOLERANCE = 1e-5
"""Largest difference on the probe (values in [-8, 8], float32) between a module and its replacement."""


@functools.cache
def _classes() -> tuple[type, ...]:
    try:
        from transformers import activations
    except ImportError:  # pragma: no cover - transformers is a dependency
        return ()
    return tuple(getattr(activations, name) for name in TANH_GELU_CLASSES if hasattr(activations, name))


def _agrees(module: nn.Module, fused: nn.Module) -> bool:
    probe = torch.linspace(-8.0, 8.0, 4097)
    with torch.no_grad():
        try:
            got = module(probe)
        except Exception:  # a forward that cannot run on a float32 CPU tensor is left as it is
            return False
        return bool(
            isinstance(got, torch.Tensor)
            and got.shape == probe.shape
            and (got.float() - fused(probe)).abs().max() <= _PROBE_TOLERANCE
        )


def fuse_activations(module: nn.Module) -> int:
    """Replace in place every tanh-GELU chain among ``module``'s submodules by ``nn.GELU(approximate="tanh")``.

    Only modules of exactly the classes :data:`TANH_GELU_CLASSES` (not subclasses), without forward hooks of
    their own, that agree with the replacement on a probe are replaced. Call it only on a module the caller
    owns, such as a view (:func:`scar.scoring.views.model_view`): the replacement changes ``module``'s
    submodule tables.

    Returns:
        The number of modules replaced.
    """
    classes = _classes()
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if child is None or type(child) not in classes or child._forward_hooks or child._forward_pre_hooks:
                continue
            fused = nn.GELU(approximate="tanh")
            if _agrees(child, fused):
                parent._modules[name] = fused
                replaced += 1
    return replaced
