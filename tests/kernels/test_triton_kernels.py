"""Triton kernels (tree attention, dense mask) under the Triton CPU interpreter.

TRITON_INTERPRET=1 must be set before any Triton kernel is defined; scar_kernels defines its kernels
lazily on first launch, so setting it at import time of this module is enough.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"


import pytest
import torch

pytest.importorskip("triton")

from scar_kernels.dense_mask import dense_mask
from scar_kernels.layout import additive_mask
from scar_kernels.tree_attention import (
    block_max_horizon,
    block_skip_stats,
    tree_attention,
    tree_attention_reference,
)

from layout_problems import random_forest


def make_qkv(h, hkv, n, d, p=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(h, n, d, generator=g).to(dtype)
    k = torch.randn(hkv, n, d, generator=g).to(dtype)
    v = torch.randn(hkv, n, d, generator=g).to(dtype)
    pk = torch.randn(hkv, p, d, generator=g).to(dtype) if p else None
    pv = torch.randn(hkv, p, d, generator=g).to(dtype) if p else None
    return q, k, v, pk, pv


def check(q, k, v, horizon, pk=None, pv=None, atol=2e-5, **kw):
    scale = q.shape[-1] ** -0.5
    out = tree_attention(q, k, v, horizon, scale, pk, pv, **kw)
    ref = tree_attention_reference(q, k, v, horizon, scale, pk, pv)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("n,seed", [(37, 0), (70, 1), (129, 2)])
def test_random_forests_match_reference(n, seed):
    q, k, v, _, _ = make_qkv(2, 2, n, 32, seed=seed)
    check(q, k, v, random_forest(n, seed))


def test_deep_chain_is_causal_attention():
    n = 50
    horizon = torch.full((n,), n, dtype=torch.int32)  # one chain: every key visible to all later queries
    q, k, v, _, _ = make_qkv(2, 1, n, 16)
    out = tree_attention(q, k, v, horizon, 0.25)
    causal = torch.nn.functional.scaled_dot_product_attention(
        q, k.expand(2, -1, -1), v.expand(2, -1, -1), is_causal=True, scale=0.25
    )
    torch.testing.assert_close(out, causal, atol=2e-5, rtol=0)


def test_single_token_nodes_and_separate_chains():
    n = 45
    q, k, v, _, _ = make_qkv(2, 2, n, 16, seed=3)
    check(q, k, v, random_forest(n, 7, max_node=1))
    # A forest of three chains (plain packing of separate sequences).
    horizon = torch.tensor([15] * 15 + [31] * 16 + [45] * 14, dtype=torch.int32)
    check(q, k, v, horizon)


@pytest.mark.parametrize("h,hkv", [(4, 1), (4, 2), (6, 3)])
def test_grouped_query_attention(h, hkv):
    q, k, v, _, _ = make_qkv(h, hkv, 40, 16, seed=h + hkv)
    check(q, k, v, random_forest(40, 11))


@pytest.mark.parametrize("p", [1, 5, 70])
def test_cached_prefix(p):
    q, k, v, pk, pv = make_qkv(4, 2, 33, 16, p=p, seed=p)
    check(q, k, v, random_forest(33, p), pk, pv)


def test_empty_prefix_equals_no_prefix():
    q, k, v, _, _ = make_qkv(2, 2, 20, 16)
    horizon = random_forest(20, 4)
    empty = torch.empty(2, 0, 16)
    torch.testing.assert_close(
        tree_attention(q, k, v, horizon, 0.3, empty, empty), tree_attention(q, k, v, horizon, 0.3)
    )


@pytest.mark.parametrize("d", [16, 48, 128])
def test_head_dims(d):
    q, k, v, pk, pv = make_qkv(2, 1, 24, d, p=3, seed=d)
    check(q, k, v, random_forest(24, d), pk, pv)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_inputs_accumulate_in_fp32(dtype, atol):
    q, k, v, pk, pv = make_qkv(4, 2, 40, 32, p=4, dtype=dtype, seed=5)
    check(q, k, v, random_forest(40, 5), pk, pv, atol=atol)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (16, 64)])
def test_block_sizes_and_ragged_last_block(block_m, block_n):
    n = 53  # not a multiple of any block size
    q, k, v, pk, pv = make_qkv(2, 1, n, 16, p=2, seed=block_m + block_n)
    check(q, k, v, random_forest(n, 9), pk, pv, block_m=block_m, block_n=block_n)


def test_skipped_key_blocks_are_never_read():
    # Two trees of 32 tokens: with 16x16 tiles, key blocks of the first tree are invisible to the
    # second tree's queries. NaNs planted there would poison any tile the kernel computed.
    horizon = torch.cat([random_forest(32, 1), random_forest(32, 2) + 32])
    q, k, v, _, _ = make_qkv(2, 2, 64, 16, seed=8)
    stats = block_skip_stats(horizon, 16, 16)
    assert stats.tree_tiles < stats.causal_tiles
    out = tree_attention(q, k, v, horizon, 0.25, block_m=16, block_n=16)
    ref = tree_attention_reference(q, k, v, horizon, 0.25)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :16] = float("nan")
    v_bad[:, :16] = float("nan")
    out_bad = tree_attention(q, k_bad, v_bad, horizon, 0.25, block_m=16, block_n=16)
    torch.testing.assert_close(out_bad[:, 32:], ref[:, 32:], atol=2e-5, rtol=0)
    torch.testing.assert_close(out[:, 32:], ref[:, 32:], atol=2e-5, rtol=0)
    assert torch.isnan(out_bad[:, :16]).all()  # ...whereas the first tree does read them


def test_block_skip_stats_counts():
    # Two separate 64-token sequences, 64x64 tiles: dense 4 tiles, causal 3, tree 2.
    horizon = torch.tensor([64] * 64 + [128] * 64, dtype=torch.int32)
    s = block_skip_stats(horizon, 64, 64)
    assert (s.dense_tiles, s.causal_tiles, s.tree_tiles) == (4, 3, 2)
    assert s.skipped_vs_dense == pytest.approx(0.5)
    assert s.visible_pairs == 2 * (64 * 65 // 2)
    assert s.tree_pairs == 2 * 64 * 64
    with_prefix = block_skip_stats(horizon, 64, 64, prefix_len=10)
    assert with_prefix.dense_tiles == 2 * 3 and with_prefix.tree_tiles == 2 + 2
    assert with_prefix.visible_pairs == s.visible_pairs + 128 * 10
    assert block_max_horizon(horizon, 64).tolist() == [64, 128]


def test_bad_inputs_raise_clear_errors(monkeypatch):
    q, k, v, pk, _pv = make_qkv(2, 1, 20, 16, p=2)
    horizon = random_forest(20, 0)
    with pytest.raises(TypeError, match="horizon must be int32"):
        tree_attention(q, k, v, horizon.long())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        tree_attention(q.to(torch.int32), k, v, horizon)
    with pytest.raises(TypeError, match="share one dtype"):
        tree_attention(q, k.half(), v, horizon)
    with pytest.raises(ValueError, match="contiguous"):
        tree_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, horizon)
    with pytest.raises(ValueError, match="k has 19 tokens"):
        tree_attention(q, k[:, :19].contiguous(), v[:, :19].contiguous(), horizon)
    with pytest.raises(ValueError, match=r"horizon must have shape \[20\]"):
        tree_attention(q, k, v, horizon[:19])
    bad = horizon.clone()
    bad[3] = 3
    with pytest.raises(ValueError, match=r"horizon\[3\] = 3"):
        tree_attention(q, k, v, bad)
    bad[3] = 21
    with pytest.raises(ValueError, match="<= N=20"):
        tree_attention(q, k, v, bad)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        tree_attention(q, torch.randn(3, 20, 16), torch.randn(3, 20, 16), horizon)
    with pytest.raises(ValueError, match="both prefix_k and prefix_v"):
        tree_attention(q, k, v, horizon, None, pk, None)
    with pytest.raises(ValueError, match="prefix_k must have shape"):
        tree_attention(q, k, v, horizon, None, torch.randn(2, 2, 16), torch.randn(2, 2, 16))
    with pytest.raises(ValueError, match="head_dim must be in"):
        tree_attention(torch.randn(2, 20, 8), torch.randn(1, 20, 8), torch.randn(1, 20, 8), horizon)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA"):
        tree_attention(q, k, v, horizon)


# --------------------------------------------------------------------------------------------------
# scar_kernels.dense_mask
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prefix_len", [0, 5])
def test_dense_mask_matches_reference(dtype, prefix_len):
    horizon = random_forest(45, 3)
    got = dense_mask(horizon, prefix_len, dtype)
    ref = additive_mask(horizon, prefix_len, dtype=dtype)
    assert got.shape == (45, 45 + prefix_len) and got.dtype == dtype
    assert torch.equal(got, ref)
    visible = got == 0
    assert visible[:, :prefix_len].all()
    q, kk = 30, 12
    assert bool(visible[q, prefix_len + kk]) == (kk <= q < int(horizon[kk]))


def test_dense_mask_bad_input():
    with pytest.raises(TypeError, match="int32"):
        dense_mask(torch.ones(4), 0)
    with pytest.raises(ValueError, match="prefix_len"):
        dense_mask(torch.ones(4, dtype=torch.int32), -1)


# --------------------------------------------------------------------------------------------------
# The ops' CUDA implementations, run on CPU tensors through the interpreter
# --------------------------------------------------------------------------------------------------
def test_cuda_impl_of_tree_attention_op_uses_the_triton_kernel():
    from scar_kernels import ops

    q, k, v, pk, pv = make_qkv(4, 2, 30, 16, p=3, seed=21)
    horizon = random_forest(30, 21)
    out = ops._tree_attention_cuda(q, k, v, horizon, 0.25, pk, pv)
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, 0.25, pk, pv), atol=2e-5, rtol=0)


def test_cuda_impl_of_dense_mask_op_uses_the_triton_kernel():
    from scar_kernels import ops

    horizon = random_forest(40, 5)
    assert torch.equal(ops._dense_mask_cuda(horizon, 3, torch.float16), additive_mask(horizon, 3, dtype=torch.float16))
