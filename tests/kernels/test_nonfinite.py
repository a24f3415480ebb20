"""Non-finite keys in a pack reach only the queries that may see them, in every tree-attention implementation.

A pack holds many coalitions; scoring each coalition alone, a token whose hidden state is inf/NaN makes
only the coalitions that contain it non-finite. So in the pack: a key (k or v row) with an inf or NaN
contributes exactly nothing to a query that may not see it (the output equals the one computed with that
key replaced by finite values), and every query that does see it gets a non-finite output. A cached-prefix
key is seen by every query of its kv heads.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from scar_kernels import extension, flex, ops
from scar_kernels.tree_attention import tree_attention_reference

from extension_marks import isa_supported
from layout_problems import random_forest

# The Triton interpreter warns about inf - inf in its numpy arithmetic; that is the point of these tests.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

BAD_VALUES = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def sees(horizon: torch.Tensor, t: int) -> torch.Tensor:
    """bool [N]: the queries that may attend packed key t (t <= i < horizon[t])."""
    idx = torch.arange(horizon.numel())
    return (idx >= t) & (idx < int(horizon[t]))


# --------------------------------------------------------------------------------------------------
# The implementations, all called as f(q, k, v, horizon, scale, prefix_k, prefix_v)
# --------------------------------------------------------------------------------------------------
def run_reference(*args, **blocks):
    return tree_attention_reference(*args)


def run_cpp(*args, **blocks):
    if not extension.has_extension():
        pytest.skip("scar_kernels._C is not built")
    return extension.load().tree_attention(*args, **blocks)


def run_op(*args, **blocks):
    """The CPU op (the C++ kernel when built, else the reference)."""
    return ops.tree_attention(*args)


def run_triton(q, k, v, horizon, scale, pk, pv, **blocks):
    """The op's CUDA implementation (the Triton kernel): on CPU tensors under the interpreter, else on a GPU."""
    pytest.importorskip("triton")
    if not ops.triton_available():
        pytest.skip("Triton has no usable backend")
    if os.environ.get("TRITON_INTERPRET") == "1":
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1")

    def move(t):
        return None if t is None else t.to(device)

    return ops._tree_attention_cuda(move(q), move(k), move(v), move(horizon), scale, move(pk), move(pv)).cpu()


def run_flex(*args, **blocks):
    """FlexAttention (eager: the compiled run is the same call around the same guard), 16-token tiles so that
    the packs have full, partial and empty tiles."""
    return flex.flex_tree_attention(*args, compiled=False, block_size=16)


IMPLS = {"reference": run_reference, "c++": run_cpp, "op": run_op, "triton": run_triton, "flex": run_flex}


