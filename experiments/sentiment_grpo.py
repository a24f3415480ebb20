"""GRPO on the local sentiment task: sparse GRPO, attention-based credit and SCAR configurations, compared.

    .venv/bin/python experiments/sentiment_grpo.py compare            # the headline comparison, 3 seeds
    .venv/bin/python experiments/sentiment_grpo.py levers             # the budget-versus-benefit sweep
    .venv/bin/python experiments/sentiment_grpo.py compare --quick    # seconds, on the tiny world
    .venv/bin/python experiments/sentiment_grpo.py table --out DIR    # the tables of an earlier run
    .venv/bin/python experiments/sentiment_grpo.py table --out DIR --cost-from DIR2  # + cost vs benefit plot
    .venv/bin/python experiments/sentiment_grpo.py cost               # credit cost per batch vs exact-Shapley fit
    .venv/bin/python experiments/sentiment_grpo.py scale --ratios-from DIR  # step cost vs policy size
    .venv/bin/python experiments/sentiment_grpo.py compare --world small-reward  # reward model 1/4 the policy

The first call builds the sentiment world (reward model and policy, trained locally) into ~/.cache/scar
(``$SCAR_CACHE``); later calls load it. Results go to ``--out`` (``results.json``, the plot
``training_reward.png`` and ``tables.md``). What is trained and measured: experiments/grpo/train.py;
the methods: experiments/grpo/methods.py; a measured run: bench/RESULTS_training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from grpo import (
    credit_cost,
    methods,
    policy_scale,
    report,
    train,
    worlds,
)  # experiments/grpo: the script's folder is on sys.path

PRESETS = {"compare": methods.COMPARISON, "levers": methods.LEVERS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        choices=[*PRESETS, "table", "cost", "scale"],
        help="which comparison to run, the tables of --out, the credit's cost, or the step cost by policy size",
    )
    parser.add_argument("--batches", type=int, default=6, help="cost: batches measured (default: %(default)s)")
    parser.add_argument(
        "--cost-from",
        default=None,
        help="table: a cost run's --out; plots each method's cost against its steps and wall ratios",
    )
    parser.add_argument(
        "--ratios-from",
        default=None,
        help="scale: a training run's --out; its steps-to-threshold ratios give the derived wall-time ratios",
    )
    parser.add_argument("--methods", nargs="+", choices=list(methods.METHODS), help="override the preset's methods")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default 150; 3 with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; 0 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny world, one seed, three steps")
    parser.add_argument(
        "--world",
        default="default",
        choices=["default", *worlds.VARIANTS],
        help="the sentiment world (small-reward: a 2 x 64 reward model; default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/sentiment_grpo_<what>)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    worlds.register()
    size = "tiny" if args.quick else args.world
    out = Path(args.out or f"runs/sentiment_grpo_{args.what}")
    if args.what == "table":
        results = train.load(out)
        summary = report.summarise(results)
        print(report.format_table(results, summary))
        if args.cost_from:
            cost = json.loads((Path(args.cost_from) / "cost.json").read_text(encoding="utf-8"))
            print(f"plot: {report.plot_levers(summary, cost, out / report.LEVERS_PLOT_FILE)}")
        return
    config = train.TrainConfig(threads=args.threads)
    if args.what == "cost":
        world = train.build_sentiment_world(size=size, progress=True)
        record = credit_cost.credit_cost(
            world,
            config,
            args.methods or credit_cost.COST_METHODS,
            n_batches=1 if args.quick else args.batches,
            progress=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        table = credit_cost.format_cost_table(record)
        (out / "cost.md").write_text(table + "\n", encoding="utf-8")
        print()
        print(table)
        return
    if args.what == "scale":
        world = train.build_sentiment_world(size=size, progress=True)
        sizes = policy_scale.SIZES[:2] if args.quick else policy_scale.SIZES
        record = policy_scale.policy_scale(
            world,
            config,
            args.methods or ("sparse", "scar-training"),
            sizes,
            steps=args.steps or (2 if args.quick else 6),
            progress=True,
        )
        ratios = None
        if args.ratios_from:
            summary = report.summarise(train.load(args.ratios_from))
            ratios = {
                m: s["steps_ratio_to_sparse"]
                for m, s in summary["methods"].items()
                if s["steps_ratio_to_sparse"] is not None
            }
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        table = policy_scale.format_scale_table(record, ratios)
        (out / "scale.md").write_text(table + "\n", encoding="utf-8")
        print()
        print(table)
        return
    if args.quick:  # seconds, not minutes: short completions, small groups
        config = train.TrainConfig(
            threads=args.threads, prompts_per_step=2, min_tokens=8, max_tokens=16, eval_samples_per_prompt=1
        )
    logging.basicConfig(level=logging.WARNING)
    results = train.run(
        methods=args.methods or PRESETS[args.what],
        seeds=tuple(args.seeds) if args.seeds else ((0,) if args.quick else (0, 1, 2)),
        steps=args.steps or (3 if args.quick else 150),
        size=size,
        out_dir=out,
        progress=True,
        config=config,
    )
    summary = report.summarise(results)
    table = report.format_table(results, summary)
    report.plot(results, out / report.PLOT_FILE)
    (out / "tables.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\nresults: {out}/{train.RESULTS_FILE}, plot: {out}/{report.PLOT_FILE}, tables: {out}/tables.md")


if __name__ == "__main__":
    main()
