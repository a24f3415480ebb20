"""Which tree attention is faster on a device, the ``scar::tree_attention`` op or FlexAttention: the timing.

Two implementations compute the same tree attention: the ``scar::tree_attention`` op (the C++ kernel on CPU,
the Triton kernel on CUDA) and FlexAttention with the O(N) ``BlockMask`` of :mod:`scar_kernels.flex`. Which
one is faster depends on the device. :func:`scar_kernels.ops.fastest_tree_attention` prepares a pack shaped
like a scoring pack (every prefix of antithetic permutation pairs, :func:`permutation_prefixes`, behind a
cached prompt) with random ``q``/``k``/``v`` of the caller's head layout and dtype, and this module times the
two calls (:func:`time_candidates`): both end to end (FlexAttention's block mask built in every call), first
calls (compilation, autotuning) as untimed warm-up, the median of the timed ones. The two outputs must agree
within :data:`AGREEMENT` or the op wins: a faster wrong answer is never chosen.

:data:`MEASURE_BY_DEVICE` says where a caller that wants the faster one (the scorer's ``attention="auto"``)
measures at run time. On CUDA it does: the Triton kernel and FlexAttention's Triton templates depend on the
GPU. On CPU it does not: the benchmark of both (``bench/RESULTS.md``, ``bench/bench_flex_cpu.py``) finds the
C++ kernel ahead of compiled FlexAttention in its AVX-512 and AVX2 builds and level with it in the baseline
x86-64 build, and timing FlexAttention would cost its compilation (seconds) in every process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "AGREEMENT",
    "AttentionChoice",
    "CANDIDATES",
    "MEASURE_BY_DEVICE",
    "median_ms",
    "permutation_prefixes",
    "time_candidates",
]

CANDIDATES = ("kernel", "flex")
"""The timed implementations: the ``scar::tree_attention`` op and FlexAttention with the O(N) block mask."""

MEASURE_BY_DEVICE: dict[str, bool] = {"cpu": False, "cuda": True}
"""Whether the faster tree attention is chosen by :func:`fastest_tree_attention` at run time, per device type
(False: the ``scar::tree_attention`` op, from the benchmark)."""

AGREEMENT = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
"""Largest absolute difference allowed between the candidates' outputs on the measurement pack, per dtype."""


@dataclass(frozen=True)
class AttentionChoice:
    """What the timing found and chose.

    Attributes:
        choice: ``"kernel"`` or ``"flex"``.
        device: the device measured, as a string (``"cuda:0"``).
        n_tokens: tokens of the measurement pack (queries), after ``prefix_len`` cached keys.
        prefix_len: cached-prompt keys every query sees.
        kernel_ms: median milliseconds of the op.
        flex_ms: median milliseconds of FlexAttention, mask build included; None when it did not run.
        reason: why the choice is the op without a FlexAttention time (unavailable, failed, disagreed), or
            an empty string.
    """

    choice: str
    device: str
    n_tokens: int
    prefix_len: int
    kernel_ms: float
    flex_ms: float | None
    reason: str = ""

    def describe(self) -> str:
        """One line for logs: the times and what was chosen."""
        flex = f"flex {self.flex_ms:.3f} ms" if self.flex_ms is not None else f"flex not timed ({self.reason})"
        return (
            f"tree attention on {self.device}, {self.n_tokens} tokens after {self.prefix_len} cached: "
            f"kernel {self.kernel_ms:.3f} ms, {flex} -> {self.choice}"
        )


def permutation_prefixes(n_players: int, n_pairs: int, seed: int = 0) -> Tensor:
    """bool ``[2 * n_pairs * (n_players + 1), n_players]``: every prefix of ``n_pairs`` antithetic pairs.

    Each pair is a uniform random permutation and its reverse; row ``m`` of a permutation keeps its first
    ``m`` players (from the empty coalition to the full one).
    """
    if n_players < 1 or n_pairs < 1:
        raise ValueError(f"n_players and n_pairs must be >= 1, got {n_players} and {n_pairs}")
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(n_players + 1)
    rows = []
    for _ in range(n_pairs):
        perm = torch.randperm(n_players, generator=gen)
        for order in (perm, perm.flip(0)):
            position = torch.empty(n_players, dtype=torch.long)
            position[order] = torch.arange(n_players)
            rows.append(position[None, :] < ranks[:, None])
    return torch.cat(rows)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Tensor], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` in milliseconds, after ``warmup`` untimed calls (CUDA
    synchronised around each timing)."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_candidates(
    run_kernel: Callable[[], Tensor],
    run_flex: Callable[[], Tensor],
    device: torch.device,
    dtype: torch.dtype,
    *,
    n_tokens: int,
    prefix_len: int,
    flex_reason: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    timer: Callable[[str, Callable[[], Tensor]], float] | None = None,
) -> AttentionChoice:
    """Time both candidates' calls on one pack and choose (the measurement of
    :func:`scar_kernels.ops.fastest_tree_attention`, which prepares the calls).

    Args:
        run_kernel, run_flex: zero-argument calls of the op and of FlexAttention on the same inputs.
        device, dtype: where and in what they run (CUDA calls are synchronised around each timing).
        n_tokens, prefix_len: the pack's size, for the answer.
        flex_reason: why FlexAttention cannot run here (None: it can).
        warmup, repeats: untimed calls first (compilation happens there), then the timed ones (median).
        timer: ``timer(name, fn) -> milliseconds`` in place of the wall-clock timing.
    """

    def measure(name: str, fn: Callable[[], Tensor]) -> float:
        if timer is not None:
            return float(timer(name, fn))
        return median_ms(fn, device, warmup, repeats)

    kernel_ms = measure("kernel", run_kernel)
    flex_ms: float | None = None
    reason = flex_reason or ""
    if not reason:
        try:
            difference = float((run_flex().float() - run_kernel().float()).abs().max())
            if not difference <= AGREEMENT[dtype]:
                reason = f"its output differs from the op's by {difference:.3g} on the measurement pack"
            else:
                flex_ms = measure("flex", run_flex)
        except Exception as err:  # a compile or launch failure means FlexAttention is not an option here
            reason = f"it failed: {type(err).__name__}: {err}"[:300]
    choice = "flex" if flex_ms is not None and flex_ms < kernel_ms else "kernel"
    return AttentionChoice(choice, str(device), n_tokens, prefix_len, kernel_ms, flex_ms, reason)
