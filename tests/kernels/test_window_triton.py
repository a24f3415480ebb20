"""Sliding-window attention in the Triton tree-attention kernel, under the Triton CPU interpreter.

With a ``window`` and the pack's ``positions``, query ``i`` sees a key only if it would without a window and
``positions[i] - position(key) < window`` (cached prefix key ``p`` sits at position ``p``). The kernel is compared
with the float64 definition (``layout_problems.dense_attention``): fp32 to 1e-5, fp16 to 3e-3 (outputs of size ~1).

TRITON_INTERPRET=1 is set before the Triton kernel is first defined (it is defined lazily on first launch).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

pytest.importorskip("triton")

from scar_kernels.layout import visibility
from scar_kernels.tree_attention import tree_attention, tree_attention_reference

from layout_problems import dense_attention, random_forest, tree_positions

# The interpreter warns about inf - inf in its numpy arithmetic, which the non-finite keys cause.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

ATOL = 1e-5  # fp32 kernel against the float64 definition
ATOL_FP16 = 3e-3


def case(n=60, heads=2, kv_heads=1, d=16, prefix=0, seed=0, dtype=torch.float32, sinks=False):
    """Random q/k/v, a random forest, its tree positions, an optional prefix and optional per-head sinks."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, d, generator=gen)
    k, v = torch.randn(kv_heads, n, d, generator=gen), torch.randn(kv_heads, n, d, generator=gen)
    pk = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    sink = torch.randn(heads, generator=gen) + 1 if sinks else None
    cast = lambda t: None if t is None else t.to(dtype).contiguous()
    horizon = random_forest(n, seed)
    return cast(q), cast(k), cast(v), horizon, cast(pk), cast(pv), sink, tree_positions(horizon, prefix)


def check(q, k, v, horizon, pk, pv, positions, window, softcap=None, sinks=None, atol=ATOL, **blocks):
    scale = q.shape[-1] ** -0.5
    out = tree_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks, positions, window, **blocks)
    want = dense_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks, positions, window)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=0, atol=atol)
    return out


# prefix 40 is longer than every window here, so whole prefix blocks are skipped.
@pytest.mark.parametrize(
    "window, prefix, block_m, block_n",
    [
        (1, 0, 16, 16),
        (1, 40, 32, 16),
        (3, 0, 32, 16),
        (3, 4, 16, 32),
        (3, 40, 16, 16),
        (9, 0, 16, 32),
        (9, 4, 16, 16),
        (9, 40, 32, 16),
        (9, 40, 16, 32),
    ],
)
def test_windows_match_definition(window: int, prefix: int, block_m: int, block_n: int) -> None:
    q, k, v, horizon, pk, pv, _, pos = case(n=53, prefix=prefix, seed=window + prefix)
    check(q, k, v, horizon, pk, pv, pos, window, block_m=block_m, block_n=block_n)


def test_window_changes_the_result() -> None:
    """The cases above are not vacuous: a window of 3 changes the output by far more than the tolerance."""
    q, k, v, horizon, pk, pv, _, pos = case(n=53, prefix=4, seed=1)
    windowed = tree_attention(q, k, v, horizon, 0.25, pk, pv, positions=pos, window=3)
    plain = tree_attention(q, k, v, horizon, 0.25, pk, pv)
    assert float((windowed - plain).abs().max()) > 100 * ATOL


