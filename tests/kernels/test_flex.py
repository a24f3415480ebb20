"""FlexAttention over a pack: the O(N) block-mask builder against the dense mask of a horizon, and
``flex_tree_attention`` against the dense torch reference (eager; one small case compiled)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scar_kernels.flex as flex
import scar_kernels.ops as ops
from scar_kernels.layout import build_pack_reference, visibility
from scar_kernels.tree_attention import tree_attention_reference

from layout_problems import forests, random_forest, to_args

fa = pytest.importorskip("torch.nn.attention.flex_attention")

# Compiling flex_attention imports parts of torch that warn about their own deprecations.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit._script")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dense_tables(horizon: torch.Tensor, prefix_len: int, block_q: int, block_kv: int):
    """(partial, full) tile tables from the dense visibility, padding counted as masked (create_block_mask's rule)."""
    vis = visibility(horizon, prefix_len)
    n, total = vis.shape
    n_qb, n_kb = -(-n // block_q), -(-total // block_kv)
    padded = torch.zeros(n_qb * block_q, n_kb * block_kv, dtype=torch.bool)
    padded[:n, :total] = vis
    tiles = padded.view(n_qb, block_q, n_kb, block_kv).permute(0, 2, 1, 3).reshape(n_qb, n_kb, -1)
    full = tiles.all(-1)
    return tiles.any(-1) & ~full, full


def expand(block_mask, horizon: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The element mask a BlockMask stands for: full tiles, partial tiles through their mask_mod, else nothing."""
    n = horizon.shape[0]
    total = prefix_len + n
    bq, bk = block_mask.BLOCK_SIZE
    n_qb, n_kb = -(-n // bq), -(-total // bk)

    def table(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n_qb, n_kb, dtype=torch.bool)
        for row in range(n_qb):
            out[row, indices[0, 0, row, : int(counts[0, 0, row])].long()] = True
        return out

    partial = table(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = table(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    q = torch.arange(n)[:, None]
    kv = torch.arange(total)[None, :]
    zero = torch.zeros((), dtype=torch.int64)
    element = block_mask.mask_mod(zero, zero, q, kv)
    tile_partial = partial[q // bq, kv // bk]
    tile_full = full[q // bq, kv // bk]
    assert not (tile_partial & tile_full).any()
    return tile_full | (tile_partial & element)


def check_builder(horizon: torch.Tensor, prefix_len: int, block_size) -> None:
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    partial, full = flex.tree_block_tables(horizon, prefix_len, block_size)
    want_partial, want_full = dense_tables(horizon, prefix_len, bq, bk)
    # Exact: no visible tile is skipped, no tile is computed for nothing, full tiles really are full.
    assert torch.equal(full, want_full)
    assert torch.equal(partial, want_partial)
    mask = flex.tree_block_mask(horizon, prefix_len, block_size)
    assert tuple(mask.seq_lengths) == (horizon.shape[0], prefix_len + horizon.shape[0])
    assert torch.equal(expand(mask, horizon, prefix_len), visibility(horizon, prefix_len))


@SETTINGS
@given(
    forests(max_responses=4, max_coalitions=14),
    st.integers(0, 9),
    st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9), st.integers(1, 9)), st.just(128)),
)
def test_block_tables_equal_the_dense_mask_on_random_forests(problem, prefix_len, block_size) -> None:
    """Random packs from the builder, any prefix length, block sizes that do not divide N, N below one block."""
    horizon = build_pack_reference(*to_args(*problem)).horizon
    check_builder(horizon, prefix_len, block_size)


@pytest.mark.parametrize(
    "n, prefix_len, block_size",
    [(300, 0, 16), (300, 0, 128), (257, 5, (32, 16)), (64, 64, 64), (1, 0, 128), (5, 200, 7), (200, 3, (16, 48))],
)
def test_block_tables_on_larger_forests(n, prefix_len, block_size) -> None:
    horizon = random_forest(n, seed=n + prefix_len, max_node=6)
    check_builder(horizon, prefix_len, block_size)


def test_chains_have_full_tiles_and_skip_other_trees() -> None:
    """Two plain causal chains of 64 tokens, 16-token tiles: below the diagonal of a chain every tile is full,
    tiles across the two chains are empty, diagonal tiles partial."""
    horizon = torch.tensor([64] * 64 + [128] * 64, dtype=torch.int32)
    partial, full = flex.tree_block_tables(horizon, 0, 16)
    qb, kb = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    same_chain = (qb // 4) == (kb // 4)
    assert torch.equal(full, same_chain & (kb < qb))
    assert torch.equal(partial, same_chain & (kb == qb))


def test_the_tables_are_create_block_masks_own() -> None:
    """The builder's BlockMask holds the same index tensors as create_block_mask over the dense rule."""
    horizon = random_forest(300, seed=3)
    vis = visibility(horizon, 7)

    def mask_mod(b, h, q, kv):
        return vis[q, kv]

    want = fa.create_block_mask(mask_mod, None, None, 300, 307, device="cpu", BLOCK_SIZE=32, separate_full_blocks=True)
    got = flex.tree_block_mask(horizon, 7, 32)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_builder_rejects_bad_input() -> None:
    horizon = random_forest(20, seed=1)
    bad = horizon.clone()
    bad[4] = 4
    with pytest.raises(ValueError, match="horizon"):
        flex.tree_block_tables(bad)
    with pytest.raises(ValueError, match="integer"):
        flex.tree_block_tables(horizon.float())
    with pytest.raises(ValueError, match="prefix_len"):
        flex.tree_block_tables(horizon, -1)
    with pytest.raises(ValueError, match="block sizes"):
        flex.tree_block_tables(horizon, 0, 0)
    with pytest.raises(TypeError, match="block_size"):
        flex.tree_block_tables(horizon, 0, (16, 16, 16))


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
def qkv(h, hkv, n, d, p, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return mk(h, n, d), mk(hkv, n, d), mk(hkv, n, d), (mk(hkv, p, d) if p else None), (mk(hkv, p, d) if p else None)


@pytest.mark.parametrize(
    "h, hkv, n, p, block_size",
    [(4, 4, 150, 0, 128), (4, 2, 150, 0, 16), (4, 1, 97, 6, (16, 8)), (2, 2, 1, 3, 128), (6, 3, 130, 40, 32)],
)
def test_eager_flex_equals_the_reference(h, hkv, n, p, block_size) -> None:
    q, k, v, pk, pv = qkv(h, hkv, n, 16, p, seed=n + p)
    horizon = random_forest(n, seed=n)
    out = flex.flex_tree_attention(q, k, v, horizon, 0.3, pk, pv, compiled=False, block_size=block_size)
    expected = tree_attention_reference(q, k, v, horizon, 0.3, pk, pv)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # A plain causal mask over the same pack gives another answer: the tree rule was applied.
    causal = flex.flex_tree_attention(q, k, v, torch.full_like(horizon, n), 0.3, pk, pv, compiled=False)
    assert n == 1 or not torch.allclose(out, causal, atol=1e-3)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_eager_flex_half_types(dtype, atol) -> None:
    q, k, v, pk, pv = qkv(4, 2, 70, 16, 3, dtype, seed=2)
    horizon = random_forest(70, seed=2)
    out = ops.flex_tree_attention(q, k, v, horizon, None, pk, pv, compiled=False)
    assert out.dtype == dtype
    expected = tree_attention_reference(q, k, v, horizon, 16**-0.5, pk, pv)
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=0)


def test_shared_block_mask_and_its_shape_check() -> None:
    q, k, v, pk, pv = qkv(4, 2, 50, 16, 4, seed=4)
    horizon = random_forest(50, seed=4)
    mask = ops.flex_block_mask(horizon, 4)
    out = ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, block_mask=mask, compiled=False)
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, 0.25, pk, pv), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="block_mask is for"):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, block_mask=mask, compiled=False)  # no prefix: 50 keys


