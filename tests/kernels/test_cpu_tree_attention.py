"""CPU tree attention ``scar_kernels._C.tree_attention`` equals dense masked softmax attention; bad input is refused."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scar_kernels import extension, ops
from scar_kernels.layout import build_pack_reference

from extension_marks import isa_supported, needs_extension
from layout_problems import dense_attention, forests, to_args

pytestmark = needs_extension


def compiled_tree_attention(q, k, v, horizon, scale=None, prefix_k=None, prefix_v=None, **blocks):
    """The compiled kernel itself (block sizes are its tuning options; the op uses the defaults)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return extension.load().tree_attention(q, k, v, horizon, scale, prefix_k, prefix_v, **blocks)


def random_forest_horizon(n: int, gen: torch.Generator, max_node: int = 5) -> torch.Tensor:
    """Horizon of a random forest in preorder: random node lengths, each node's parent a random open ancestor."""
    horizon = torch.empty(n, dtype=torch.int32)
    stack: list[tuple[int, int]] = []  # open nodes (start, end) on the current root path
    nodes = []
    pos = 0
    while pos < n:
        length = min(int(torch.randint(1, max_node + 1, (1,), generator=gen)), n - pos)
        depth = int(torch.randint(0, len(stack) + 1, (1,), generator=gen))  # close nodes above this depth
        stack = stack[:depth]
        nodes.append([pos, pos + length, list(stack)])
        stack.append(len(nodes) - 1)
        pos += length
    end = [stop for _, stop, _ in nodes]
    for i in range(len(nodes) - 1, -1, -1):  # subtree end: max over descendants (children come later)
        for anc in nodes[i][2]:
            end[anc] = max(end[anc], end[i])
    for i, (start, stop, _) in enumerate(nodes):
        horizon[start:stop] = end[i]
    return horizon


def run_case(horizon, n_heads=4, n_kv=4, d=16, prefix=0, seed=0, dtype=torch.float32, **blocks):
    gen = torch.Generator().manual_seed(seed)
    n = horizon.numel()
    q = torch.randn(n_heads, n, d, generator=gen)
    k = torch.randn(n_kv, n, d, generator=gen)
    v = torch.randn(n_kv, n, d, generator=gen)
    pk = torch.randn(n_kv, prefix, d, generator=gen) if prefix else None
    pv = torch.randn(n_kv, prefix, d, generator=gen) if prefix else None
    scale = d ** -0.5
    cast = (lambda t: None if t is None else t.to(dtype))
    out = compiled_tree_attention(cast(q), cast(k), cast(v), horizon, scale, cast(pk), cast(pv), **blocks)
    assert out.dtype == dtype and out.shape == q.shape
    expected = dense_attention(cast(q), cast(k), cast(v), horizon, scale, cast(pk), cast(pv))
    return out, expected


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("prefix", [0, 7])
def test_random_forests_match_dense(seed, prefix):
    gen = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 300, (1,), generator=gen))  # mostly not a multiple of the block size
    out, expected = run_case(random_forest_horizon(n, gen), prefix=prefix, seed=seed)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("block_q", "block_k"), [(64, 64), (1, 1), (3, 5), (16, 48), (200, 7), (33, 100)])
def test_block_sizes_do_not_change_the_result(block_q, block_k):
    gen = torch.Generator().manual_seed(7)
    horizon = random_forest_horizon(157, gen)
    out, expected = run_case(horizon, prefix=5, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_deep_chain_is_causal_attention():
    n = 333
    horizon = torch.full((n,), n, dtype=torch.int32)  # one chain: plain causal attention
    out, expected = run_case(horizon, d=32)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 32, generator=gen) for _ in range(3))
    causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ops.tree_attention(q, k, v, horizon), causal, atol=1e-5, rtol=0)


