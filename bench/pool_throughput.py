"""Throughput of scar.distributed.CreditPool on the sentiment world, with 1 and 2 workers (and in-process SCAR).

    .venv/bin/python bench/pool_throughput.py --workers 1 2 --batches 16 --repeats 5 --json /tmp/pool.json

The world is ``scar.demo.sentiment.build()`` (cached in ``$SCAR_CACHE``, default ``~/.cache/scar``). Each
batch is 4 prompts x 4 completions sampled from the world's policy (temperature 1, cut after EOS), the
layout of a GRPO batch, scored with the completion ids as a trainer passes them (the policy shares the
reward model's tokenizer; a completion that is only EOS is scored as ``v(∅)``). Credit: span players,
``method="permutation", budget=2`` (SCAR.for_training's settings), ``seed=0``, the reward model's template
suffix ``[eos]``; 1 torch thread per worker (and for the in-process row). Every configuration scores one
warm-up batch, then ``--batches`` timed batches, ``--repeats`` times in turn (so a change in the machine's
load hits every configuration alike). The load average is sampled every second during each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import threading
import time
from datetime import datetime, timezone

import torch


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class LoadSampler:
    """Samples the 1-minute load average every second in a thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(1.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sample_batches(world, n_batches: int, prompts_per_batch: int, completions: int, seed: int):
    """``n_batches`` GRPO-shaped batches (prompts repeated ``completions`` times, contiguous) from the policy."""
    from scar.demo.sentiment import POLICY_TOKENS

    tokenizer, policy = world.tokenizer(), world.policy()
    rng = random.Random(seed)
    pool = world.prompts("test")
    torch.manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        chosen = rng.sample(pool, prompts_per_batch)
        prompts = [p for p in chosen for _ in range(completions)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            out = policy.generate(
                **enc, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=2 * POLICY_TOKENS[1],
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        responses, completion_ids = [], []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:  # keep the EOS, as a trainer's completion ids do
                row = row[: row.index(tokenizer.eos_token_id) + 1]
            completion_ids.append(row)
            responses.append(tokenizer.decode(row, skip_special_tokens=True))
        batches.append((prompts, responses, completion_ids))
    return batches


def run_config(credit, batches) -> dict:
    """Score a warm-up batch, then every batch, timing each; returns the timings and the load samples."""
    credit(*batches[0])
    times, responses, worker_s, cpu_s, driver_cpu_s = [], 0, 0.0, 0.0, 0.0
    with LoadSampler() as load:
        for prompts, resp, ids in batches:
            began, began_cpu = time.perf_counter(), time.process_time()
            credit(prompts, resp, ids)
            times.append(time.perf_counter() - began)
            cpu = time.process_time() - began_cpu
            responses += len(resp)
            driver_cpu_s += cpu
            worker_s += sum(getattr(credit, "last_seconds", [times[-1]]))
            cpu_s += sum(getattr(credit, "last_cpu_seconds", [cpu]))
    total = sum(times)
    return {
        "responses": responses,
        "wall_s": total,
        "responses_per_s": responses / total,
        "batch_s_median": statistics.median(times),
        "worker_s_per_response": worker_s / responses,
        "cpu_s_per_response": cpu_s / responses,
        "driver_cpu_s_per_response": driver_cpu_s / responses,
        "load_min": min(load.samples),
        "load_max": max(load.samples),
        "load_mean": statistics.fmean(load.samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-local", action="store_true", help="skip the in-process SCAR row")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    from scar.credit.rewarder import SCAR
    from scar.demo.sentiment import build
    from scar.distributed import CreditPool

    world = build(progress=False)
    tokenizer = world.tokenizer()
    settings = dict(players="span", method="permutation", budget=2, seed=0, suffix_ids=[tokenizer.eos_token_id],
                    progress=False)
    batches = sample_batches(world, args.batches, 4, 4, seed=0)
    configs = [] if args.no_local else [("in-process SCAR", None)]
    configs += [(f"CreditPool, {w} worker{'s' if w > 1 else ''}", w) for w in args.workers]
    local = SCAR(world.reward_model(), tokenizer, **settings)
    local(*batches[0])
    n_players = [len(p) for batch in batches for p in local(*batch).players]

    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    started = datetime.now(timezone.utc)
    for repeat in range(args.repeats):
        for name, w in configs:
            if w is None:
                res = run_config(local, batches)
            else:  # one pool at a time, started afresh each repeat (not timed)
                with CreditPool(str(world.path / "reward_model"), str(world.path / "tokenizer"), num_workers=w,
                                num_cpus=w, torch_threads=1, **settings) as pool:
                    res = run_config(pool, batches)
            res["repeat"] = repeat
            results[name].append(res)
            print(f"{name:24s} repeat {repeat}: {res['responses_per_s']:.2f} responses/s, "
                  f"{res['worker_s_per_response']:.4f} worker-s/response, "
                  f"{res['cpu_s_per_response']:.4f} CPU-s/response, "
                  f"driver {res['driver_cpu_s_per_response']:.4f} CPU-s/response, "
                  f"load {res['load_min']:.2f}-{res['load_max']:.2f}", flush=True)
    finished = datetime.now(timezone.utc)

    print()
    print(f"machine: {lscpu_model()}, {os.cpu_count()} CPUs; {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC")
    print(f"batches: {args.batches} x 16 responses; players per response: median {statistics.median(n_players)}, "
          f"range {min(n_players)}-{max(n_players)}")
    print("| configuration | responses/s (median of repeats; min-max) | credit wall s per response "
          "| credit CPU s per response | load average (min-max) |")
    print("| --- | --- | --- | --- | --- |")
    for name, _ in configs:
        rs = results[name]
        rate = [r["responses_per_s"] for r in rs]
        cost = [r["worker_s_per_response"] for r in rs]
        cpu = [r["cpu_s_per_response"] for r in rs]
        load = f"{min(r['load_min'] for r in rs):.2f}-{max(r['load_max'] for r in rs):.2f}"
        print(f"| {name} | {statistics.median(rate):.2f} ({min(rate):.2f}-{max(rate):.2f}) | "
              f"{statistics.median(cost):.4f} | {statistics.median(cpu):.4f} | {load} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": lscpu_model(), "cpus": os.cpu_count(), "started": started.isoformat(),
                       "finished": finished.isoformat(), "batches": args.batches, "players": n_players,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
