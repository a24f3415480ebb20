"""GRPO on the local sentiment task with sparse, ABC and SCAR credit; prints the comparison table.

    .venv/bin/python experiments/sentiment_grpo.py            # the full run (3 methods x 3 seeds)
    .venv/bin/python experiments/sentiment_grpo.py --quick    # a few steps on the tiny world, to try it out

The first call builds the sentiment world (reward model and policy, trained locally) into ~/.cache/scar
(``$SCAR_CACHE``); later calls load it. Results go to ``--out`` (``results.json`` and
``training_reward.png``); ``--table-only`` reprints the table of an earlier run from there.
See experiments/grpo/sentiment.py for what is trained and measured, and bench/RESULTS_training.md for
a measured run.
"""

from __future__ import annotations

import argparse
import logging

from grpo import sentiment as experiment  # experiments/grpo: the script's folder is on sys.path

FULL = dict(size="default", seeds=(0, 1, 2), steps=150)
QUICK = dict(size="tiny", seeds=(0,), steps=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny world, one seed, three steps")
    parser.add_argument("--steps", type=int, help="GRPO steps per run (default: 150, or 3 with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2, or 0 with --quick)")
    parser.add_argument("--methods", nargs="+", choices=experiment.METHODS, default=list(experiment.METHODS))
    parser.add_argument("--out", default="runs/sentiment_grpo", help="output folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s; more threads than free cores stall badly)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the results in --out")
    args = parser.parse_args(argv)

    if args.table_only:
        print(experiment.format_table(experiment.load(args.out)))
        return
    preset = QUICK if args.quick else FULL
    config = experiment.TrainConfig(threads=args.threads)
    if args.quick:  # seconds, not minutes: short completions and few permutations
        config = experiment.TrainConfig(threads=args.threads, prompts_per_step=2, min_tokens=8, max_tokens=16,
                                        scar_budget=4, eval_samples_per_prompt=1)
    logging.basicConfig(level=logging.WARNING)
    results = experiment.run(
        methods=args.methods,
        seeds=tuple(args.seeds) if args.seeds else preset["seeds"],
        steps=args.steps if args.steps else preset["steps"],
        size=preset["size"],
        out_dir=args.out,
        progress=True,
        config=config,
    )
    print()
    print(experiment.format_table(results))
    print(f"\nresults: {args.out}/{experiment.RESULTS_FILE}, plot: {args.out}/{experiment.PLOT_FILE}")


if __name__ == "__main__":
    main()
