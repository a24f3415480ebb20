"""CPU kernels of the C++ extension against their baselines (pytest-benchmark).

    pytest bench/bench_kernels_cpu.py --benchmark-only          # full sizes, compare medians per group
    pytest bench/bench_kernels_cpu.py --benchmark-disable       # small sizes, correctness only (CI)

- build_pack: the C++ builder (through :func:`scar_kernels.ops.build_pack`) vs the Python reference
  :func:`scar_kernels.layout.build_pack_reference` on 4,096 coalitions x 64 players (prefixes of
  antithetic permutation pairs, as permutation sampling makes).
- tree attention: the C++ flash-style kernel (through :func:`scar_kernels.ops.tree_attention`) vs
  ``torch.nn.functional.scaled_dot_product_attention`` with a dense float mask, on real packs from
  permutation sampling (prompt 256, response 64 tokens in 16 players, suffix 1; 4 heads, head dim 64).
  ``extra_info`` records N, the dense mask's bytes and the kernel's memory.
"""
from __future__ import annotations

import pytest
import torch

from scar_kernels import extension
from scar_kernels.layout import build_pack_reference
from scar_kernels.ops import build_pack, permutation_pack, tree_attention
from scar_kernels.selection import permutation_prefixes

pytestmark = pytest.mark.skipif(not extension.has_extension(),
                                reason=f"C++ extension {extension.MODULE_NAME} is not built")


def pack_args(coalitions: torch.Tensor, prompt: int, response: int, suffix: int) -> tuple[torch.Tensor, ...]:
    """build_pack arguments for one response split evenly into coalitions.shape[1] players."""
    n = coalitions.shape[1]
    seg_len = torch.full((n,), response // n, dtype=torch.long)
    seg_len[: response % n] += 1
    c = coalitions.shape[0]
    return (coalitions, torch.zeros(c, dtype=torch.long), torch.tensor([0, n]), torch.arange(n), seg_len,
            torch.tensor([prompt]), torch.tensor([suffix]), torch.tensor([0]))


def build_pack_bench_args(benchmark) -> tuple[torch.Tensor, ...]:
    """4,096 coalitions x 64 players (31 antithetic pairs = 4,030 prefixes, topped up with random rows);
    a tiny forest when benchmarking is disabled."""
    pairs, players, total = (2, 8, 40) if benchmark.disabled else (31, 64, 4096)
    prefixes = permutation_prefixes(players, pairs)
    gen = torch.Generator().manual_seed(1)
    coalitions = torch.cat([prefixes, torch.rand(total - prefixes.shape[0], players, generator=gen) < 0.5])
    return pack_args(coalitions, prompt=256, response=64, suffix=1)


@pytest.mark.benchmark(group="build_pack 4096 coalitions x 64 players")
def test_build_pack_cpp(benchmark):
    args = build_pack_bench_args(benchmark)
    layout = benchmark(build_pack, *args)
    expected = build_pack_reference(*args).as_tuple()
    assert all(torch.equal(a, b) for a, b in zip(layout.as_tuple(), expected))
    benchmark.extra_info.update(coalitions=int(args[0].shape[0]), players=int(args[0].shape[1]),
                                pack_tokens=layout.n_tokens)


@pytest.mark.benchmark(group="build_pack 4096 coalitions x 64 players")
def test_build_pack_python_reference(benchmark):
    args = build_pack_bench_args(benchmark)
    rounds = 1 if benchmark.disabled else 3
    layout = benchmark.pedantic(build_pack_reference, args=args, rounds=rounds, iterations=1)
    assert layout.readout.numel() == args[0].shape[0]
    benchmark.extra_info.update(coalitions=int(args[0].shape[0]), players=int(args[0].shape[1]),
                                pack_tokens=int(layout.gather.numel()))


HEADS, HEAD_DIM = 4, 64
# Antithetic permutation pairs of 16 players; the packs have N ~ 3.6k, 8.6k and 15k tokens.
ATTENTION_PAIRS = [8, 24, 48]


def attention_inputs(benchmark, pairs: int):
    if benchmark.disabled:
        pairs = max(1, pairs // 16)  # N of a few hundred: correctness only
    horizon = permutation_pack(16, pairs, prompt=256, response=64, suffix=1, cached=False).horizon
    n = horizon.numel()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(HEADS, n, HEAD_DIM, generator=gen) for _ in range(3))
    return q, k, v, horizon


def dense_mask(horizon: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(horizon.numel())
    visible = (idx[None, :] <= idx[:, None]) & (idx[:, None] < horizon.long()[None, :])
    return torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))


@pytest.mark.parametrize("pairs", ATTENTION_PAIRS)
def test_tree_attention_cpp(benchmark, pairs):
    q, k, v, horizon = attention_inputs(benchmark, pairs)
    n = horizon.numel()
    benchmark.group = f"tree attention, {pairs} permutation pairs"
    rounds = 1 if benchmark.disabled else 5
    out = benchmark.pedantic(tree_attention, args=(q, k, v, horizon), rounds=rounds, iterations=1)
    block_q, block_k = 32, 48  # the kernel's defaults (its vector sub-block is 32 queries wide on AVX-512)
    benchmark.extra_info.update(
        n_tokens=n,
        dense_mask_bytes=n * n * 4,
        # one flag byte per key and kv head, the horizon maxima per 64 keys, and per thread a key list (3 int32 per
        # key of the pack at most) and float scratch O(block_k * (block_q + D) + block_q * D): no N x N term
        kernel_extra_bytes=HEADS * n + n // 16
        + torch.get_num_threads() * (12 * n + 4 * (block_k * (block_q + HEAD_DIM) + 2 * block_q * HEAD_DIM)),
    )
    if benchmark.disabled or n <= 4000:  # the dense check itself costs O(N^2) memory
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(horizon))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pairs", ATTENTION_PAIRS)
def test_sdpa_dense_mask(benchmark, pairs):
    q, k, v, horizon = attention_inputs(benchmark, pairs)
    n = horizon.numel()
    benchmark.group = f"tree attention, {pairs} permutation pairs"
    mask = dense_mask(horizon)  # built outside the timed call: the baseline gets its mask for free
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rounds = 1 if benchmark.disabled else 3
    out = benchmark.pedantic(sdpa, args=(q, k, v), kwargs={"attn_mask": mask}, rounds=rounds, iterations=1)
    assert out.shape == q.shape and torch.isfinite(out).all()
    benchmark.extra_info.update(n_tokens=n, dense_mask_bytes=mask.numel() * mask.element_size())