def test_single_token_nodes_each_sees_only_itself_and_ancestors():
    n = 130
    # Star: token 0 is the root, every other token is its own leaf -> each query sees key 0 and itself.
    horizon = torch.cat([torch.tensor([n]), torch.arange(2, n + 1)]).to(torch.int32)
    out, expected = run_case(horizon, d=8)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    # Forest of single tokens: every query sees only itself, so the output is v itself.
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, n, 8, generator=gen) for _ in range(3))
    alone = torch.arange(1, n + 1, dtype=torch.int32)
    torch.testing.assert_close(ops.tree_attention(q, k, v, alone), v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("prefix", [0, 70])
def test_grouped_query_attention(prefix):
    gen = torch.Generator().manual_seed(11)
    horizon = random_forest_horizon(150, gen)
    out, expected = run_case(horizon, n_heads=6, n_kv=2, d=24, prefix=prefix)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("d", [1, 7, 16, 40, 64, 80])
def test_head_dims_including_odd_ones(d):
    gen = torch.Generator().manual_seed(d)
    out, expected = run_case(random_forest_horizon(90, gen), d=d, prefix=3)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_large_scores_are_stable():
    gen = torch.Generator().manual_seed(5)
    horizon = random_forest_horizon(100, gen)
    q = torch.randn(2, 100, 16, generator=gen) * 30
    k = torch.randn(2, 100, 16, generator=gen) * 30
    v = torch.randn(2, 100, 16, generator=gen)
    out = ops.tree_attention(q, k, v, horizon, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), dense_attention(q, k, v, horizon, 1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype):
    gen = torch.Generator().manual_seed(2)
    out, expected = run_case(random_forest_horizon(80, gen), prefix=4, dtype=dtype)
    # Inputs are exactly representable in fp32; only the output rounding to the half type differs.
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


def test_real_pack_from_permutation_sampling():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(3):  # antithetic permutation pairs of 8 players: every prefix of each order
        perm = torch.randperm(8, generator=gen)
        for order in (perm, perm.flip(0)):
            rows += [torch.isin(torch.arange(8), order[:size]) for size in range(9)]
    coal = torch.stack(rows)
    c, n = coal.shape
    layout = ops.build_pack(coal, torch.zeros(c, dtype=torch.long), torch.tensor([0, n]), torch.arange(n),
                             torch.full((n,), 3), torch.tensor([20]), torch.tensor([1]), torch.tensor([4]))
    horizon = layout.horizon
    out, expected = run_case(horizon, n_heads=4, n_kv=2, d=16, prefix=4)  # prefix = the 4 cached prompt tokens
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_empty_inputs():
    q = torch.zeros(2, 0, 8)
    out = ops.tree_attention(q, q, q, torch.zeros(0, dtype=torch.int32))
    assert out.shape == (2, 0, 8)


def good():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 10, 8, generator=gen)
    k = torch.randn(2, 10, 8, generator=gen)
    v = torch.randn(2, 10, 8, generator=gen)
    horizon = torch.full((10,), 10, dtype=torch.int32)
    return {"q": q, "k": k, "v": v, "horizon": horizon, "scale": 0.5, "prefix_k": None, "prefix_v": None}


def changed(**kw):
    args = good()
    args.update(kw)
    return args


