"""Tree attention side by side on CPU: the C++ kernel, FlexAttention and SDPA with a dense mask (pytest-benchmark).

    pytest bench/bench_flex_cpu.py --benchmark-only --benchmark-json=flex.json   # N ~ 2k, 8k, 16k, 32k
    pytest bench/bench_flex_cpu.py --benchmark-disable                           # tiny pack, correctness only (CI)

Packs come from permutation sampling (antithetic pairs of 16 span players, prompt 256, response 64, suffix
1: the target workload's shape), 4 heads of dimension 64, float32, torch's intra-op threads set to
:data:`THREADS` (2, or the environment's ``SCAR_BENCH_THREADS``). Each row times one way to run the pack's
attention from its ``horizon``:

- ``cpp``: the C++ tree-attention kernel (``scar_kernels.ops.tree_attention``), no mask to build;
- ``flex_create_block_mask``: compiled ``flex_attention`` with the ``BlockMask`` of ``create_block_mask``
  over ``mask_mod = (kv <= q) & (q < horizon[kv])`` (what a PyTorch user writes);
- ``flex_builder``: ``attention="flex"``: the O(N) builder (``ops.flex_block_mask``) and
  ``ops.flex_tree_attention`` compiled;
- ``flex_builder_eager``: the same, eager (``flex_attention``'s unfused path; not at the largest N, whose
  ``N x N`` scores per head do not fit comfortably);
- ``sdpa_dense``: ``scaled_dot_product_attention`` with the dense float mask (``ops.dense_mask``; not at
  32k, whose ``N x N`` float mask and ``4 x N x N`` scores (about 21 GB) do not fit this machine);
- ``triton_interpreter``: the Triton kernel (``scar_kernels.tree_attention.tree_attention``) under Triton's
  CPU interpreter, only at the smallest pack when timing (the interpreter costs about 10 ms per 64 x 64 tile:
  minutes per call past 2k). It says what the Triton kernel costs here, not on a GPU.

How the Triton row gets the interpreter without changing the other rows: Triton reads ``TRITON_INTERPRET``
when ``@triton.jit`` runs (``triton.knobs`` reads the environment on each access), and scar_kernels defines
its kernel lazily on first launch and caches it in ``tree_attention._KERNEL``. The row therefore sets
``TRITON_INTERPRET=1`` and empties that cache for its own duration only (:func:`triton_interpreter`), so the
kernel is defined under the interpreter; afterwards the variable and the cache are restored. No other row or
benchmark in the process sees the variable or the interpreted kernel (a subprocess would also work, but its
timings could not go through pytest-benchmark).

The benchmark's own timing is end to end (mask built, then attention), in wall time. ``extra_info`` holds the
phases, each the median of separate timed calls, in wall and in CPU seconds of this process (``*_cpu_s``,
all threads: steadier than wall time on a shared machine): ``mask_s`` (build the mask), ``attention_s``
(attention given the mask), ``end_to_end_cpu_s``, ``first_call_s`` (the first end-to-end call in this
process, compiling for the flex rows), ``n_tokens``, the mask's bytes, and ``peak_extra_bytes``.

``peak_extra_bytes`` is the memory one end-to-end call takes beyond what the process held before it (inputs
included there): the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just
before the call, after ``gc.collect()`` and glibc's ``malloc_trim(0)``) minus its resident set then. It counts
everything the call touches (the mask, scratch tensors, the output, the C++ kernel's per-thread buffers,
the interpreter's numpy copies), measured in a separate call after the first (so it excludes compilation).
It is a lower bound where the allocator reuses memory that is already resident; ``None`` where
``/proc/self/clear_refs`` cannot be written (not Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import scar_kernels.tree_attention as triton_tree_attention
from scar_kernels import extension, flex
from scar_kernels.ops import dense_mask, flex_block_mask, flex_tree_attention, permutation_pack, tree_attention
from scar_kernels.selection import permutation_prefixes
from scar_kernels.tree_attention import tree_attention_reference

fa = pytest.importorskip("torch.nn.attention.flex_attention")
# The eager flex rows are eager on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

THREADS = int(os.environ.get("SCAR_BENCH_THREADS", "2"))
HEADS, HEAD_DIM = 4, 64
# Antithetic permutation pairs of 16 players: packs of N = 2,162, about 8k, 16k and 32k tokens.
SIZES = {"2k": 4, "8k": 24, "16k": 55, "32k": 135}
EAGER_SIZES = ("2k", "8k")
DENSE_SIZES = ("2k", "8k", "16k")  # SDPA's N x N float mask and 4 x N x N scores: about 21 GB at 32k
TRITON_SIZES = ("2k",)
METHODS = ("cpp", "flex_create_block_mask", "flex_builder", "flex_builder_eager", "sdpa_dense", "triton_interpreter")
SLOW_METHODS = ("flex_builder_eager", "sdpa_dense")  # O(N^2) work: 2 timed rounds past the smallest pack


@contextlib.contextmanager
def triton_interpreter():
    """TRITON_INTERPRET=1 and a fresh kernel definition for the duration; both restored afterwards."""
    before_env = os.environ.get("TRITON_INTERPRET")
    before_kernel = triton_tree_attention._KERNEL
    os.environ["TRITON_INTERPRET"] = "1"
    triton_tree_attention._KERNEL = None
    try:
        yield
    finally:
        triton_tree_attention._KERNEL = before_kernel
        if before_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before_env


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_extra_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak resident memory of one ``fn()`` call beyond the process's resident set before it (Linux)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set
        before = _status_bytes("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - before)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


def inputs(pairs: int) -> tuple[torch.Tensor, ...]:
    layout = permutation_pack(16, pairs, prompt=256, response=64, suffix=1, cached=False)
    n = layout.n_tokens
    gen = torch.Generator().manual_seed(pairs)
    q, k, v = (torch.randn(HEADS, n, HEAD_DIM, generator=gen) for _ in range(3))
    return q, k, v, layout.horizon


def create_block_mask_of(horizon: torch.Tensor) -> Any:
    """FlexAttention's own route: evaluate the mask_mod on every (query, key) pair."""
    n = horizon.numel()

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx < horizon[kv_idx])

    return fa.create_block_mask(mask_mod, None, None, n, n, device="cpu")


