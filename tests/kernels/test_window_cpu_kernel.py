"""Sliding-window attention in the C++ CPU tree-attention kernel.

With ``window > 0`` and ``positions`` (int32 ``[N]``, each packed token's position in its own sequence), query
``i`` sees key ``j`` only if it does without a window and ``positions[i] - pos(j) < window``, where ``pos(j)`` is
``positions[j]`` for a packed key and ``p`` for cached-prefix key ``p``. Every vector build of the kernel (each
one this CPU runs), with odd block sizes, head dims with and without a compile-time specialisation and a scalar
tail, grouped kv heads, soft-cap, sinks and half inputs, is compared with a float64 dense computation from the
definition (``layout_problems.dense_attention``). The prefix is made longer than the window so that the kernel
leaves the front of it out of the key lists of later query blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

from scar_kernels import extension
from scar_kernels.layout import visibility

from extension_marks import isa_supported, needs_extension
from layout_problems import dense_attention, random_forest, tree_positions

pytestmark = needs_extension

ATOL = 1e-5  # fp32 kernel against the float64 definition, outputs of size ~1
ISAS = ("baseline", "avx2", "avx512")
BLOCKS = ({}, {"block_q": 7, "block_k": 5}, {"block_q": 40, "block_k": 3})


def kernel(*args, **kwargs) -> torch.Tensor:
    return extension.load().tree_attention(*args, **kwargs)


def case(n=70, heads=4, kv_heads=2, d=16, prefix=5, seed=0, dtype=torch.float32):
    """Random q/k/v (and prefix k/v when ``prefix``), a random forest and its tokens' positions."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, d, generator=gen)
    k, v = torch.randn(kv_heads, n, d, generator=gen), torch.randn(kv_heads, n, d, generator=gen)
    pk = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(kv_heads, prefix, d, generator=gen) if prefix else None
    cast = lambda t: None if t is None else t.to(dtype).contiguous()
    horizon = random_forest(n, seed)
    return cast(q), cast(k), cast(v), horizon, cast(pk), cast(pv), tree_positions(horizon, prefix)


def check(out, q, k, v, horizon, scale, pk, pv, positions, window, softcap=None, sinks=None, atol=ATOL) -> None:
    want = dense_attention(q, k, v, horizon, scale, pk, pv, softcap, sinks, positions, window)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=0, atol=atol)


def skip_unless_runs(isa: str) -> None:
    if not isa_supported(isa):
        pytest.skip(f"this CPU does not run the {isa} build")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [16, 20, 64, 128])  # 64 and 128 are compile-time head dims; 20 has a scalar tail
@pytest.mark.parametrize("blocks", BLOCKS)
def test_every_vector_build(isa: str, d: int, blocks: dict) -> None:
    skip_unless_runs(isa)
    for prefix in (0, 3, 40):
        q, k, v, horizon, pk, pv, pos = case(d=d, prefix=prefix, seed=d + prefix)
        for window in (1, 2, 4, 7, 13):
            out = kernel(q, k, v, horizon, d**-0.5, pk, pv, positions=pos, window=window, isa=isa, **blocks)
            check(out, q, k, v, horizon, d**-0.5, pk, pv, pos, window)
            if window <= 2:  # the window hides keys that queries see without one
                assert not torch.allclose(out, kernel(q, k, v, horizon, d**-0.5, pk, pv, isa=isa, **blocks))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("blocks", BLOCKS)
def test_window_wider_than_every_position_is_no_window(isa: str, blocks: dict) -> None:
    skip_unless_runs(isa)
    for prefix in (0, 6):
        q, k, v, horizon, pk, pv, pos = case(prefix=prefix, seed=1)
        plain = kernel(q, k, v, horizon, 0.3, pk, pv, isa=isa, **blocks)
        widest = int(pos.max()) + 1  # the largest query position minus the smallest key position, plus one
        if prefix == 0:
            widest -= int(pos.min())
        for window in (widest, widest + 1, 2**31 - 1, 2**40):
            out = kernel(q, k, v, horizon, 0.3, pk, pv, positions=pos, window=window, isa=isa, **blocks)
            assert torch.equal(out, plain)
        narrower = kernel(q, k, v, horizon, 0.3, pk, pv, positions=pos, window=widest - 1, isa=isa, **blocks)
        assert not torch.equal(narrower, plain)
        check(narrower, q, k, v, horizon, 0.3, pk, pv, pos, widest - 1)


@pytest.mark.parametrize("isa", ISAS)
def test_long_prefix_is_pruned_right(isa: str) -> None:
    """A prefix far longer than the window: later query blocks drop most of it from their key lists."""
    skip_unless_runs(isa)
    q, k, v, horizon, pk, pv, pos = case(n=90, prefix=150, d=64, seed=3)
    for window in (1, 3, 16, 60):
        for blocks in BLOCKS:
            out = kernel(q, k, v, horizon, 0.125, pk, pv, positions=pos, window=window, isa=isa, **blocks)
            check(out, q, k, v, horizon, 0.125, pk, pv, pos, window)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("prefix", [0, 9])
