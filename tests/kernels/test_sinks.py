"""Attention sinks in every tree-attention implementation.

A sink is one more softmax logit per query head (gpt-oss: a learned ``sinks`` parameter ``[H]``) or per head and
query (``[H, N]``) whose value row is zero: it takes probability mass from the keys and adds nothing to the
output. Each implementation (the torch reference, the C++ kernel in every vector build, the op, FlexAttention,
Triton under its interpreter) is compared with a float64 dense computation from the definition
(``layout_problems.dense_attention``); the sinks are made large enough that they change the result by far more
than the tolerance.

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
from scar_kernels.tree_attention import tree_attention_reference

from extension_marks import isa_supported, needs_extension
from layout_problems import dense_attention, random_forest

ATOL = 2e-5  # fp32 kernels against the float64 definition, outputs of size ~1
ISAS = ("baseline", "avx2", "avx512")


def case(n=45, heads=4, kv_heads=2, d=16, prefix=5, seed=0, per_query=False, dtype=torch.float32):
    """Random q/k/v/forest and sinks of a few units, per head (``[H]``) or per head and query (``[H, N]``)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, d, generator=gen) * 2
    k, v = torch.randn(kv_heads, n, d, generator=gen), torch.randn(kv_heads, n, d, generator=gen)
    pk = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    sinks = torch.randn(*((heads, n) if per_query else (heads,)), generator=gen) * 2 + 1
    cast = lambda t: None if t is None else t.to(dtype).contiguous()
    return cast(q), cast(k), cast(v), random_forest(n, seed), cast(pk), cast(pv), sinks


def check(out, q, k, v, horizon, scale, sinks, pk, pv, softcap=None, atol=ATOL) -> None:
    want = dense_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks)
    assert float((want - dense_attention(q, k, v, horizon, scale, pk, pv, softcap)).abs().max()) > 100 * ATOL
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=0, atol=atol)


@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("prefix", [0, 5])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_reference(per_query: bool, prefix: int, softcap: float | None) -> None:
    q, k, v, horizon, pk, pv, sinks = case(prefix=prefix, per_query=per_query)
    out = tree_attention_reference(q, k, v, horizon, 0.25, pk, pv, softcap, sinks)
    check(out, q, k, v, horizon, 0.25, sinks, pk, pv, softcap)




@needs_extension
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [16, 20, 64])  # 64 is a compile-time head dim; 20 has a scalar tail
@pytest.mark.parametrize("blocks", [{}, {"block_q": 7, "block_k": 5}])
@pytest.mark.parametrize("per_query", [False, True])
def test_cpp_kernel_every_vector_build(isa: str, d: int, blocks: dict, per_query: bool) -> None:
    if not isa_supported(isa):
        pytest.skip(f"this CPU does not run the {isa} build")
    q, k, v, horizon, pk, pv, sinks = case(n=70, d=d, seed=d, per_query=per_query)
    out = extension.load().tree_attention(q, k, v, horizon, d**-0.5, pk, pv, sinks=sinks, isa=isa, **blocks)
    check(out, q, k, v, horizon, d**-0.5, sinks, pk, pv)
    capped = extension.load().tree_attention(q, k, v, horizon, d**-0.5, pk, pv, softcap=1.5, sinks=sinks, isa=isa)
    check(capped, q, k, v, horizon, d**-0.5, sinks, pk, pv, softcap=1.5)


@needs_extension
def test_cpp_kernel_sink_of_minus_infinity_is_no_sink() -> None:
    """A head whose sink is -inf attends as without one; a sink far above every score sends the output to 0."""
    q, k, v, horizon, pk, pv, _ = case(n=30, seed=2)
    sinks = torch.tensor([-math.inf, -math.inf, 0.0, 1e4])
    out = extension.load().tree_attention(q, k, v, horizon, 0.25, pk, pv, sinks=sinks)
    plain = extension.load().tree_attention(q, k, v, horizon, 0.25, pk, pv)
    torch.testing.assert_close(out[:2], plain[:2], rtol=0, atol=1e-6)
    assert float(out[3].abs().max()) == 0.0
    check(out, q, k, v, horizon, 0.25, sinks, pk, pv)


