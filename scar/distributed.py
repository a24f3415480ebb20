"""A pool of credit workers on Ray: :class:`CreditPool` scores a batch's Shapley credit on several processes.

Each worker is a Ray actor that holds the reward model and a :class:`scar.credit.rewarder.SCAR` with the
pool's settings. The model is loaded inside the actor, from a path (``from_pretrained``) or by a picklable
factory ``() -> (model, tokenizer)``, so it is never sent through Ray's object store. A call splits the
batch into *shards* of contiguous responses (:func:`plan_shards`): responses that share a prompt and stand
next to each other (a GRPO group) stay in one shard, and the shards are balanced by total length. Shards
go to idle workers as they free up; the results are put back in the caller's order.

Sharding does not change the credit: with a ``seed``, each response's sampling is drawn from ``(seed,
prompt ids, response ids)`` (:func:`scar.credit.rewarder.response_seed`), so the pool returns what one
local ``SCAR`` with the same settings returns, up to float rounding of the packed passes.

A failure in a worker raises :class:`CreditPoolError` naming the response by its index in the caller's
batch (the worker scores its shard's responses one at a time to find it); the worker's exception is its
``__cause__`` when it could be sent back.

Ray: ``CreditPool(...)`` uses the Ray runtime of the process when one is initialised; otherwise it starts a
local one (``ray.init(num_cpus=...)``) or, with ``address=``, connects to a running cluster. :meth:`close`
(or leaving the ``with`` block) ends the workers and shuts down the Ray runtime the pool started or
connected to. Ray is an optional dependency: ``pip install 'scar-rlhf[ray]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pickle
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

try:
    import ray
except ImportError:  # pragma: no cover - exercised in a subprocess without ray
    raise ImportError(
        "scar.distributed needs Ray: pip install 'scar-rlhf[ray]' (the 'ray' extra, ray[default]==2.60.0)"
    ) from None

from scar._checks import as_real, check_batch, check_positive_int
from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR
from scar.credit.rewards import DenseRewards
from scar.scoring import ScorerConfig, ScorerStats

__all__ = ["CreditPool", "CreditPoolError", "plan_shards"]

_SCORER_FIELDS = frozenset(f.name for f in dataclasses.fields(ScorerConfig))
ModelSource = str | os.PathLike[str] | Callable[[], tuple[Any, Any]]


class CreditPoolError(RuntimeError):
    """A credit worker failed.

    Attributes:
        index: the failing response's index in the caller's batch, or None when no single response fails
            on its own (the message then names the shard's range).
        worker: the index of the worker that failed.
    """

    def __init__(self, message: str, *, index: int | None, worker: int) -> None:
        super().__init__(message)
        self.index = index
        self.worker = worker


def _key(prompt: Any) -> Any:
    """A hashable form of a prompt (text, or token ids)."""
    return prompt if isinstance(prompt, str) else tuple(int(t) for t in prompt)


def plan_shards(
    prompts: Sequence[str | Sequence[int]], responses: Sequence[str | Sequence[int]], n_shards: int
) -> list[range]:
    """Split a batch into at most ``n_shards`` contiguous shards that keep prompt groups whole.

    A *group* is a maximal run of consecutive responses with equal prompts (how GRPO lays out the
    completions of one prompt). Each group weighs the total length of its prompts and responses (characters
    for text, tokens for ids, plus one per response); the shards are contiguous runs of whole groups whose
    largest weight is as small as possible. When that leaves fewer shards than asked for and fewer than
    groups, the heaviest shards holding several groups are split further without raising the largest weight.

    Returns:
        the shards as ranges of batch indices, in order, covering the batch (empty for an empty batch).
    """
    check_batch(prompts, responses, None)
    n_shards = check_positive_int(n_shards, "n_shards")
    bounds: list[int] = []  # start index of each group
    weights: list[int] = []
    previous: Any = object()
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        key = _key(prompt)
        if not bounds or key != previous:
            bounds.append(i)
            weights.append(0)
        previous = key
        weights[-1] += len(prompt) + len(response) + 1
    if not weights:
        return []
    bounds.append(len(prompts))
    k = min(n_shards, len(weights))

    def greedy(cap: int) -> list[tuple[int, int]]:
        """Groups [a, b) per shard, filled left to right up to ``cap``."""
        parts, start, load = [], 0, 0
        for g, w in enumerate(weights):
            if load and load + w > cap:
                parts.append((start, g))
                start, load = g, 0
            load += w
        parts.append((start, len(weights)))
        return parts

    lo, hi = max(weights), sum(weights)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(greedy(mid)) <= k:
            hi = mid
        else:
            lo = mid + 1
    parts = greedy(lo)
    while len(parts) < k:
        # split the heaviest shard with several groups at its most even point
        splittable = [p for p in parts if p[1] - p[0] > 1]
        a, b = max(splittable, key=lambda p: sum(weights[p[0] : p[1]]))
        total = sum(weights[a:b])
        best, best_gap, run = a + 1, None, 0
        for g in range(a, b - 1):
            run += weights[g]
            gap = abs(total - 2 * run)
            if best_gap is None or gap < best_gap:
                best, best_gap = g + 1, gap
        at = parts.index((a, b))
        parts[at : at + 1] = [(a, best), (best, b)]
    return [range(bounds[a], bounds[b]) for a, b in parts]


def _concat(parts: Sequence[DenseRewards]) -> DenseRewards:
    """The dense rewards of consecutive shards as one batch."""
    return DenseRewards(
        [t for p in parts for t in p.token_rewards],
        torch.cat([p.rewards for p in parts]) if parts else torch.zeros(0, dtype=torch.float64),
        torch.cat([p.base_values for p in parts]) if parts else torch.zeros(0, dtype=torch.float64),
        [v for p in parts for v in p.values],
        [s for p in parts for s in p.stderr],
        [pl for p in parts for pl in p.players],
        parts[0].method if parts else "scar",
        [e for p in parts for e in (p.estimates or [])]
        if parts and all(p.estimates is not None for p in parts)
        else None,
    )


def _load_tokenizer(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    return source


class _CreditWorker:
    """The body of a Ray actor: a reward model and a ``SCAR`` over it."""

    def __init__(
        self,
        index: int,
        model: ModelSource,
        tokenizer: Any,
        policy_tokenizer: Any,
        settings: dict[str, Any],
        torch_threads: int,
        model_kwargs: dict[str, Any],
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.index = index
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification

            reward_model = AutoModelForSequenceClassification.from_pretrained(model, **model_kwargs).eval()
            tok = _load_tokenizer(tokenizer if tokenizer is not None else model)
        else:
            built = model()
            if not (isinstance(built, tuple) and len(built) == 2):
                raise TypeError(f"the model factory must return (model, tokenizer), got {type(built).__name__}")
            reward_model, tok = built
            if tokenizer is not None:
                tok = _load_tokenizer(tokenizer)
        self.credit = SCAR(reward_model, tok, policy_tokenizer=_load_tokenizer(policy_tokenizer), **settings)

    def ready(self) -> int:
        return os.getpid()

    def tokenizer(self) -> Any:
        return self.credit.tokenizer

    def score(
        self,
        start: int,
        prompts: list[Any],
        responses: list[Any],
        completion_ids: list[list[int]] | None,
    ) -> dict[str, Any]:
        """Credit of one shard; a failure comes back as a record naming the response (batch index)."""
        began, began_cpu = time.perf_counter(), time.process_time()
        try:
            dense = self.credit(prompts, responses, completion_ids)
        except Exception as err:
            return self._locate(start, prompts, responses, completion_ids, err)
        return {
            "dense": dense,
            "stats": list(self.credit.last_stats),
            "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - began_cpu,
        }

    def _locate(
        self,
        start: int,
        prompts: list[Any],
        responses: list[Any],
        completion_ids: list[list[int]] | None,
        err: Exception,
    ) -> dict[str, Any]:
        """Score the shard's responses one at a time to name the one that fails."""
        for j in range(len(responses)):
            ids = None if completion_ids is None else [completion_ids[j]]
            try:
                self.credit([prompts[j]], [responses[j]], ids)
            except Exception as single:
                # in a one-response call, "response 0" is that response: say its index in the caller's batch
                message = re.sub(r"\bresponse 0\b", f"response {start + j}", str(single))
                return self._error(start + j, f"{type(single).__name__}: {message}", single)
        last = start + len(responses) - 1
        return self._error(None, f"{type(err).__name__}: {err} (no response of {start}..{last} fails alone)", err)

    def _error(self, index: int | None, message: str, err: Exception) -> dict[str, Any]:
        try:  # sent back only if the driver can rebuild it (some exceptions pickle but do not unpickle)
            pickle.loads(pickle.dumps(err))
            cause: Exception | None = err
        except Exception:
            cause = None
        return {"error": message, "index": index, "cause": cause}


class _Dispatch:
    """Hands shards to idle workers, one at a time each, and collects the results in shard order."""

    def __init__(self, pool: CreditPool, shards: list[range], batch: tuple[Any, Any, Any]) -> None:
        self.pool, self.shards, self.batch = pool, shards, batch
        self.queue = deque(range(len(shards)))
        self.idle = deque(range(len(pool._workers)))
        self.running: dict[Any, tuple[int, int]] = {}  # ref -> (shard, worker)
        self.results: list[dict[str, Any]] = [{} for _ in shards]
        self.workers: list[int] = [0] * len(shards)

    def submit(self) -> list[Any]:
        prompts, responses, completion_ids = self.batch
        refs = []
        while self.queue and self.idle:
            s, w = self.queue.popleft(), self.idle.popleft()
            rows = self.shards[s]
            ids = None if completion_ids is None else [completion_ids[i] for i in rows]
            ref = self.pool._workers[w].score.remote(
                rows.start, [prompts[i] for i in rows], [responses[i] for i in rows], ids
            )
            self.running[ref] = (s, w)
            refs.append(ref)
        return refs

    def complete(self, ref: Any, get: Callable[[], Any]) -> None:
        """Take the result of ``ref`` (``get()`` returns it); raise :class:`CreditPoolError` for a failure."""
        s, w = self.running.pop(ref)
        try:
            result = get()
        except ray.exceptions.RayError as err:  # the actor died, or Ray could not run the task
            rows = self.shards[s]
            raise CreditPoolError(
                f"credit of responses {rows.start}..{rows.stop - 1} of the batch failed on worker {w}: {err}",
                index=None,
                worker=w,
            ) from None
        if "error" in result:
            index = result["index"]
            rows = self.shards[s]
            where = f"response {index}" if index is not None else f"responses {rows.start}..{rows.stop - 1}"
            raise CreditPoolError(
                f"credit of {where} of the batch failed on worker {w}: {result['error']}", index=index, worker=w
            ) from result["cause"]
        self.results[s], self.workers[s] = result, w
        self.idle.append(w)

    def finish(self) -> DenseRewards:
        stats: list[ScorerStats | None] = []
        workers: list[int] = []
        for shard, result, w in zip(self.shards, self.results, self.workers):
            stats.extend(result["stats"])
            workers.extend([w] * len(shard))
        self.pool.last_stats, self.pool.last_workers = stats, workers
        self.pool.last_seconds = [float(r["seconds"]) for r in self.results]
        self.pool.last_cpu_seconds = [float(r["cpu_seconds"]) for r in self.results]
        return _concat([r["dense"] for r in self.results])


class CreditPool:
    """Dense rewards by Shapley credit, computed by a pool of Ray workers.

    ``CreditPool(model, tokenizer, num_workers=2, players="span", seed=0)(prompts, responses)`` returns
    what ``SCAR(model, tokenizer, players="span", seed=0)(prompts, responses)`` returns; the batch is split
    into shards that keep prompt groups whole (:func:`plan_shards`) and scored by the workers in parallel.

    Args:
        model: where each worker gets the reward model: a path (or hub name) that
            ``AutoModelForSequenceClassification.from_pretrained`` loads, or a picklable factory
            ``() -> (model, tokenizer)`` run inside each worker.
        tokenizer: the reward model's tokenizer: a path, a (picklable) tokenizer object, or None (with a
            model path: loaded from the same path; with a factory: the one it returns).
        num_workers: number of worker actors.
        address: a Ray cluster to connect to (``ray.init(address=...)``, e.g. ``"auto"`` or
            ``"ray://head:10001"``) when the process has no Ray runtime yet; None starts a local one. The
            cluster's nodes need this package and the model where ``model`` points.
        num_cpus: CPUs of the local Ray runtime the pool starts (default ``num_workers * torch_threads``);
            only without ``address``.
        torch_threads: torch intra-op threads of each worker, and the CPUs each worker actor reserves.
        num_gpus: GPUs each worker actor reserves (0: CPU workers; a worker with a GPU should load its
            model onto it in its factory or through ``model_kwargs``, e.g. ``{"device_map": "cuda"}``).
        shards_per_worker: shards per worker in a call: more than one lets a worker that finishes early
            take another shard.
        policy_tokenizer: the policy's tokenizer (path or object) when it differs from the reward model's.
        model_kwargs: keyword arguments of ``from_pretrained`` for a model path (``dtype``, ...).
        startup_timeout: seconds to wait for the workers to load their models (a cluster without the
            resources the workers ask for would otherwise wait forever).
        **credit_settings: ``SCAR``'s settings (fields of :class:`~scar.credit.config.CreditConfig` and
            :class:`~scar.scoring.ScorerConfig`), checked here. Set ``seed`` to get the same credit as a
            local ``SCAR``; ``progress`` shows this pool's progress bar over completed shards.

    Attributes:
        last_stats: after a call, one :class:`~scar.scoring.ScorerStats` per response, as
            ``SCAR.last_stats`` (responses scored in one scorer call share one object).
        last_workers: after a call, the index of the worker that scored each response.
        last_seconds: after a call, each shard's credit time in its worker, in seconds (wall clock).
        last_cpu_seconds: the same in CPU seconds of the worker process (what the shard cost, whatever
            else the machine ran meanwhile).

    Raises:
        TypeError / ValueError: bad settings (before any worker starts).
        RuntimeError: a worker failed to load its model; TimeoutError: the workers did not start in time.
    """

    def __init__(
        self,
        model: ModelSource,
        tokenizer: Any | None = None,
        *,
        num_workers: int = 1,
        address: str | None = None,
        num_cpus: int | None = None,
        torch_threads: int = 1,
        num_gpus: float = 0,
        shards_per_worker: int = 2,
        policy_tokenizer: Any | None = None,
        model_kwargs: dict[str, Any] | None = None,
        startup_timeout: float = 300.0,
        **credit_settings: Any,
    ) -> None:
        if isinstance(model, torch.nn.Module) or not (isinstance(model, (str, os.PathLike)) or callable(model)):
            raise TypeError(
                "model must be a path that from_pretrained loads or a picklable factory () -> (model, tokenizer), "
                f"got {type(model).__name__} (each worker loads its own copy; save a loaded model with "
                "save_pretrained and pass its folder)"
            )
        self.num_workers = check_positive_int(num_workers, "num_workers")
        torch_threads = check_positive_int(torch_threads, "torch_threads")
        self.shards_per_worker = check_positive_int(shards_per_worker, "shards_per_worker")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, got {type(address).__name__}")
        if num_cpus is not None:
            if address is not None:
                raise ValueError("num_cpus sizes a local Ray runtime; a cluster joined with address= has its own")
            num_cpus = check_positive_int(num_cpus, "num_cpus")
        num_gpus = as_real(num_gpus, "num_gpus")
        if not num_gpus >= 0:
            raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
        startup_timeout = as_real(startup_timeout, "startup_timeout")
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be a positive number of seconds, got {startup_timeout}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
        unknown = set(credit_settings) - CreditConfig.field_names() - _SCORER_FIELDS
        if unknown:
            raise TypeError(
                f"CreditPool got unknown settings {sorted(unknown)}; CreditConfig takes "
                f"{sorted(CreditConfig.field_names())}, ScorerConfig {sorted(_SCORER_FIELDS)}"
            )
        config = CreditConfig(**{k: v for k, v in credit_settings.items() if k in CreditConfig.field_names()})
        ScorerConfig(**{k: v for k, v in credit_settings.items() if k in _SCORER_FIELDS})
        self.progress = config.progress
        settings = {**credit_settings, "progress": False}

        self._model_source = model
        self._tokenizer_source = tokenizer
        self._tokenizer: Any = None
        self._workers: list[Any] = []
        self._owns_ray = False
        self.last_stats: list[ScorerStats | None] = []
        self.last_workers: list[int] = []
        self.last_seconds: list[float] = []
        self.last_cpu_seconds: list[float] = []

        if not ray.is_initialized():
            if address is None:
                ray.init(
                    num_cpus=num_cpus or self.num_workers * torch_threads,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=address, logging_level=logging.WARNING)
            self._owns_ray = True
        actor = ray.remote(_CreditWorker).options(num_cpus=torch_threads, num_gpus=num_gpus)
        self._workers = [
            actor.remote(w, model, tokenizer, policy_tokenizer, settings, torch_threads, dict(model_kwargs or {}))
            for w in range(self.num_workers)
        ]
        try:
            ray.get([w.ready.remote() for w in self._workers], timeout=startup_timeout)
        except ray.exceptions.GetTimeoutError:
            available = ray.available_resources()
            self.close()
            raise TimeoutError(
                f"{self.num_workers} credit workers ({torch_threads} CPU, {num_gpus} GPU each) did not start within "
                f"{startup_timeout} s; the Ray runtime has {available} available"
            ) from None
        except ray.exceptions.RayError as err:
            self.close()
            raise RuntimeError(f"a credit worker failed to start (loading the reward model): {err}") from None

    def __repr__(self) -> str:
        state = "closed" if not self._workers else f"{len(self._workers)} workers"
        return f"CreditPool({state})"

    @property
    def tokenizer(self) -> Any:
        """The reward model's tokenizer, as the workers hold it (fetched from a worker on first use)."""
        if self._tokenizer is None:
            self._check_open()
            self._tokenizer = ray.get(self._workers[0].tokenizer.remote())
        return self._tokenizer

    def _check_open(self) -> None:
        if not self._workers:
            raise RuntimeError("this CreditPool is closed")

    def _prepare(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None,
    ) -> _Dispatch:
        self._check_open()
        check_batch(prompts, responses, completion_ids)
        batch = (
            [p if isinstance(p, str) else [int(t) for t in p] for p in prompts],
            [r if isinstance(r, str) else [int(t) for t in r] for r in responses],
            None if completion_ids is None else [[int(t) for t in row] for row in completion_ids],
        )
        shards = plan_shards(batch[0], batch[1], self.num_workers * self.shards_per_worker)
        return _Dispatch(self, shards, batch)

    def __call__(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> DenseRewards:
        """Dense rewards for a batch: ``SCAR.__call__``'s arguments and result, computed by the workers.

        Raises:
            CreditPoolError: a worker failed; names the response by its index in this batch.
        """
        job = self._prepare(prompts, responses, completion_ids)
        with tqdm(total=len(job.shards), desc="SCAR credit pool", unit="shard", disable=not self.progress) as bar:
            job.submit()
            while job.running:
                (ref,), _ = ray.wait(list(job.running), num_returns=1)
                job.complete(ref, functools.partial(ray.get, ref))
                bar.update(1)
                job.submit()
        return job.finish()

    async def acall(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> DenseRewards:
        """The same as calling the pool, awaited on the running event loop (which stays free meanwhile)."""
        job = self._prepare(prompts, responses, completion_ids)
        with tqdm(total=len(job.shards), desc="SCAR credit pool", unit="shard", disable=not self.progress) as bar:
            futures = {asyncio.wrap_future(ref.future()): ref for ref in job.submit()}
            while futures:
                done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    job.complete(futures.pop(future), future.result)
                    bar.update(1)
                futures.update({asyncio.wrap_future(ref.future()): ref for ref in job.submit()})
        return job.finish()

    def close(self) -> None:
        """End the workers; shut down the Ray runtime if this pool started or connected to it. Idempotent."""
        workers, self._workers = self._workers, []
        for w in workers:
            with contextlib.suppress(Exception):  # a runtime already gone has nothing left to end
                ray.kill(w)
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()

    def __enter__(self) -> CreditPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
