"""Adaptive stopping on a trained reward model: what ``tol`` spends per response against fixed budgets.

The reward model of the locally built sentiment world (``scar demo``; :func:`scar.demo.sentiment.build`, loaded
from the cache, built on first use), span players, responses of its held-out reward data. For every response
the exact Shapley values are computed (all ``2**n`` coalitions; responses with ``--min-players`` to
``--max-players`` players), then SCAR runs with fixed budgets and with tolerances, the whole batch in one
call each, and the script prints, per setting: the budget spent per response (mean, min, max), the share of
responses that met ``tol``, the coalitions and tokens computed (the scorer's totals over all rounds), the
wall time, the rounds, the relative L2 error against the exact values (mean over responses) and the
coverage of the 95% intervals of the responses whose estimate was sampled (not capped at the exact plan;
their share and the number of intervals in brackets).

With ``--seeds K`` every setting runs K times (SCAR seeds 0 to K - 1) and the figures are over all K calls
(coalitions, tokens and wall time per call, the rest over every response of every call): one call's coverage
rests on a few dozen to a few hundred intervals, too few to tell 0.90 from 0.95. A second table gives the
coverage of the tolerance settings split by the round the response stopped in.

Run from the repository root::

    .venv/bin/python bench/adaptive_credit.py [--responses 24] [--method permutation] [--seeds 1]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from scar import SCAR
from scar.demo.sentiment import build
from scar.game.tokens import encode_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=24)
    parser.add_argument("--min-players", type=int, default=4)
    parser.add_argument("--max-players", type=int, default=14)
    parser.add_argument("--method", default="permutation", choices=["permutation", "kernel"])
    parser.add_argument("--seeds", type=int, default=1, help="calls per setting, SCAR seeds 0 to seeds - 1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = build(progress=False)
    tokenizer, model = world.tokenizer(), world.reward_model()
    common: dict[str, Any] = dict(players="span", seed=0, progress=False, suffix_ids=[tokenizer.eos_token_id])
    exact_scar = SCAR(model, tokenizer, method="exact", batch_size=64, **common)
    prompts, responses = [], []
    for row in world.reward_data("test"):
        if len(prompts) == args.responses:
            break
        if not row["response"].strip():
            continue
        enc = encode_pair(tokenizer, row["prompt"], row["response"], suffix_ids=common["suffix_ids"])
        if args.min_players <= len(exact_scar._segment(enc)) <= args.max_players:
            prompts.append(row["prompt"])
            responses.append(row["response"])
    exact = exact_scar(prompts, responses)
    players = [len(p) for p in exact.players]
    print(f"{len(prompts)} responses, {min(players)}-{max(players)} span players (mean {np.mean(players):.1f})")
    if args.method == "permutation":
        settings = [("budget 8", dict(budget=8)), ("budget 32", dict(budget=32)), ("budget 128", dict(budget=128))]
    else:
        settings = [("budget 4(n+1)", dict(budget=lambda n: 4 * (n + 1))), ("default", {})]
    settings += [(f"tol {t}", dict(tol=t)) for t in (0.1, 0.05, 0.03)]
    print(
        "| setting | budget per response: mean (min-max) | tol met | coalitions | tokens computed | rounds "
        "| wall s | rel. L2 error | 95% coverage (sampled, intervals) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    by_round: dict[str, dict[str, list[int]]] = {}
    for label, kw in settings:
        est, coalitions, tokens, walls = [], [], [], []
        for seed in range(args.seeds):
            scar = SCAR(model, tokenizer, method=args.method, batch_size=64, **{**common, "seed": seed}, **kw)
            start = time.perf_counter()
            dense = scar(prompts, responses)
            walls.append(time.perf_counter() - start)
            est += dense.estimates or []
            stats = {id(s): s for s in scar.last_stats if s is not None}.values()
            coalitions.append(sum(s.distinct_coalitions for s in stats))
            tokens.append(sum(s.tokens_computed for s in stats))
        budgets = [e.budget for e in est]
        errors, hits, total = [], 0, 0
        rounds: dict[str, list[int]] = {}
        for e, ref in zip(est, exact.values * args.seeds):
            errors.append(float((e.values - ref).norm() / ref.norm()))
            if e.stderr is not None and bool(e.stderr.any()):  # sampled (not capped at the exact plan)
                slack = 1e-5 * abs(e.full_value - e.base_value)  # float32 scores of two packings differ
                hit = int(((e.values - ref).abs() <= 1.959963984540054 * e.stderr + slack).sum())
                hits += hit
                total += ref.numel()
                cell = rounds.setdefault(str(min(e.rounds or 1, 3)), [0, 0])
                cell[0] += hit
                cell[1] += ref.numel()
        if "tol" in kw:
            by_round[label] = rounds
        met = [e.tol_met for e in est if e.tol_met is not None]
        sampled = np.mean([e.stderr is not None and bool(e.stderr.any()) for e in est])
        print(
            f"| {label} | {np.mean(budgets):.1f} ({min(budgets)}-{max(budgets)}) "
            f"| {f'{np.mean(met):.0%}' if met else ''} | {np.mean(coalitions):.0f} "
            f"| {np.mean(tokens):.0f} | {max(e.rounds or 1 for e in est)} | {np.mean(walls):.2f} "
            f"| {np.mean(errors):.3f} | {hits / total if total else float('nan'):.3f} ({sampled:.0%}, {total}) |",
            flush=True,
        )
    print("\n| setting | stopped after round 1 | round 2 | round 3 or later |")
    print("|---|---|---|---|")
    for label, rounds in by_round.items():
        cells = [f"{rounds[r][0] / rounds[r][1]:.3f} ({rounds[r][1]})" if r in rounds else "" for r in "123"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"{args.seeds} seed(s) per setting")


if __name__ == "__main__":
    main()