def phases(method: str, q, k, v, horizon, compiled: bool) -> tuple[Callable[[], Any], Callable[[Any], torch.Tensor]]:
    """(build the mask, attention given the mask) of one method."""
    scale = HEAD_DIM**-0.5
    if method == "cpp":
        return (lambda: None), (lambda _: tree_attention(q, k, v, horizon, scale))
    if method == "flex_create_block_mask":
        run = flex.flex_attention_function(compiled)  # the compiled flex_attention every flex row shares
        return (
            lambda: create_block_mask_of(horizon),
            lambda bm: run(q[None], k[None], v[None], block_mask=bm, scale=scale)[0],
        )
    if method in ("flex_builder", "flex_builder_eager"):
        return (
            lambda: flex_block_mask(horizon),
            lambda bm: flex_tree_attention(q, k, v, horizon, scale, block_mask=bm, compiled=compiled),
        )
    if method == "triton_interpreter":
        return (lambda: None), (lambda _: triton_tree_attention.tree_attention(q, k, v, horizon, scale))
    if method == "sdpa_dense":
        sdpa = torch.nn.functional.scaled_dot_product_attention
        return (lambda: dense_mask(horizon)), (lambda mask: sdpa(q, k, v, attn_mask=mask, scale=scale))
    raise ValueError(method)


