"""torch.library ops scar::tree_attention, scar::build_pack and scar::dense_mask: CPU implementations, opcheck,
torch.compile, and which implementation runs where."""
import os
import subprocess
import sys

import pytest
import torch

import scar_kernels.ops as ops
from scar_kernels import extension
from scar_kernels.layout import BUILD_PACK_FIELDS, additive_mask, build_pack_reference
from scar_kernels.ops import build_pack, dense_mask, tree_attention
from scar_kernels.tree_attention import tree_attention_reference

import layout_problems


def random_forest(n: int, seed: int) -> torch.Tensor:
    """Horizon of a random preorder forest of ``n`` tokens (nodes of 1..3 tokens)."""
    return layout_problems.random_forest(n, seed, max_node=3)


def qkv(h=4, hkv=2, n=12, d=16, p=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return mk(h, n, d), mk(hkv, n, d), mk(hkv, n, d), (mk(hkv, p, d) if p else None), (mk(hkv, p, d) if p else None)


def pack_args():
    """Two responses (one with a gap segment, a suffix and a cached prompt token), duplicate coalitions."""
    return (
        torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool),
        torch.tensor([0, 0, 0, 0, 0, 1, 1]),
        torch.tensor([0, 4, 6]),
        torch.tensor([0, -1, 1, 2, 0, 1]),
        torch.tensor([2, 1, 3, 1, 2, 2]),
        torch.tensor([4, 3]),
        torch.tensor([1, 0]),
        torch.tensor([1, 0]),
    )


@pytest.fixture(params=["native", "torch"])
def cpu_impl(request, monkeypatch):
    """Run a test on the C++ extension's CPU kernels (skipped when not built) and on the torch fallback."""
    if request.param == "native":
        if not extension.has_extension():
            pytest.skip("scar_kernels._C is not built")
        assert ops.implementation("tree_attention") == ops.implementation("build_pack") == "c++"
    else:
        monkeypatch.setattr(extension, "load", lambda: None)
        assert ops.implementation("tree_attention") == ops.implementation("build_pack") == "torch"
    return request.param


# --------------------------------------------------------------------------------------------------
# scar::tree_attention
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,p,hkv", [(12, 0, 2), (31, 4, 1), (40, 7, 4)])
def test_cpu_op_matches_reference(n, p, hkv, cpu_impl):
    q, k, v, pk, pv = qkv(4, hkv, n, 16, p, seed=n)
    horizon = random_forest(n, n)
    out = tree_attention(q, k, v, horizon, 0.3, pk, pv)
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, 0.3, pk, pv), atol=1e-5, rtol=0)


def test_cpu_op_default_scale_and_half_inputs(cpu_impl):
    q, k, v, pk, pv = qkv(2, 2, 20, 32, 3, dtype=torch.float16, seed=1)
    horizon = random_forest(20, 1)
    out = tree_attention(q, k, v, horizon, None, pk, pv)
    assert out.dtype == torch.float16
    ref = tree_attention_reference(q.float(), k.float(), v.float(), horizon, 32 ** -0.5, pk.float(), pv.float())
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=0)


def test_tree_attention_opcheck():
    q, k, v, pk, pv = qkv(4, 2, 10, 16, 3)
    horizon = random_forest(10, 2)
    torch.library.opcheck(torch.ops.scar.tree_attention.default, (q, k, v, horizon, 0.25, pk, pv))
    torch.library.opcheck(torch.ops.scar.tree_attention.default, (q, k, v, horizon, 0.25, None, None))


def test_tree_attention_under_torch_compile_fullgraph():
    q, k, v, pk, pv = qkv(4, 2, 10, 16, 2, seed=3)
    horizon = random_forest(10, 3)

    def f(q, k, v, horizon, pk, pv):
        return tree_attention(q * 2.0, k, v, horizon, 0.25, pk, pv).sum(dim=0)

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, horizon, pk, pv), f(q, k, v, horizon, pk, pv), atol=1e-5, rtol=0)