@needs_extension
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_cpp_kernel_half_types(dtype: torch.dtype, atol: float) -> None:
    q, k, v, horizon, pk, pv, sinks = case(dtype=dtype)
    out = ops.tree_attention(q, k, v, horizon, 0.5, pk, pv, sinks=sinks.to(dtype))
    check(out, q, k, v, horizon, 0.5, sinks.to(dtype), pk, pv, atol=atol)


@pytest.mark.parametrize("native", [True, False])
def test_op_on_either_cpu_implementation(native: bool, monkeypatch) -> None:
    if native and not extension.has_extension():
        pytest.skip("the compiled scar_kernels._C is not built")
    if not native:
        monkeypatch.setattr(extension, "load", lambda: None)
    assert ops.implementation("tree_attention") == ("c++" if native else "torch")
    q, k, v, horizon, pk, pv, sinks = case(seed=3, per_query=True)
    check(ops.tree_attention(q, k, v, horizon, 0.3, pk, pv, sinks=sinks), q, k, v, horizon, 0.3, sinks, pk, pv)


def test_op_opcheck_and_compile() -> None:
    q, k, v, horizon, pk, pv, sinks = case(n=12, seed=4)
    torch.library.opcheck(torch.ops.scar.tree_attention.default, (q, k, v, horizon, 0.25, pk, pv, None, sinks))
    compiled = torch.compile(lambda *a: ops.tree_attention(*a, sinks=sinks), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, horizon, 0.25, pk, pv), ops.tree_attention(
        q, k, v, horizon, 0.25, pk, pv, sinks=sinks), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.zeros(3), ValueError, "shape"),
        (torch.zeros(4, 2), ValueError, "shape"),
        (torch.zeros(4, dtype=torch.int64), TypeError, "float"),
        (torch.tensor([0.0, math.nan, 0.0, 0.0]), ValueError, "(?i)nan"),
        (torch.tensor([0.0, math.inf, 0.0, 0.0]), ValueError, "inf"),
        ([0.0] * 4, TypeError, "Tensor"),
    ],
)
def test_bad_sinks_are_refused(bad, error: type, match: str) -> None:
    q, k, v, horizon, pk, pv, _ = case(n=8, seed=5)
    with pytest.raises(error, match=match):
        ops.tree_attention(q, k, v, horizon, 0.25, pk, pv, sinks=bad)
    with pytest.raises(error, match=match):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, sinks=bad, compiled=False)
    if extension.has_extension() and isinstance(bad, torch.Tensor):
        with pytest.raises((TypeError, ValueError), match=match):
            extension.load().tree_attention(q, k, v, horizon, 0.25, pk, pv, sinks=bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("per_query", [False, True])
def test_flex_eager(per_query: bool) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    if ops.flex_unavailable_reason("cpu", False) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", False))
    q, k, v, horizon, pk, pv, sinks = case(seed=6, per_query=per_query)
    out = ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, softcap=2.0, sinks=sinks, compiled=False)
    check(out, q, k, v, horizon, 0.25, sinks, pk, pv, softcap=2.0)


def test_compiled_flex_on_cpu_refuses_sinks_with_the_reason() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    if ops.flex_unavailable_reason("cpu", True) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", True))
    q, k, v, horizon, pk, pv, sinks = case(n=8, seed=6)
    with pytest.raises(RuntimeError, match="log-sum-exp"):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, sinks=sinks, compiled=True)


@pytest.mark.parametrize("prefix", [0, 5])
@pytest.mark.parametrize("per_query", [False, True])
def test_triton_under_the_interpreter(prefix: int, per_query: bool) -> None:
    pytest.importorskip("triton")
    from scar_kernels.tree_attention import tree_attention as triton_tree_attention

    q, k, v, horizon, pk, pv, sinks = case(n=37, prefix=prefix, seed=7, per_query=per_query)
    out = triton_tree_attention(q, k, v, horizon, 0.25, pk, pv, 2.0, sinks)
    check(out, q, k, v, horizon, 0.25, sinks, pk, pv, softcap=2.0)
