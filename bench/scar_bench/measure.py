"""Measuring one attribution run: what it produced (:class:`RunResult`), its time and memory
(:func:`timed`, :class:`PeakMemory`), the reference time of one plain forward, the error against exact
values, the machine it ran on, and the torch thread count every benchmark runs under.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from scar.demo.training import torch_threads
from scar.scoring.model import inspect_model
from scar_bench.vocab import N_SPECIAL

__all__ = [
    "BENCH_THREADS",
    "bench_threads",
    "RunResult",
    "Timing",
    "timed",
    "PeakMemory",
    "plain_forward_seconds",
    "rel_l2",
    "machine_description",
]

BENCH_THREADS = 1
"""torch intra-op threads while benchmarking. On cores shared with other work, several threads contending
with other processes made single forwards much slower and very noisy; one thread gives stable medians.
Every method runs under the same setting."""


@contextlib.contextmanager
def bench_threads() -> Iterator[None]:
    """Run the block with :data:`BENCH_THREADS` torch intra-op threads, then restore the previous count."""
    with torch_threads(BENCH_THREADS):
        yield


@dataclass
class RunResult:
    """What one attribution run produced and what it cost.

    Attributes:
        values: float64 ``[n_players]`` span-player values.
        coalitions: coalitions evaluated (every row handed to the reward model, duplicates included).
        tokens: token-forwards computed (padding included).
        calls: reward-model forward calls.
        lower_bound: tokens of the prefix trie of the evaluated coalitions (``None`` until computed).
        token_values: token-level values (``shap-partition`` only).
        feature_coalitions: bool ``[C, F]`` coalitions over the method's features (span players, or
            response tokens for ``shap-partition``), for the trie lower bound.
        token_level: True when the features are response tokens.
    """

    values: np.ndarray
    coalitions: int
    tokens: int
    calls: int
    lower_bound: int | None = None
    token_values: np.ndarray | None = None
    feature_coalitions: np.ndarray | None = None
    token_level: bool = False


@dataclass
class Timing:
    """Medians over the timed rounds of one method on one instance.

    Attributes:
        wall: wall-clock seconds per response.
        cpu: CPU seconds of this process per response (``time.process_time``). With one torch thread
            this is the compute itself, unaffected by other processes sharing the cores.
        peak_bytes: peak resident-set growth (:class:`PeakMemory`).
        result: the last run's :class:`RunResult`.
    """

    wall: float
    cpu: float
    peak_bytes: int
    result: RunResult


class PeakMemory:
    """Peak resident-set growth of this process while the block runs, sampled every ``interval`` s.

    CPU-only machines have no allocator peak counter for torch, so the resident set size is read from
    ``/proc/self/statm`` by a background thread (torch releases the GIL inside ops). Memory freed
    before the block and reused inside it is not counted, so this is a lower bound on the block's
    working set.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._start = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)


def timed(fn: Callable[[], RunResult], rounds: int, *, warmup: bool = True) -> Timing:
    """Time ``rounds`` runs of ``fn`` (after one untimed warm-up run when ``warmup``)."""
    if warmup:
        fn()
    walls, cpus, peak, result = [], [], 0, None
    for _ in range(rounds):
        with PeakMemory() as mem:
            c0, t0 = time.process_time(), time.perf_counter()
            result = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peak = max(peak, mem.peak_bytes)
    return Timing(statistics.median(walls), statistics.median(cpus), peak, result)


_PLAIN_CACHE: dict[tuple, tuple[float, float]] = {}


def plain_forward_seconds(model: torch.nn.Module, n_tokens: int, *, chunk: int = 4096, rounds: int = 3
                          ) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one plain causal forward of the reward model's base over ``n_tokens`` tokens.

    Up to ``chunk`` tokens this is one sequence of ``n_tokens``; beyond, the per-token time of one
    ``chunk``-token sequence times ``n_tokens`` (a single sequence that long would exceed the model's
    positions). Medians of ``rounds``; cached per (model, timed length).
    """
    length = min(n_tokens, chunk, model.config.n_positions)
    key = (id(model), length)  # every count above ``length`` reuses the same timed forward
    if key not in _PLAIN_CACHE:
        base = inspect_model(model).base
        ids = torch.randint(N_SPECIAL, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
        walls, cpus = [], []
        with torch.inference_mode():
            for _ in range(rounds):
                c0, t0 = time.process_time(), time.perf_counter()
                base(input_ids=ids, use_cache=False)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        _PLAIN_CACHE[key] = (statistics.median(walls), statistics.median(cpus))
    wall, cpu = _PLAIN_CACHE[key]
    scale = n_tokens / length
    return wall * scale, cpu * scale


def rel_l2(est: np.ndarray, ref: np.ndarray) -> float:
    """Relative L2 error ``|est - ref| / |ref|``."""
    return float(np.linalg.norm(est - ref) / np.linalg.norm(ref))


def machine_description() -> str:
    """CPU model, core count, torch version and the date (UTC)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores available, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
