"""One-kernel activations in the scorer's packed view: what is replaced, what is not, and that the packed scores
still equal plain deletion through the model's own modules."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn
from transformers.activations import FastGELUActivation, GELUActivation, NewGELUActivation, QuickGELUActivation

from scar.scoring import CoalitionScorer
from scar.scoring.activations import fuse_activations
from scar.scoring.attention import ATTENTION_NAME
from scar.scoring.views import model_view
from scar_kernels.ops import has_extension


def gpt2(activation: str = "gelu_new", seed: int = 0) -> tf.GPT2ForSequenceClassification:
    cfg = tf.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=100,
        n_positions=128,
        pad_token_id=0,
        num_labels=1,
        activation_function=activation,
    )
    torch.manual_seed(seed)
    return tf.GPT2ForSequenceClassification(cfg).eval()


def activations(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if "GELU" in type(m).__name__]


def test_the_packed_view_runs_one_kernel_gelu_and_the_model_and_plain_view_keep_their_own():
    model = gpt2()
    scorer = CoalitionScorer(model, backend="trie", attention="kernel" if has_extension() else "mask")
    packed = model_view(model, ATTENTION_NAME, fused_activations=True)
    assert activations(packed) == [nn.GELU, nn.GELU]
    assert all(m.approximate == "tanh" for m in packed.modules() if isinstance(m, nn.GELU))
    assert activations(model) == [NewGELUActivation, NewGELUActivation]
    assert activations(scorer.view) == [NewGELUActivation, NewGELUActivation]
    assert model_view(model, ATTENTION_NAME) is not packed  # the unfused view is a view of its own
    assert activations(model_view(model, ATTENTION_NAME)) == [NewGELUActivation, NewGELUActivation]
    assert all(a is b for a, b in zip(model.parameters(), packed.parameters()))


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_fast"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_scores_with_one_kernel_gelu_equal_plain_deletion_through_the_models_own(activation, dtype):
    # the reference is the loop backend: the user's modules, NewGELU/FastGELU as written
    model = gpt2(activation).to(dtype)
    prompt, response = [5, 6, 7, 8], [10, 11, 50, 13, 14, 15, 16, 17, 18]
    players = [(0, 2), (2, 3), (3, 5), (5, 7), (7, 9)]
    coalitions = torch.tensor([[(c >> j) & 1 for j in range(5)] for c in range(32)], dtype=torch.bool)
    loop = CoalitionScorer(model, backend="loop").score(prompt, response, players, coalitions, [2])
    trie = CoalitionScorer(model, backend="trie").score(prompt, response, players, coalitions, [2])
    # float32: rounding of the fused tanh (a few ulps); bfloat16: the scorer's own verify tolerance
    atol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(trie, loop, atol=atol, rtol=0)


def test_fast_gelu_is_replaced_and_other_gelus_are_not():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.new, self.fast = NewGELUActivation(), FastGELUActivation()
            self.exact, self.quick = GELUActivation(), QuickGELUActivation()

    block = Block()
    assert fuse_activations(block) == 2
    assert isinstance(block.new, nn.GELU) and isinstance(block.fast, nn.GELU)
    assert type(block.exact) is GELUActivation and type(block.quick) is QuickGELUActivation
    assert fuse_activations(block) == 0  # nothing left to replace


def test_subclasses_hooked_modules_and_changed_forwards_keep_their_own_forward():
    class Scaled(NewGELUActivation):  # a subclass may compute anything
        def forward(self, x):
            return 2 * super().forward(x)

    hooked = NewGELUActivation()
    hooked.register_forward_hook(lambda module, args, out: out)
    changed = NewGELUActivation()
    changed.forward = lambda x: torch.relu(x)  # same class, another function: the probe refuses it
    holder = nn.ModuleDict({"scaled": Scaled(), "hooked": hooked, "changed": changed, "plain": NewGELUActivation()})
    assert fuse_activations(holder) == 1
    assert isinstance(holder["plain"], nn.GELU)
    assert holder["scaled"].__class__ is Scaled and holder["hooked"] is hooked and holder["changed"] is changed


def test_fused_and_unfused_gelu_agree_to_float32_rounding():
    x = torch.linspace(-12, 12, 20001)
    fused = nn.GELU(approximate="tanh")(x)
    for module in (NewGELUActivation(), FastGELUActivation()):
        torch.testing.assert_close(fused, module(x), atol=1e-6, rtol=1e-6)