BAD = {
    "q int": changed(q=torch.zeros(4, 10, 8, dtype=torch.int64)),
    "q float64": changed(q=torch.zeros(4, 10, 8, dtype=torch.float64)),
    "q 2-D": changed(q=torch.zeros(10, 8)),
    "q non-contiguous": changed(q=torch.zeros(4, 8, 10).transpose(1, 2)),
    "k non-contiguous": changed(k=torch.zeros(2, 8, 10).transpose(1, 2)),
    "v dtype differs": changed(v=torch.zeros(2, 10, 8, dtype=torch.float16)),
    "k length differs": changed(k=torch.zeros(2, 9, 8)),
    "v shape differs": changed(v=torch.zeros(2, 10, 4)),
    "heads not a multiple": changed(k=torch.zeros(3, 10, 8), v=torch.zeros(3, 10, 8)),
    "horizon int64": changed(horizon=torch.full((10,), 10)),
    "horizon wrong length": changed(horizon=torch.full((9,), 9, dtype=torch.int32)),
    "horizon[k] == k": changed(horizon=torch.tensor([10, 10, 2, 10, 10, 10, 10, 10, 10, 10], dtype=torch.int32)),
    "horizon[k] < k": changed(horizon=torch.tensor([10, 10, 10, 10, 10, 10, 3, 10, 10, 10], dtype=torch.int32)),
    "horizon > N": changed(horizon=torch.tensor([11] + [10] * 9, dtype=torch.int32)),
    "horizon non-contiguous": changed(horizon=torch.full((20,), 10, dtype=torch.int32)[::2]),
    "prefix_k without prefix_v": changed(prefix_k=torch.zeros(2, 3, 8)),
    "prefix heads differ": changed(prefix_k=torch.zeros(4, 3, 8), prefix_v=torch.zeros(4, 3, 8)),
    "prefix lengths differ": changed(prefix_k=torch.zeros(2, 3, 8), prefix_v=torch.zeros(2, 4, 8)),
    "prefix dtype differs": changed(prefix_k=torch.zeros(2, 3, 8).half(), prefix_v=torch.zeros(2, 3, 8).half()),
    "scale nan": changed(scale=float("nan")),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_clear_error(name):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=r"\w+"):
        ops.tree_attention(**BAD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_rejected_by_compiled_checks_too(name):
    """The compiled function validates on its own (callers may bypass the Python wrapper)."""
    with pytest.raises((ValueError, TypeError), match=r"tree_attention|incompatible function arguments"):
        extension.load().tree_attention(**BAD[name])


def test_good_arguments_are_accepted():
    # Guards the bad-input table: each case fails because of its one change.
    args = good()
    out = extension.load().tree_attention(**args)
    torch.testing.assert_close(out.double(), dense_attention(args["q"], args["k"], args["v"], args["horizon"], 0.5),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# The kernel's key lists (per query block: the prefix, then every key j < q1 with horizon[j] > q0), cut into
# segments that are fully visible (no mask), masked, a run of consecutive keys read in place, or scattered keys
# copied; and its three vector builds. Tolerance: 1e-5 absolute against the float64 dense reference (fp32
# accumulation over a few hundred keys of unit-variance data).
# --------------------------------------------------------------------------------------------------
ISAS = ("avx512", "avx2", "baseline")
# (block_q, block_k): one-key segments, ragged blocks, the defaults, a query block wider than the vector
# sub-block, and one key list for the whole pack.
BLOCKS = [(1, 1), (3, 5), (32, 48), (64, 7), (40, 13), (10_000, 10_000)]


def require_isa(isa: str) -> None:
    if not isa_supported(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    forests(max_responses=4, max_coalitions=14),
    st.integers(0, 3),
    st.sampled_from(BLOCKS),
    st.sampled_from([(2, 2), (4, 2), (3, 1)]),
    st.sampled_from([1, 8, 20, 64]),
)
def test_key_lists_on_random_forests_match_the_reference(problem, prefix, blocks, heads, d):
    """Packs of the builder (several responses, duplicate coalitions, responses without players) against the
    dense float64 reference."""
    horizon = build_pack_reference(*to_args(*problem)).horizon.to(torch.int32)
    n = horizon.numel()
    if n == 0:
        return
    n_heads, n_kv = heads
    gen = torch.Generator().manual_seed(n * 31 + prefix)
    q = torch.randn(n_heads, n, d, generator=gen)
    k, v = (torch.randn(n_kv, n, d, generator=gen) for _ in range(2))
    pk, pv = (torch.randn(n_kv, prefix, d, generator=gen) if prefix else None for _ in range(2))
    expected = dense_attention(q, k, v, horizon, d**-0.5, pk, pv)
    block_q, block_k = blocks
    out = compiled_tree_attention(q, k, v, horizon, d**-0.5, pk, pv, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("d", [7, 16, 40, 64, 80, 128])
def test_every_vector_build_matches_dense(isa, blocks, d):
    """Each build (AVX-512, AVX2, baseline x86-64) with GQA, a prefix and head dims off the vector widths."""
    require_isa(isa)
    gen = torch.Generator().manual_seed(d)
    horizon = random_forest_horizon(211, gen)
    block_q, block_k = blocks
    out, expected = run_case(horizon, n_heads=6, n_kv=2, d=d, prefix=9, block_q=block_q, block_k=block_k, isa=isa)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("isa", ISAS)
def test_vector_builds_on_a_permutation_pack_with_a_long_prompt(isa):
    """The target workload's shape: a long shared prompt (fully visible segments read in place) and short
    player nodes (masked, copied segments), 4 heads of 64."""
    require_isa(isa)
    gen = torch.Generator().manual_seed(4)
    rows = []
    for _ in range(2):
        perm = torch.randperm(16, generator=gen)
        for order in (perm, perm.flip(0)):
            rows += [torch.isin(torch.arange(16), order[:size]) for size in range(17)]
    coal = torch.stack(rows)
    c = coal.shape[0]
    layout = build_pack_reference(coal, torch.zeros(c, dtype=torch.long), torch.tensor([0, 16]), torch.arange(16),
                                  torch.full((16,), 4), torch.tensor([256]), torch.tensor([1]), torch.tensor([0]))
    out, expected = run_case(layout.horizon.to(torch.int32), n_heads=4, n_kv=4, d=64, isa=isa)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_unknown_isa_is_refused():
    x = torch.zeros(1, 1, 1)
    with pytest.raises(ValueError, match="isa must be"):
        extension.load().tree_attention(x, x, x, torch.ones(1, dtype=torch.int32), 1.0, isa="sse9")
