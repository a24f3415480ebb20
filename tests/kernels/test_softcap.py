"""Logit soft-capping in every tree-attention implementation.

``softcap * tanh(score / softcap)`` is applied to each score before the mask (Gemma 2 caps its attention logits
at 50). Each implementation (the torch reference, the C++ kernel in every vector build, the op, FlexAttention
eager and compiled, Triton under its interpreter) is compared with a float64 dense computation from the
definition (``layout_problems.dense_attention``); the scores are made large so that capping changes the result
by far more than the tolerance.

TRITON_INTERPRET=1 is set before the Triton kernel is first defined (it is defined lazily on first launch).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import math

import pytest
import torch

import scar_kernels.ops as ops
from scar_kernels import extension
from scar_kernels.tree_attention import check_softcap, tree_attention_reference

from extension_marks import isa_supported, needs_extension
from layout_problems import dense_attention, random_forest

# fp32 kernels against the float64 definition: scores of size ~softcap, outputs of size ~1.
ATOL = 2e-5
ISAS = ("baseline", "avx2", "avx512")


def case(n=45, heads=4, kv_heads=2, d=16, prefix=5, seed=0, spread=6.0, dtype=torch.float32):
    """Random q/k/v with scores of a few times ``spread`` (so a cap of a few units bites), a random forest."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, d, generator=gen) * spread
    k, v = torch.randn(kv_heads, n, d, generator=gen), torch.randn(kv_heads, n, d, generator=gen)
    pk = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    cast = lambda t: None if t is None else t.to(dtype).contiguous()
    return cast(q), cast(k), cast(v), random_forest(n, seed), cast(pk), cast(pv)


def check(out: torch.Tensor, q, k, v, horizon, scale, softcap, pk, pv, atol=ATOL) -> None:
    want = dense_attention(q, k, v, horizon, scale, pk, pv, softcap)
    uncapped = dense_attention(q, k, v, horizon, scale, pk, pv)
    assert float((want - uncapped).abs().max()) > 100 * atol  # the cap matters in this case
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=0, atol=atol)


@pytest.mark.parametrize("softcap", [0.5, 4.0, 50.0])
@pytest.mark.parametrize("prefix", [0, 5])
def test_reference(softcap: float, prefix: int) -> None:
    q, k, v, horizon, pk, pv = case(prefix=prefix, spread=60.0 if softcap == 50.0 else 6.0)
    check(tree_attention_reference(q, k, v, horizon, 0.25, pk, pv, softcap), q, k, v, horizon, 0.25, softcap, pk, pv)




@needs_extension
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [16, 20, 64, 128])  # 64 and 128 are compile-time head dims; 20 has a scalar tail
@pytest.mark.parametrize("blocks", [{}, {"block_q": 7, "block_k": 5}])
def test_cpp_kernel_every_vector_build(isa: str, d: int, blocks: dict) -> None:
    if not isa_supported(isa):
        pytest.skip(f"this CPU does not run the {isa} build")
    q, k, v, horizon, pk, pv = case(n=70, d=d, seed=d, spread=12.0)
    out = extension.load().tree_attention(q, k, v, horizon, d**-0.5, pk, pv, softcap=3.0, isa=isa, **blocks)
    check(out, q, k, v, horizon, d**-0.5, 3.0, pk, pv)


@needs_extension
def test_cpp_kernel_extreme_scores_saturate_at_the_cap() -> None:
    """Scores of +-1e30 cap to +-softcap (no inf or NaN from tanh's exp), masked keys still contribute nothing."""
    q, k, v, horizon, pk, pv = case(n=30, prefix=3, spread=1e29)
    out = extension.load().tree_attention(q, k, v, horizon, 1.0, pk, pv, softcap=2.0)
    assert bool(torch.isfinite(out).all())
    check(out, q, k, v, horizon, 1.0, 2.0, pk, pv)


@needs_extension
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_cpp_kernel_half_types(dtype: torch.dtype, atol: float) -> None:
    q, k, v, horizon, pk, pv = case(dtype=dtype, spread=3.0)
    out = ops.tree_attention(q, k, v, horizon, 0.5, pk, pv, softcap=1.5)
    check(out, q, k, v, horizon, 0.5, 1.5, pk, pv, atol=atol)


@pytest.mark.parametrize("native", [True, False])
def test_op_on_either_cpu_implementation(native: bool, monkeypatch) -> None:
    if native and not extension.has_extension():
        pytest.skip("the compiled scar_kernels._C is not built")
    if not native:
        monkeypatch.setattr(extension, "load", lambda: None)
    assert ops.implementation("tree_attention") == ("c++" if native else "torch")
    q, k, v, horizon, pk, pv = case(seed=3)
    check(ops.tree_attention(q, k, v, horizon, 0.3, pk, pv, softcap=2.5), q, k, v, horizon, 0.3, 2.5, pk, pv)


def test_op_opcheck_and_compile() -> None:
    q, k, v, horizon, pk, pv = case(n=12, seed=4)
    torch.library.opcheck(torch.ops.scar.tree_attention.default, (q, k, v, horizon, 0.25, pk, pv, 2.0))
    compiled = torch.compile(lambda *a: ops.tree_attention(*a, softcap=2.0), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, horizon, 0.25, pk, pv), ops.tree_attention(
        q, k, v, horizon, 0.25, pk, pv, softcap=2.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, True, "50"])
def test_bad_softcaps_are_refused(bad) -> None:
    q, k, v, horizon, pk, pv = case(n=8, seed=5)
    with pytest.raises(ValueError, match="softcap"):
        check_softcap(bad)
    with pytest.raises(ValueError, match="softcap"):
        ops.tree_attention(q, k, v, horizon, 0.25, pk, pv, softcap=bad)
    with pytest.raises(ValueError, match="softcap"):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, softcap=bad, compiled=False)
    if extension.has_extension() and isinstance(bad, float) and bad != 0.0:  # the compiled kernel's 0 means none
        with pytest.raises(ValueError, match="softcap"):
            extension.load().tree_attention(q, k, v, horizon, 0.25, pk, pv, softcap=bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("compiled", [False, True])
def test_flex(compiled: bool) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    if ops.flex_unavailable_reason("cpu", compiled) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", compiled))
    q, k, v, horizon, pk, pv = case(n=40 if compiled else 45, seed=6)
    out = ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, softcap=2.0, compiled=compiled)
    check(out, q, k, v, horizon, 0.25, 2.0, pk, pv)


@pytest.mark.parametrize("prefix", [0, 5])
def test_triton_under_the_interpreter(prefix: int) -> None:
    pytest.importorskip("triton")
    from scar_kernels.tree_attention import tree_attention as triton_tree_attention

    q, k, v, horizon, pk, pv = case(n=37, prefix=prefix, seed=7)
    check(triton_tree_attention(q, k, v, horizon, 0.25, pk, pv, 2.0), q, k, v, horizon, 0.25, 2.0, pk, pv)