def test_window_of_one_sees_only_the_query_itself() -> None:
    """Packed keys sit at positions >= P and ancestors at smaller ones, so a window of 1 leaves each query only
    its own key: the output is its own value row."""
    q, k, v, horizon, pk, pv, _, pos = case(n=40, heads=4, kv_heads=2, prefix=6, seed=2)
    out = tree_attention(q, k, v, horizon, 0.5, pk, pv, positions=pos, window=1, block_m=16, block_n=16)
    torch.testing.assert_close(out, v.repeat_interleave(2, 0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefix", [0, 7])
def test_window_beyond_every_position_equals_no_window(prefix: int) -> None:
    q, k, v, horizon, pk, pv, _, pos = case(n=50, heads=2, kv_heads=2, prefix=prefix, seed=3)
    window = int(pos.max()) + 1
    for blocks in ({}, {"block_m": 16, "block_n": 16}):
        plain = tree_attention(q, k, v, horizon, 0.3, pk, pv, **blocks)
        windowed = tree_attention(q, k, v, horizon, 0.3, pk, pv, positions=pos, window=window, **blocks)
        torch.testing.assert_close(windowed, plain, rtol=0, atol=0)


def test_chain_skips_key_blocks_behind_the_window() -> None:
    """One chain (causal attention) with a short window: later query blocks skip whole key blocks and the
    prefix; a middle window reaches from the packed keys back into the prefix for the first queries."""
    n, prefix = 96, 20
    q, k, v, _, pk, pv, _, _ = case(n=n, prefix=prefix, seed=4)
    horizon = torch.full((n,), n, dtype=torch.int32)
    pos = tree_positions(horizon, prefix)
    for window in (5, 30):
        check(q, k, v, horizon, pk, pv, pos, window, block_m=16, block_n=16)


def test_every_window_on_a_chain() -> None:
    """Sixteen consecutive windows with 16x16 tiles: the prefix loop's first block meets every offset of the window's
    edge against a block boundary, and a window of 2 puts the edge on the last key of the previous key block."""
    n, prefix = 32, 20
    q, k, v, _, pk, pv, _, _ = case(n=n, heads=1, prefix=prefix, seed=10)
    horizon = torch.full((n,), n, dtype=torch.int32)
    pos = tree_positions(horizon, prefix)
    for window in range(1, 17):
        check(q, k, v, horizon, pk, pv, pos, window, block_m=16, block_n=16)


def test_arbitrary_positions() -> None:
    """The kernel reads positions as given (not only tree positions): any non-negative int32 positions."""
    q, k, v, horizon, pk, pv, _, _ = case(n=64, prefix=24, seed=5)
    pos = torch.randint(0, 60, (64,), generator=torch.Generator().manual_seed(5), dtype=torch.int32)
    for window in (2, 17):
        check(q, k, v, horizon, pk, pv, pos, window, block_m=16, block_n=16)


@pytest.mark.parametrize("heads, kv_heads", [(4, 1), (6, 3)])
def test_grouped_query_attention(heads: int, kv_heads: int) -> None:
    q, k, v, horizon, pk, pv, _, pos = case(n=45, heads=heads, kv_heads=kv_heads, prefix=10, seed=heads)
    check(q, k, v, horizon, pk, pv, pos, 6)


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("prefix", [0, 12])
def test_softcap_and_sinks_compose(window: int, prefix: int) -> None:
    q, k, v, horizon, pk, pv, sinks, pos = case(n=50, heads=4, kv_heads=2, prefix=prefix, seed=6, sinks=True)
    q = q * 3  # scores of several units, so that the cap bites
    out = check(q, k, v, horizon, pk, pv, pos, window, softcap=1.5, sinks=sinks, block_m=16, block_n=16)
    uncapped = dense_attention(q, k, v, horizon, 0.25, pk, pv, None, sinks, pos, window)
    assert float((out.double() - uncapped).abs().max()) > 100 * ATOL


def test_fp16_inputs() -> None:
    q, k, v, horizon, pk, pv, sinks, pos = case(n=48, heads=4, kv_heads=2, prefix=9, seed=7, dtype=torch.float16)
    check(q, k, v, horizon, pk, pv, pos, 5, softcap=2.0, sinks=sinks, atol=ATOL_FP16)


@pytest.mark.parametrize("where", ["packed", "prefix"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_key_poisons_only_the_queries_whose_window_holds_it(where: str, bad: float) -> None:
    """Queries that see the bad key under the windowed rule get NaN; the others equal the output with a finite
    key there, as if the key did not exist for them."""
    n, prefix, window = 64, 30, 4
    q, k, v, horizon, pk, pv, _, pos = case(n=n, heads=2, kv_heads=1, prefix=prefix, seed=8)
    horizon = torch.full((n,), n, dtype=torch.int32)  # one chain: the bad key lies in some queries' windows only
    pos = tree_positions(horizon, prefix)
    k_bad, pk_bad = k.clone(), pk.clone()
    if where == "prefix":
        col = prefix - 2  # prefix key 28: in the windows of the first two queries only
        pk_bad[:, col, 3] = bad
    else:
        col = prefix + 20  # packed key 20: in the windows of queries 20..23
        k_bad[:, 20, 3] = bad
    sees = visibility(horizon, prefix, positions=pos, window=window)[:, col]
    assert sees.any() and not sees.all()
    out = tree_attention(q, k_bad, v, horizon, 0.25, pk_bad, pv, positions=pos, window=window, block_m=16, block_n=16)
    assert torch.isnan(out[:, sees]).all()
    want = dense_attention(q, k, v, horizon, 0.25, pk, pv, positions=pos, window=window)
    torch.testing.assert_close(out[:, ~sees].double(), want[:, ~sees], rtol=0, atol=ATOL)
    ref = tree_attention_reference(q, k_bad, v, horizon, 0.25, pk_bad, pv, positions=pos, window=window)
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL, equal_nan=True)


def test_window_and_positions_are_checked() -> None:
    q, k, v, horizon, _, _, _, pos = case(n=20, seed=9)
    with pytest.raises(ValueError, match="positions"):
        tree_attention(q, k, v, horizon, window=3)
    with pytest.raises(ValueError, match="window"):
        tree_attention(q, k, v, horizon, positions=pos)
    with pytest.raises(ValueError, match="window"):
        tree_attention(q, k, v, horizon, positions=pos, window=0)
    with pytest.raises(ValueError, match="int32"):
        tree_attention(q, k, v, horizon, positions=pos.long(), window=3)
    with pytest.raises(ValueError, match=">= 0"):
        tree_attention(q, k, v, horizon, positions=pos - 100, window=3)