def test_positions_not_from_a_tree(isa: str, prefix: int) -> None:
    """Any non-negative positions: a key may sit at a larger position than its query (visible)."""
    skip_unless_runs(isa)
    q, k, v, horizon, pk, pv, _ = case(prefix=prefix, d=20, seed=4)
    pos = torch.randint(0, 30, (horizon.numel(),), generator=torch.Generator().manual_seed(4), dtype=torch.int32)
    for window in (1, 5, 12):
        for blocks in BLOCKS:
            out = kernel(q, k, v, horizon, 0.4, pk, pv, positions=pos, window=window, isa=isa, **blocks)
            check(out, q, k, v, horizon, 0.4, pk, pv, pos, window)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("per_query", [False, True])
def test_softcap_and_sinks(isa: str, per_query: bool) -> None:
    skip_unless_runs(isa)
    q, k, v, horizon, pk, pv, pos = case(prefix=20, d=64, seed=5)
    q = q * 6  # scores large enough for the cap to bite
    gen = torch.Generator().manual_seed(5)
    sinks = torch.randn(*((4, 70) if per_query else (4,)), generator=gen) * 2 + 1
    for window in (1, 4, 11):
        for blocks in BLOCKS[:2]:
            out = kernel(q, k, v, horizon, 0.125, pk, pv, softcap=2.0, sinks=sinks, positions=pos, window=window,
                         isa=isa, **blocks)
            check(out, q, k, v, horizon, 0.125, pk, pv, pos, window, softcap=2.0, sinks=sinks)
            uncapped = dense_attention(q, k, v, horizon, 0.125, pk, pv, None, sinks, pos, window)
            assert float((out.double() - uncapped).abs().max()) > 100 * ATOL  # the cap matters here


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_types(dtype: torch.dtype, atol: float) -> None:
    q, k, v, horizon, pk, pv, pos = case(prefix=12, seed=6, dtype=dtype)
    for window in (2, 9):
        out = kernel(q, k, v, horizon, 0.25, pk, pv, positions=pos, window=window)
        check(out, q, k, v, horizon, 0.25, pk, pv, pos, window, atol=atol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("blocks", BLOCKS[:2])
def test_non_finite_keys(isa: str, bad: float, blocks: dict) -> None:
    """A non-finite key makes NaN exactly the queries that see it under the window (not those that see it only
    without one); every other output is the one computed with that key zeroed, and a key no query sees changes
    nothing."""
    skip_unless_runs(isa)
    P, window, n = 30, 6, 70
    q, k, v, horizon, pk, pv, pos = case(n=n, prefix=P, d=20, seed=7)
    seen = visibility(horizon, P, positions=pos, window=window)
    cut = visibility(horizon, P) & ~seen  # seen only without the window
    packed = P + int(cut[:, P:].sum(0).argmax())  # a packed key that the window hides from some of its viewers
    assert not seen[:, 0].any()  # prefix key 0 is below every query's window (every position is >= P)
    assert cut[:, P - 1].any() and seen[:, P - 1].any() and cut[:, packed].any()
    for column in (0, P - 1, packed):
        for which in ("k", "v"):
            tensors = {"k": k, "v": v, "pk": pk, "pv": pv}
            bad_t, zero_t = {}, {}
            for name, t in tensors.items():
                bad_t[name], zero_t[name] = t.clone(), t.clone()
            prefix = column < P
            row = column if prefix else column - P
            bad_t[("p" if prefix else "") + which][1, row, 3] = bad
            for name in ("pk", "pv") if prefix else ("k", "v"):
                zero_t[name][1, row] = 0.0
            out, ref = (
                kernel(q, t["k"], t["v"], horizon, 0.3, t["pk"], t["pv"], positions=pos, window=window, isa=isa,
                       **blocks)
                for t in (bad_t, zero_t)
            )
            poisoned = torch.zeros(4, n, dtype=torch.bool)
            poisoned[2:] = seen[:, column]  # query heads 2 and 3 read kv head 1
            assert torch.equal(torch.isnan(out).all(-1), poisoned)
            assert torch.isfinite(out[~poisoned]).all()
            assert torch.equal(out[~poisoned], ref[~poisoned])
            check(ref, q, zero_t["k"], zero_t["v"], horizon, 0.3, zero_t["pk"], zero_t["pv"], pos, window)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": -1}, "window must be >= 1"),
        ({"window": 3}, "a window needs positions"),
        ({"positions": "pos"}, "positions are read only with a window"),
        ({"positions": "pos", "window": 0}, "positions are read only with a window"),
        ({"positions": "int64", "window": 3}, "positions must be a CPU int32 tensor"),
        ({"positions": "short", "window": 3}, r"positions must have shape \[12\]"),
        ({"positions": "2d", "window": 3}, r"positions must have shape \[12\]"),
        ({"positions": "strided", "window": 3}, "positions must be contiguous"),
        ({"positions": "negative", "window": 3}, r"positions must be >= 0, got positions\[4\] = -2"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    q, k, v, horizon, pk, pv, pos = case(n=12, seed=8)
    negative = pos.clone()
    negative[4] = -2
    given = {
        "pos": pos,
        "int64": pos.long(),
        "short": pos[:-1],
        "2d": pos[None],
        "strided": torch.stack([pos, pos], 1)[:, 0],
        "negative": negative,
    }
    if "positions" in kwargs:
        kwargs = {**kwargs, "positions": given[kwargs["positions"]]}
    with pytest.raises(ValueError, match=match):
        kernel(q, k, v, horizon, 0.25, pk, pv, **kwargs)