def median_time(fn: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Median wall and median CPU seconds (this process, all threads) of ``rounds`` calls."""
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def mask_bytes(mask: Any) -> int:
    if mask is None:
        return 0
    if isinstance(mask, torch.Tensor):
        return mask.numel() * mask.element_size()
    return sum(t.numel() * t.element_size() for t in mask.as_tuple() if isinstance(t, torch.Tensor))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every size when timing; only the smallest in correctness-only runs (no rows skipped there)."""
    if "size" in metafunc.fixturenames:
        disabled = metafunc.config.getoption("benchmark_disable", default=False)
        metafunc.parametrize("size", list(SIZES)[:1] if disabled else list(SIZES))


@pytest.mark.parametrize("method", METHODS)
def test_tree_attention_side_by_side(benchmark, threads, method: str, size: str) -> None:
    if method == "cpp" and not extension.has_extension():
        pytest.skip(f"C++ extension {extension.MODULE_NAME} is not built")
    if not benchmark.disabled and method == "flex_builder_eager" and size not in EAGER_SIZES:
        pytest.skip(f"eager flex_attention materialises {HEADS} x N x N scores")
    if not benchmark.disabled and method == "sdpa_dense" and size not in DENSE_SIZES:
        pytest.skip(f"the dense N x N float mask and {HEADS} x N x N scores take about 21 GB at N ~ 32k")
    if method == "triton_interpreter":
        pytest.importorskip("triton")
        if not benchmark.disabled and size not in TRITON_SIZES:
            pytest.skip("the Triton interpreter costs about 10 ms per 64 x 64 tile: minutes per call past 2k")
    if method.startswith("flex") and flex.flex_unavailable_reason("cpu", compiled=False) is not None:
        pytest.skip(flex.flex_unavailable_reason("cpu", compiled=False))
    # Correctness-only runs: a pack of a few hundred tokens, and flex eager (compiling takes seconds).
    pairs = 1 if benchmark.disabled else SIZES[size]
    compiled = method != "flex_builder_eager" and not benchmark.disabled
    if compiled and method.startswith("flex") and flex.flex_unavailable_reason("cpu", compiled=True) is not None:
        pytest.skip(flex.flex_unavailable_reason("cpu", compiled=True))
    q, k, v, horizon = inputs(pairs)
    context = triton_interpreter() if method == "triton_interpreter" else contextlib.nullcontext()
    with context:
        run_side_by_side(benchmark, threads, method, size, q, k, v, horizon, compiled)


def run_side_by_side(benchmark, threads, method, size, q, k, v, horizon, compiled) -> None:
    n = horizon.numel()
    build, attend = phases(method, q, k, v, horizon, compiled)

    def end_to_end() -> torch.Tensor:
        return attend(build())

    start = time.perf_counter()
    out = end_to_end()
    first_call = time.perf_counter() - start
    if benchmark.disabled or n <= 2200:  # the dense check itself costs O(N^2) memory
        torch.testing.assert_close(out, tree_attention_reference(q, k, v, horizon, HEAD_DIM**-0.5), atol=1e-5, rtol=0)
    if benchmark.disabled or method == "triton_interpreter":
        rounds = 1
    elif size == "32k" or (method in SLOW_METHODS and size != "2k"):
        rounds = 2
    else:
        rounds = 5
    benchmark.group = f"tree attention N={n}"
    result = benchmark.pedantic(end_to_end, rounds=rounds, iterations=1, warmup_rounds=1)
    assert result.shape == q.shape and torch.isfinite(result).all()
    mask = build()
    mask_s, mask_cpu_s = median_time(build, rounds)
    attention_s, attention_cpu_s = median_time(lambda: attend(mask), rounds)
    built_bytes = mask_bytes(mask)
    mask = out = result = None  # released before the memory measurement
    benchmark.extra_info.update(
        method=method,
        n_tokens=n,
        threads=threads,
        first_call_s=first_call,
        mask_s=mask_s,
        mask_cpu_s=mask_cpu_s,
        attention_s=attention_s,
        attention_cpu_s=attention_cpu_s,
        end_to_end_cpu_s=median_time(end_to_end, rounds)[1],
        mask_bytes=built_bytes,
        peak_extra_bytes=peak_extra_bytes(end_to_end),
    )


# --------------------------------------------------------------------------------------------------
# The scorer end to end: one CoalitionScorer.score call of the target workload per attention path
# --------------------------------------------------------------------------------------------------
SCORER_ATTENTIONS = ("kernel", "flex", "mask")


@pytest.mark.parametrize("attention", SCORER_ATTENTIONS)
def test_scorer_attention_paths(benchmark, threads, attention: str) -> None:
    """``CoalitionScorer(backend="trie", attention=...)`` on the target workload (random-weight GPT-2 "small",
    prompt 256, response 64, 16 span players, 16 antithetic permutation pairs: one pass of about 6.4k tokens);
    a tiny model and pack when benchmarking is disabled. ``first_call_s`` includes flex's compilation."""
    from scar.scoring import CoalitionScorer
    from scar_bench.workloads import build_reward_model, span_players

    if attention == "kernel" and not extension.has_extension():
        pytest.skip(f"C++ extension {extension.MODULE_NAME} is not built")
    if attention == "flex" and flex.flex_unavailable_reason("cpu", compiled=not benchmark.disabled) is not None:
        pytest.skip(flex.flex_unavailable_reason("cpu", compiled=not benchmark.disabled))
    if benchmark.disabled:
        model = build_reward_model("tiny", vocab_size=100)
        prompt, response, n_players, pairs = 12, 8, 4, 2
    else:
        model = build_reward_model("small", vocab_size=100)
        prompt, response, n_players, pairs = 256, 64, 16, 16
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 100, (prompt,), generator=gen).tolist()
    response_ids = torch.randint(3, 100, (response,), generator=gen).tolist()
    players = span_players(response, n_players)
    coalitions = permutation_prefixes(n_players, pairs)
    compiled_before = flex.COMPILE_BY_DEVICE["cpu"]
    flex.COMPILE_BY_DEVICE["cpu"] = compiled_before and not benchmark.disabled
    try:
        scorer = CoalitionScorer(model, backend="trie", attention=attention, verify=0, max_tokens_per_pass=8192)

        def score() -> torch.Tensor:
            return scorer.score(prompt_ids, response_ids, players, coalitions, [2])

        start = time.perf_counter()
        first = score()
        first_call = time.perf_counter() - start
        reference = CoalitionScorer(model, backend="trie", attention="mask", verify=0).score(
            prompt_ids, response_ids, players, coalitions, [2]
        )
        torch.testing.assert_close(first, reference, atol=1e-4, rtol=0)
        benchmark.group = "scorer, trie backend, target workload"
        rounds = 1 if benchmark.disabled else 3
        values = benchmark.pedantic(score, rounds=rounds, iterations=1)
        score_cpu_s = median_time(score, rounds)[1]
    finally:
        flex.COMPILE_BY_DEVICE["cpu"] = compiled_before
    assert torch.equal(values, first)
    benchmark.extra_info.update(
        attention=attention,
        n_tokens=scorer.stats.tokens_computed,
        passes=scorer.stats.passes,
        threads=threads,
        first_call_s=first_call,
        cpu_s=score_cpu_s,
    )