def test_tree_attention_op_errors(cpu_impl):
    q, k, v, _, _ = qkv()
    horizon = random_forest(12, 0)
    with pytest.raises(TypeError, match="int32"):
        tree_attention(q, k, v, horizon.long())
    with pytest.raises(ValueError, match="contiguous"):
        tree_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, horizon)
    with pytest.raises(ValueError, match="k has 11 tokens"):
        tree_attention(q, k[:, :11].contiguous(), v[:, :11].contiguous(), horizon)
    bad = horizon.clone()
    bad[5] = 5
    with pytest.raises(ValueError, match=r"horizon\[5\] = 5"):
        tree_attention(q, k, v, bad)


def test_fake_tree_attention_checks_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(4, 12, 16), torch.empty(2, 12, 16), torch.empty(2, 12, 16)
        out = torch.ops.scar.tree_attention(q, k, v, torch.empty(12, dtype=torch.int32), 0.25, None, None)
        assert out.shape == (4, 12, 16)
        with pytest.raises(ValueError, match="multiple of kv heads"):
            torch.ops.scar.tree_attention(q, torch.empty(3, 12, 16), torch.empty(3, 12, 16),
                                          torch.empty(12, dtype=torch.int32), 0.25, None, None)


def test_ops_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from scar_kernels.ops import tree_attention\n"
        "from scar_kernels.ops import implementation, triton_available\n"
        "from scar_kernels.tree_attention import tree_attention_reference\n"
        "assert not triton_available() and implementation('tree_attention', 'cuda') == 'none'\n"
        "q = torch.randn(2, 5, 16); k = torch.randn(1, 5, 16); h = torch.tensor([5, 3, 3, 5, 5], dtype=torch.int32)\n"
        "assert torch.allclose(tree_attention(q, k, k, h), tree_attention_reference(q, k, k, h, 0.25), atol=1e-5)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------------------------------
# scar::build_pack
# --------------------------------------------------------------------------------------------------
def test_build_pack_op_matches_reference(cpu_impl):
    out = build_pack(*pack_args()).as_tuple()
    ref = build_pack_reference(*pack_args())
    assert len(out) == len(BUILD_PACK_FIELDS)
    for name, got in zip(BUILD_PACK_FIELDS, out):
        assert torch.equal(got, getattr(ref, name)), name
    _gather, position_ids, horizon, _readout, inverse = out[:5]
    assert horizon.dtype == torch.int32
    assert inverse[1] == inverse[4] and inverse[3] != inverse[6]  # duplicates share; owners never do
    assert int(position_ids[0]) == 1  # the first packed token of tree 0 follows its cached prompt token


def test_build_pack_opcheck():
    torch.library.opcheck(torch.ops.scar.build_pack.default, pack_args())


def test_build_pack_under_torch_compile_fullgraph():
    def f(*args):
        layout = build_pack(*args)
        position_ids, horizon, readout = layout.position_ids, layout.horizon, layout.readout
        return position_ids + 1, horizon.to(torch.int64).sum(), readout

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*pack_args()), f(*pack_args())):
        assert torch.equal(got, want)


def test_build_pack_op_rejects_bad_input(cpu_impl):
    args = list(pack_args())
    args[1] = torch.tensor([0, 0, 0, 0, 0, 1, 2])  # owner out of range
    with pytest.raises((ValueError, RuntimeError), match="owner"):
        build_pack(*args)
    args = list(pack_args())
    args[0] = args[0].to(torch.int64)
    with pytest.raises((ValueError, RuntimeError, TypeError), match="coalitions"):
        build_pack(*args)


# --------------------------------------------------------------------------------------------------
# scar::dense_mask
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("prefix_len", [0, 3])
def test_dense_mask_op_matches_reference(dtype, prefix_len):
    horizon = random_forest(17, 4)
    got = dense_mask(horizon, prefix_len, dtype=dtype)
    assert got.dtype == dtype and got.shape == (17, prefix_len + 17)
    assert torch.equal(got, additive_mask(horizon, prefix_len, dtype=dtype))


