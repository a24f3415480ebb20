"""Sliding windows by position in the tree attention: the layout's definition, the reference, the op and
FlexAttention.

With a window ``W`` and each packed token's position in its own sequence (a cached prompt key ``j`` at position
``j``), query ``i`` sees key ``j`` iff the horizon rule holds and ``pos(i) - pos(j) < W``. A key is an ancestor of
its query, so this is the window the model applies to the query's own sequence. Every implementation is compared
with ``layout_problems.dense_attention`` (float64, from the definition); the windows are chosen so that they
change the result by far more than the tolerance. The C++ kernel's and Triton's own window tests are
``test_window_cpu_kernel.py`` and ``test_window_triton.py``.
"""

from __future__ import annotations

import pytest
import torch

import scar_kernels.ops as ops
from scar_kernels import extension
from scar_kernels.flex import tree_block_tables
from scar_kernels.layout import visibility
from scar_kernels.tree_attention import tree_attention_reference

from layout_problems import dense_attention, random_forest, tree_positions

ATOL = 2e-5  # fp32 implementations against the float64 definition, outputs of size ~1


def case(n=60, heads=4, kv_heads=2, d=16, prefix=9, seed=0):
    """Random q/k/v, a random forest of ``n`` packed tokens and its positions after a ``prefix``-token prompt."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, d, generator=gen) * 2
    k, v = torch.randn(kv_heads, n, d, generator=gen), torch.randn(kv_heads, n, d, generator=gen)
    pk = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    horizon = random_forest(n, seed)
    return q, k, v, horizon, pk, pv, tree_positions(horizon, prefix)


def check(out, q, k, v, horizon, scale, pk, pv, positions, window, softcap=None, sinks=None, atol=ATOL) -> None:
    want = dense_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks, positions, window)
    if window < int(positions.max()):  # the window must matter for this comparison to mean anything
        assert float((want - dense_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks)).abs().max()) > 1e-2
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=0, atol=atol)


def test_visibility_is_the_definition() -> None:
    """``visibility`` with a window, entry by entry against the rule written out."""
    horizon, prefix, window = random_forest(40, 3), 6, 5
    positions = tree_positions(horizon, prefix)
    got = visibility(horizon, prefix, positions=positions, window=window)
    for i in range(40):
        for j in range(prefix + 40):
            t = j - prefix
            tree = True if t < 0 else t <= i < int(horizon[t])
            key_pos = j if t < 0 else int(positions[t])
            assert bool(got[i, j]) == (tree and int(positions[i]) - key_pos < window), (i, j)
    # every query sees itself, and a window past every position is no window
    assert bool(got[torch.arange(40), prefix + torch.arange(40)].all())
    assert torch.equal(visibility(horizon, prefix, positions=positions, window=10_000), visibility(horizon, prefix))


@pytest.mark.parametrize("window", [1, 3, 8, 10_000])
@pytest.mark.parametrize("prefix", [0, 9])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_reference(window: int, prefix: int, softcap: float | None) -> None:
    q, k, v, horizon, pk, pv, positions = case(prefix=prefix)
    out = tree_attention_reference(q, k, v, horizon, 0.25, pk, pv, softcap, None, positions, window)
    check(out, q, k, v, horizon, 0.25, pk, pv, positions, window, softcap)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("window", [2, 7])
def test_op_on_either_cpu_implementation(native: bool, window: int, monkeypatch) -> None:
    if native and not extension.has_extension():
        pytest.skip("the compiled scar_kernels._C is not built")
    if not native:
        monkeypatch.setattr(extension, "load", lambda: None)
    assert ops.implementation("tree_attention") == ("c++" if native else "torch")
    q, k, v, horizon, pk, pv, positions = case(seed=2)
    sinks = torch.randn(4) + 1
    out = ops.tree_attention(q, k, v, horizon, 0.3, pk, pv, sinks=sinks, positions=positions, window=window)
    check(out, q, k, v, horizon, 0.3, pk, pv, positions, window, sinks=sinks)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_window_past_every_int32_position_is_no_window() -> None:
    q, k, v, horizon, pk, pv, positions = case(n=30, seed=9)
    want = ops.tree_attention(q, k, v, horizon, 0.25, pk, pv)
    for window in (2**31 - 1, 2**31, 10**30):
        got = ops.tree_attention(q, k, v, horizon, 0.25, pk, pv, positions=positions, window=window)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if ops.flex_unavailable_reason("cpu", False) is None:
            flex = ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, positions=positions, window=window,
                                           compiled=False)
            torch.testing.assert_close(flex, want, rtol=0, atol=1e-5)  # another summation order than the kernel


def test_op_opcheck_and_compile() -> None:
    q, k, v, horizon, pk, pv, positions = case(n=14, seed=4)
    args = (q, k, v, horizon, 0.25, pk, pv, None, None, positions, 3)
    torch.library.opcheck(torch.ops.scar.tree_attention.default, args)
    compiled = torch.compile(lambda *a: ops.tree_attention(*a, positions=positions, window=3), fullgraph=True)
    torch.testing.assert_close(
        compiled(q, k, v, horizon, 0.25, pk, pv), ops.tree_attention(*args), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(window=4), ValueError, "needs the pack's positions"),
        (dict(positions="positions"), ValueError, "only with a window"),
        (dict(positions="positions", window=0), ValueError, "int >= 1"),
        (dict(positions="positions", window=True), ValueError, "int >= 1"),
        (dict(positions="positions", window=2.0), ValueError, "int >= 1"),
        (dict(positions="int64", window=4), ValueError, "int32"),
        (dict(positions="short", window=4), ValueError, r"\[20\]"),
        (dict(positions="negative", window=4), ValueError, ">= 0"),
        (dict(positions=[0] * 20, window=4), TypeError, "Tensor"),
    ],
)
def test_bad_windows_are_refused(kwargs: dict, error: type, match: str) -> None:
    q, k, v, horizon, pk, pv, positions = case(n=20, seed=5)
    given = {
        "positions": positions,
        "int64": positions.long(),
        "short": positions[:-1],
        "negative": positions - 100,
    }
    kwargs = {key: given.get(val, val) if isinstance(val, str) else val for key, val in kwargs.items()}
    with pytest.raises(error, match=match):
        ops.tree_attention(q, k, v, horizon, 0.25, pk, pv, **kwargs)
    with pytest.raises(error, match=match):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, **kwargs, compiled=False)


def test_block_tables_keep_every_visible_tile_and_only_full_ones_full() -> None:
    """With a window, ``partial | full`` covers every tile holding a visible pair, and ``full`` exactly the tiles
    whose every pair is visible (padding counted as masked)."""
    horizon, prefix = random_forest(150, 7), 37
    positions = tree_positions(horizon, prefix)
    for window, block in ((4, 16), (40, 32), (10_000, 16)):
        partial, full = tree_block_tables(horizon, prefix, block, positions=positions, window=window)
        vis = visibility(horizon, prefix, positions=positions, window=window)
        n_qb, n_kb = partial.shape
        padded = torch.zeros(n_qb * block, n_kb * block, dtype=torch.bool)
        padded[: vis.shape[0], : vis.shape[1]] = vis
        tiles = padded.view(n_qb, block, n_kb, block)
        assert torch.equal(full, tiles.all(dim=3).all(dim=1))
        assert bool((partial | full)[tiles.any(dim=3).any(dim=1)].all())
        assert not bool((partial & full).any())
        if window == 10_000:  # no window reaches: the exact tables of the plain pack
            assert torch.equal(partial, tiles.any(dim=3).any(dim=1) & ~full)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("prefix", [0, 9, 70])
def test_flex_eager(window: int, prefix: int) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    if ops.flex_unavailable_reason("cpu", False) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", False))
    q, k, v, horizon, pk, pv, positions = case(n=150, prefix=prefix, seed=6)
    sinks = torch.randn(4, 150) + 1
    out = ops.flex_tree_attention(
        q, k, v, horizon, 0.25, pk, pv, softcap=2.0, sinks=sinks, positions=positions, window=window, compiled=False
    )
    check(out, q, k, v, horizon, 0.25, pk, pv, positions, window, softcap=2.0, sinks=sinks)
    # the same through a block mask built once, as a forward's layers share it
    mask = ops.flex_block_mask(horizon, prefix, positions=positions, window=window)
    again = ops.flex_tree_attention(
        q, k, v, horizon, 0.25, pk, pv, 2.0, sinks, positions, window, block_mask=mask, compiled=False
    )
    torch.testing.assert_close(again, out, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("where", ["inside", "outside", "prefix"])
def test_flex_non_finite_key_poisons_only_the_queries_whose_window_holds_it(where: str) -> None:
    """A NaN key makes NaN exactly the queries that see it within the window; every other output is the one with
    that key's rows zeroed (the reference's contract)."""
    if ops.flex_unavailable_reason("cpu", False) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", False))
    q, k, v, horizon, pk, pv, positions = case(n=80, prefix=12, seed=8)
    window = 4
    if where == "prefix":
        pk = pk.clone()
        pk[1, 10] = float("nan")  # position 10: seen by the queries at positions 10..13 only
    else:
        k = k.clone()
        # a root token at position 12 seen by deep queries (outside) or its own next tokens (inside)
        k[0, 0 if where == "outside" else int((horizon > 1).nonzero()[0])] = float("nan")
    out = ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, positions=positions, window=window, compiled=False)
    want = tree_attention_reference(q, k, v, horizon, 0.25, pk, pv, positions=positions, window=window)
    assert torch.equal(out.isnan(), want.isnan())
    assert 0 < int(out.isnan().any(-1).sum()) < out.shape[0] * out.shape[1]
    torch.testing.assert_close(out.nan_to_num(), want.nan_to_num(), rtol=0, atol=1e-5)


def test_compiled_flex_on_cpu_refuses_a_window_with_the_reason() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    if ops.flex_unavailable_reason("cpu", True) is not None:
        pytest.skip(ops.flex_unavailable_reason("cpu", True))
    q, k, v, horizon, pk, pv, positions = case(n=8, seed=6)
    with pytest.raises(RuntimeError, match="mask_mod"):
        ops.flex_tree_attention(q, k, v, horizon, 0.25, pk, pv, positions=positions, window=2, compiled=True)
