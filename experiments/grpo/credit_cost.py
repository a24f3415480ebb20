"""What each credit method costs per GRPO batch, and how close its player values are to exact Shapley values.

Batches are sampled from the world's pre-trained policy on the held-out prompts as training samples them
(``prompts_per_step`` prompts x ``num_generations`` completions of ``min_tokens`` to ``max_tokens`` tokens,
temperature ``config.temperature``, a fixed seed). For each method, on each batch:

* ``cost``: the wall time of the method's credit for the batch over the wall time of one plain padded
  reward-model pass over the same batch (``prompt ⊕ response ⊕ EOS``, what a sparse reward costs), both with
  ``config.threads`` torch threads; the plain pass is the fastest of three runs after a warm-up, and a warm-up
  call of every method precedes the batches (its first call builds the scorer).
* ``corr``: the Pearson correlation of the method's player values with the exact Shapley values
  (``SCAR(method="exact")``, the same span players) per response, averaged over the responses with at least
  ``min_players`` players; NaN for a method with other players (sentences), which has no span values.

The table reports the median cost and the mean correlation over the batches. The amortized methods learn
across calls (their first calls spread ``r`` evenly, see :mod:`scar.credit.amortized`), so they see the
batches in order and their correlation is reported over the last half of the batches (all batches in
``per_batch``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from grpo.methods import method as get_method
from grpo.train import quiet_and_threads, sample_completions
from scar.credit.rewarder import SCAR
from scar.game.tokens import encode_pair
from scar.scoring.model import inspect_model
from scar.scoring.padded import score_padded

__all__ = ["COST_METHODS", "sample_batches", "credit_cost", "format_cost_table"]

COST_METHODS = (
    "scar-perm16",
    "scar-perm4",
    "scar-perm2",
    "scar-kernel-4",
    "scar-kernel-2",
    "scar-kernel-1",
    "scar-owen",
    "scar-sentence-perm2",
    "scar-adaptive",
    "scar-default",
    "scar-amortized",
    "scar-amortized-0.5",
)
"""The credit methods measured by default: every SCAR configuration of the lever sweep and the default."""


def sample_batches(
    world: Any, config: Any, n_batches: int, seed: int = 0
) -> list[tuple[list[str], list[str], list[list[int]]]]:
    """``n_batches`` GRPO-shaped batches ``(prompts, responses, completion_ids)`` from the pre-trained policy.

    Completion ids end with the EOS token where the policy stopped, like TRL's; the response text is their
    decoding without special tokens. The global RNG is restored afterwards.
    """
    tokenizer, policy = world.tokenizer(), world.policy().eval()
    held_out = world.prompts("test")
    per_batch = config.prompts_per_step
    if n_batches * per_batch > len(held_out):
        raise ValueError(
            f"{n_batches} batches of {per_batch} prompts need more than the {len(held_out)} held-out prompts"
        )
    batches = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for b in range(n_batches):
            prompts = [p for p in held_out[b * per_batch : (b + 1) * per_batch] for _ in range(config.num_generations)]
            _, ids = sample_completions(policy, tokenizer, prompts, config)
            batches.append((prompts, tokenizer.batch_decode(ids, skip_special_tokens=True), ids))
    return batches


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def credit_cost(
    world: Any,
    config: Any,
    methods: Sequence[str] = COST_METHODS,
    n_batches: int = 6,
    seed: int = 0,
    min_players: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Cost per batch (relative to one plain reward-model pass) and correlation with exact Shapley values.

    Returns ``{"batches": [{"plain_s", "responses", "players"}], "exact_s", "methods": {name: {"cost",
    "corr", "per_batch": [{"seconds", "cost", "corr", "coalitions"}]}}}``; ``cost`` is the median over the
    batches, ``corr`` the mean (over the last half of the batches for the amortized methods).
    """
    with quiet_and_threads(config.threads):
        tokenizer, reward_model = world.tokenizer(), world.reward_model()
        eos = [tokenizer.eos_token_id]
        info = inspect_model(reward_model)
        batches = sample_batches(world, config, n_batches, seed)

        record: dict[str, Any] = {"batches": [], "methods": {}}
        exact = SCAR(reward_model, tokenizer, players="span", method="exact", suffix_ids=eos, progress=False)
        exact_values, exact_s = [], 0.0
        for prompts, responses, ids in batches:
            rows = [encode_pair(tokenizer, p, r, suffix_ids=eos).ids for p, r in zip(prompts, responses)]
            with torch.no_grad():
                score_padded(reward_model, info, rows)  # warm-up
                plain = min(_seconds(lambda rows=rows: score_padded(reward_model, info, rows)) for _ in range(3))
            t0 = time.perf_counter()
            exact_values.append(exact(prompts, responses, ids).values)
            exact_s += time.perf_counter() - t0
            players = [len(v) for v in exact_values[-1]]
            record["batches"].append({"plain_s": plain, "responses": len(rows), "players": players})
        record["exact_s"] = exact_s

        for name in methods:
            spec = get_method(name)
            provider = spec.make(reward_model, tokenizer, seed)
            amortized = "amortized" in name
            if not amortized:  # the first call builds the scorer; amortized methods learn from every call
                provider(*batches[0])
            per_batch = []
            for (prompts, responses, ids), want, meta in zip(batches, exact_values, record["batches"]):
                t0 = time.perf_counter()
                got = provider(prompts, responses, ids)
                seconds = time.perf_counter() - t0
                corrs = [
                    float(np.corrcoef(g.numpy(), w.numpy())[0, 1])
                    for g, w in zip(got.values, want)
                    if len(g) == len(w) >= min_players and float(w.std()) > 0 and float(g.std()) > 0
                ]
                stats = {id(s): s for s in getattr(provider, "last_stats", []) if s is not None}
                per_batch.append(
                    {
                        "seconds": seconds,
                        "cost": seconds / meta["plain_s"],
                        "corr": float(np.mean(corrs)) if corrs else float("nan"),
                        "coalitions": sum(s.distinct_coalitions for s in stats.values()),
                    }
                )
            scored = per_batch[len(per_batch) // 2 :] if amortized else per_batch
            record["methods"][name] = {
                "description": spec.description,
                "cost": statistics.median(b["cost"] for b in per_batch),
                "corr": float(np.nanmean([b["corr"] for b in scored])),
                "per_batch": per_batch,
            }
            if progress:
                m = record["methods"][name]
                print(
                    f"{name}: {m['cost']:.1f}x a plain pass, correlation with exact Shapley {m['corr']:.3f}", flush=True
                )
        return record


def format_cost_table(record: dict[str, Any]) -> str:
    """Markdown table of :func:`credit_cost`'s record, cheapest first."""
    players = [n for b in record["batches"] for n in b["players"]]
    plain = statistics.median(b["plain_s"] for b in record["batches"])
    lines = [
        f"{len(record['batches'])} batches of {record['batches'][0]['responses']} responses, "
        f"{min(players)}-{max(players)} span players (mean {np.mean(players):.1f}); one plain reward-model pass "
        f"over a batch: {plain * 1000:.1f} ms (median).",
        "",
        "| credit | cost per batch / plain pass | coalitions per batch | Pearson r with exact Shapley |",
        "|---|---|---|---|",
    ]
    for name, m in sorted(record["methods"].items(), key=lambda kv: kv[1]["cost"]):
        coalitions = statistics.median(b["coalitions"] for b in m["per_batch"])
        corr = "other players" if math.isnan(m["corr"]) else f"{m['corr']:.3f}"
        lines.append(f"| {name} | {m['cost']:.1f}x | {coalitions:.0f} | {corr} |")
    return "\n".join(lines)