def test_dense_mask_opcheck_and_bad_input():
    torch.library.opcheck(torch.ops.scar.dense_mask.default, (random_forest(9, 1), 2, torch.float32))
    with pytest.raises(TypeError, match="integer"):
        dense_mask(torch.ones(4))
    with pytest.raises(ValueError, match="prefix_len"):
        dense_mask(random_forest(4, 0), -1)
    with pytest.raises(ValueError, match="floating"):
        dense_mask(random_forest(4, 0), dtype=torch.int32)


def test_implementation_names_what_runs():
    assert ops.implementation("dense_mask") == "torch"
    assert ops.implementation("build_pack", "cuda") == "none"  # the trie is built on the host
    assert ops.implementation("tree_attention", "meta") == "none"
    with pytest.raises(ValueError, match="unknown op"):
        ops.implementation("flash")


# --------------------------------------------------------------------------------------------------
# The Triton kernels compile for a real GPU target (no GPU needed: PTX and cubin are built offline)
# --------------------------------------------------------------------------------------------------
_AOT_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import scar_kernels.tree_attention as ta
import scar_kernels.dense_mask as pk

target = GPUTarget("cuda", 80, 32)


def compile_(fn, signature, constexprs):
    c = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target)
    assert c.asm["cubin"], "no cubin"
    return c


for dt, d, block_d, block_n, has_prefix, softcap, sinks, window in (
    ("fp16", 64, 64, 64, True, False, True, False), ("bf16", 80, 128, 32, False, True, False, True),
    ("fp32", 64, 64, 64, True, True, True, True), ("fp16", 128, 128, 64, True, False, False, True),
):
    sig = {name: "*" + dt for name in ("Q", "K", "V", "PK", "PV")}
    sig.update(HOR="*i32", BLKMAX="*i32", SINKS="*fp32", POS="*i32", BLKPOS="*i32", OUT="*" + dt, N="i32",
               P="i32", qk_scale="fp32", cap_scale="fp32", window="i32")
    consts = dict(GROUP=2, HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=64, BLOCK_N=block_n, HAS_PREFIX=has_prefix,
                  DOT_FP32=dt == "fp32", DOT_PRECISION="ieee" if dt == "fp32" else None, SOFTCAP=softcap,
                  HAS_SINKS=sinks, HAS_WINDOW=window)
    sig.update({name: "constexpr" for name in consts})
    compile_(ta._get_kernel(), sig, consts)
compile_(pk._kernel(), {"HOR": "*i32", "OUT": "*bf16", "n": "i32", "P": "i32", "neg": "fp32",
                                 "BLOCK_Q": "constexpr", "BLOCK_K": "constexpr"}, dict(BLOCK_Q=32, BLOCK_K=64))
print("compiled")
"""


def test_triton_kernels_compile_for_cuda(tmp_path):
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as exc:  # a Triton build without the NVIDIA backend
        pytest.skip(f"Triton NVIDIA backend unavailable: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # force a real compile
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "compiled" in res.stdout


def test_scoring_calls_skip_the_dispatcher_with_the_same_result(monkeypatch):
    """Plain CPU tensors under no_grad reach the op's CPU kernel function directly; with a gradient to track
    they go through the registered op; both give the op's output."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 9, 8, generator=gen) for _ in range(3))
    horizon = torch.tensor([9, 3, 3, 9, 6, 6, 9, 8, 9], dtype=torch.int32)
    direct_calls = []
    real = ops._tree_attention_cpu_kernel
    monkeypatch.setattr(ops, "_tree_attention_cpu_kernel", lambda *a: direct_calls.append(1) or real(*a))
    through_op = torch.ops.scar.tree_attention(q, k, v, horizon, 0.3, None, None)
    with torch.no_grad():
        direct = ops.tree_attention(q, k, v, horizon, 0.3)
    assert direct_calls == [1] and torch.equal(direct, through_op)
    tracked = ops.tree_attention(q.clone().requires_grad_(), k, v, horizon, 0.3)
    assert direct_calls == [1] and torch.equal(tracked.detach(), through_op)