def test_unavailable_flex_is_named(monkeypatch) -> None:
    assert "not on 'meta'" in flex.flex_unavailable_reason("meta")
    assert ops.implementation("flex_attention", "meta") == "none"
    monkeypatch.setattr(flex, "_flex_module", lambda: None)
    reason = flex.flex_unavailable_reason("cpu")
    assert reason is not None and "flex_attention" in reason
    assert ops.implementation("flex_attention") == "none"
    q, k, v, _, _ = qkv(2, 2, 8, 16, 0)
    with pytest.raises(RuntimeError, match=r"no torch.nn.attention.flex_attention"):
        ops.flex_tree_attention(q, k, v, random_forest(8, 0), compiled=False)
    monkeypatch.setattr(flex.shutil, "which", lambda name: None)
    monkeypatch.setattr(flex, "_flex_module", lambda: fa)
    assert "C++ compiler" in flex.flex_unavailable_reason("cpu", compiled=True)
    assert flex.flex_unavailable_reason("cpu", compiled=False) is None


def test_implementation_names_the_flex_mode(monkeypatch) -> None:
    monkeypatch.setitem(flex.COMPILE_BY_DEVICE, "cpu", False)
    assert ops.implementation("flex_attention") == "flex-eager"
    monkeypatch.setitem(flex.COMPILE_BY_DEVICE, "cpu", True)
    expected = "flex-compiled" if flex.flex_unavailable_reason("cpu") is None else "none"
    assert ops.implementation("flex_attention") == expected


def test_compiled_flex_equals_the_reference() -> None:
    """The compiled path, on one small case (compiling takes most of this test's time)."""
    if flex.flex_unavailable_reason("cpu", compiled=True) is not None:
        pytest.skip(flex.flex_unavailable_reason("cpu", compiled=True))
    q, k, v, pk, pv = qkv(4, 2, 150, 16, 5, seed=7)
    horizon = random_forest(150, seed=7)
    out = ops.flex_tree_attention(q, k, v, horizon, 0.3, pk, pv, compiled=True)
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, 0.3, pk, pv), atol=1e-5, rtol=0)
    # Another length reuses the compiled function (dynamic shapes) and is still exact.
    q2, k2, v2, pk2, pv2 = qkv(4, 2, 70, 16, 5, seed=8)
    h2 = random_forest(70, seed=8)
    out2 = ops.flex_tree_attention(q2, k2, v2, h2, 0.3, pk2, pv2, compiled=True)
    torch.testing.assert_close(out2, tree_attention_reference(q2, k2, v2, h2, 0.3, pk2, pv2), atol=1e-5, rtol=0)