def make_inputs(h, hkv, n, d, p, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def mk(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return mk(h, n, d), mk(hkv, n, d), mk(hkv, n, d), (mk(hkv, p, d) if p else None), (mk(hkv, p, d) if p else None)


def check_only_viewers_poisoned(impl, h, hkv, n, d, p, dtype, seed, where, value, kv_head=None, **blocks):
    """Plant ``value`` in ``where`` ("k", "v", "kv", "qkv") of one packed token of one kv head (all when
    ``kv_head`` is None); rows that cannot see it must equal the rows computed with finite values there, and
    every row that sees it must be non-finite."""
    q, k, v, pk, pv = make_inputs(h, hkv, n, d, p, dtype, seed)
    horizon = random_forest(n, seed)
    rng = random.Random(seed)
    t = rng.randrange(1, n)  # t > 0: query 0 never sees it
    heads = range(hkv) if kv_head is None else [kv_head]
    scale = d**-0.5

    bad_q, bad_k, bad_v = q.clone(), k.clone(), v.clone()
    dim = rng.randrange(d)
    for hk in heads:
        if "k" in where:
            bad_k[hk, t, dim] = value
        if "v" in where:
            bad_v[hk, t, (dim + 1) % d] = value
        if "q" in where:  # the token's own query too, as when its hidden state is non-finite
            for hq in range(hk * (h // hkv), (hk + 1) * (h // hkv)):
                bad_q[hq, t, dim] = value
    inputs = (bad_q, bad_k, bad_v)
    saved = tuple(x.clone() for x in inputs)
    out = IMPLS[impl](bad_q, bad_k, bad_v, horizon, scale, pk, pv, **blocks)
    for before, after in zip(saved, inputs):  # inputs are never sanitised in place
        assert torch.equal(before.isnan(), after.isnan())
        assert torch.equal(before.nan_to_num(), after.nan_to_num())

    # The same token with finite (large, to show they would matter) k/v/q instead.
    fin_q, fin_k, fin_v = q.clone(), k.clone(), v.clone()
    for hk in heads:
        fin_k[hk, t] = 1e3
        fin_v[hk, t] = -1e3
    expected = IMPLS[impl](fin_q, fin_k, fin_v, horizon, scale, pk, pv, **blocks)
    assert torch.isfinite(expected).all()

    poisoned = torch.zeros(h, n, dtype=torch.bool)
    for hk in heads:
        poisoned[hk * (h // hkv) : (hk + 1) * (h // hkv)] = sees(horizon, t)
    assert poisoned.any() and (~poisoned).any()
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out[~poisoned]).all()
    # Exactly nothing: a masked key gets p = 0 and a zeroed value in every implementation.
    assert torch.equal(out[~poisoned], expected[~poisoned])
    assert not torch.isfinite(out[poisoned]).any()  # every element of every row that sees the key


@pytest.mark.parametrize("impl", ["reference", "c++", "op", "flex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("where", ["k", "v", "kv", "qkv"])
@pytest.mark.parametrize("value", sorted(BAD_VALUES))
def test_cpu_implementations(impl, dtype, where, value):
    seed = len(where) * 7 + len(value)
    check_only_viewers_poisoned(impl, 2, 2, 150, 16, 0, dtype, seed, where, BAD_VALUES[value])


@pytest.mark.parametrize("impl", ["reference", "c++", "flex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_grouped_query_attention_and_prefix(impl, dtype, seed):
    """H = 4 query heads over Hkv = 2: a bad key of kv head 1 reaches only query heads 2 and 3."""
    check_only_viewers_poisoned(impl, 4, 2, 130, 24, 5, dtype, seed, "kv", float("nan"), kv_head=1)
    check_only_viewers_poisoned(impl, 4, 1, 90, 16, 3, dtype, seed, "v", float("inf"))


@pytest.mark.parametrize("block_q,block_k", [(16, 8), (7, 32), (64, 64)])
@pytest.mark.parametrize("seed", range(4))
def test_cpp_block_sizes(block_q, block_k, seed):
    """Small blocks reach the kernel's fully visible blocks, blocks a query sees nothing of, ragged ends."""
    for where, value in (("v", float("nan")), ("k", float("inf")), ("kv", float("-inf"))):
        check_only_viewers_poisoned(
            "c++", 2, 1, 100, 8, 0, torch.float32, seed, where, value, block_q=block_q, block_k=block_k
        )


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
@pytest.mark.parametrize("block_q,block_k", [(32, 48), (5, 7)])
def test_cpp_vector_builds(isa, block_q, block_k):
    """Every vector build of the C++ kernel (skipped where this CPU cannot run it), with GQA and a prefix: the
    zero rows read for a bad key leave every other output bit-identical."""
    if not extension.has_extension():
        pytest.skip("scar_kernels._C is not built")
    if not isa_supported(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")
    blocks = {"block_q": block_q, "block_k": block_k, "isa": isa}
    for seed, (where, value) in enumerate((("v", float("nan")), ("k", float("inf")), ("kv", float("-inf")))):
        check_only_viewers_poisoned("c++", 4, 2, 120, 20, 3, torch.float32, seed, where, value, kv_head=1, **blocks)
        check_only_viewers_poisoned("c++", 2, 1, 100, 64, 0, torch.float32, seed, where, value, **blocks)


@pytest.mark.parametrize("where", ["k", "v", "qkv"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_triton(where, value):
    check_only_viewers_poisoned("triton", 2, 2, 70, 16, 0, torch.float32, 3, where, BAD_VALUES[value])


def test_triton_grouped_query_attention_prefix_and_fp16():
    check_only_viewers_poisoned("triton", 4, 2, 70, 16, 4, torch.float32, 5, "kv", float("nan"), kv_head=0)
    check_only_viewers_poisoned("triton", 2, 1, 40, 16, 0, torch.float16, 6, "v", float("-inf"))


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_visible_key_scoring_minus_inf_is_not_silently_dropped(impl):
    """k = +inf against a negative query component scores -inf, which softmax alone turns into p = 0 and a
    finite output; a query that sees a non-finite key must still come out non-finite."""
    q, k, v, _, _ = make_inputs(2, 2, 40, 16, 0, torch.float32, 9)
    q[..., 0] = -1.0
    horizon = random_forest(40, 9)
    t = 17
    k[:, t, 0] = float("inf")
    out = IMPLS[impl](q, k, v, horizon, 0.25, None, None)
    viewers = sees(horizon, t)
    assert not torch.isfinite(out[:, viewers]).any()
    assert torch.isfinite(out[:, ~viewers]).all()


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("where", ["k", "v"])
def test_nonfinite_prefix_key_poisons_every_query_of_its_heads(impl, where):
    q, k, v, pk, pv = make_inputs(4, 2, 40, 16, 6, torch.float32, 11)
    horizon = random_forest(40, 11)
    target = pk if where == "k" else pv
    target[0, 2, 3] = float("nan")  # kv head 0 serves query heads 0 and 1
    out = IMPLS[impl](q, k, v, horizon, 0.25, pk, pv)
    assert not torch.isfinite(out[:2]).any()
    target[0, 2, 3] = 1.0
    expected = IMPLS[impl](q, k, v, horizon, 0.25, pk, pv)
    assert torch.equal(out[2:], expected[2:])


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_finite_inputs_match_the_reference(impl):
    """The guard changes nothing when every input is finite."""
    q, k, v, pk, pv = make_inputs(4, 2, 70, 16, 3, torch.float32, 13)
    horizon = random_forest(70, 13)
    out = IMPLS[impl](q, k, v, horizon, 0.25, pk, pv)
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, 0.25, pk, pv), atol=2e-5, rtol=0)


def test_float64_is_refused_with_a_pointer_to_the_mask_path():
    q, k, v, _, _ = make_inputs(2, 2, 10, 8, 0, torch.float64, 0)
    horizon = random_forest(10, 0)
    with pytest.raises(TypeError, match=r'float64.*not support.*attention="mask"'):
        tree_attention_reference(q, k, v, horizon, 0.5)
    with pytest.raises(TypeError, match=r'float64.*not support.*attention="mask"'):
        ops.tree_attention(q, k, v, horizon)
    with pytest.raises(TypeError, match=r'float64.*not support.*attention="mask"'):
        ops.flex_tree_attention(q, k, v, horizon, compiled=False)
    if extension.has_extension():
        with pytest.raises(TypeError, match=r'float64.*not support.*attention="mask"'):
            extension.load().tree_attention(q, k, v, horizon, 0.5)
