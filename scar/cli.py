"""The ``scar`` command line: ``scar explain``, ``scar demo``, ``scar bench``."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_credit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--players", default="span", choices=["token", "span", "sentence"],
                   help="what a player is (default: span)")
    p.add_argument("--method", default="kernel", choices=["exact", "permutation", "kernel", "owen"],
                   help="Shapley estimator (default: kernel)")
    p.add_argument("--budget", type=int, default=None,
                   help="permutations (permutation/owen) or coalitions (kernel); default: the method's")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "loop", "batched", "trie"],
                   help="coalition scoring backend (default: auto)")
    p.add_argument("--alpha", type=_unit_interval, default=1.0,
                   help="weight of the Shapley credit in the dense reward (default: 1.0)")
    p.add_argument("--html", metavar="FILE", default=None, help="also write an HTML heatmap to FILE")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of the heatmap")
    p.add_argument("--no-color", action="store_true", help="print values in brackets instead of colours")


# The demo's response: mixed sentiment, several spans, so the credit has both signs.
DEMO_PROMPT = "Review of the movie:"
DEMO_RESPONSE = (" The acting was truly wonderful, but the plot felt painfully slow."
                 " The ending was a complete delight!")


def _explain(model, tokenizer, prompt: str, response: str, args: argparse.Namespace, title: str,
             suffix_ids: list[int] | None) -> int:
    from scar.heatmap import render_html, render_terminal, to_json
    from scar.rewarder import SCAR

    credit = SCAR(model, tokenizer, players=args.players, method=args.method, budget=args.budget,
                  alpha=args.alpha, backend=args.backend, seed=args.seed, progress=False,
                  suffix_ids=suffix_ids)
    t0 = time.perf_counter()
    dense = credit([prompt], [response])
    seconds = time.perf_counter() - t0
    players = dense.players[0]
    values = [float(v) for v in dense.values[0]]
    pieces = [p.text for p in players]
    r, base = float(dense.rewards[0]), float(dense.base_values[0])
    stderr = dense.stderr[0]
    stats = credit.last_stats[0] if credit.last_stats else None
    if args.json:
        extra = {"prompt": prompt, "response": response, "reward": r, "empty_value": base,
                 "method": args.method, "players_kind": args.players, "seconds": seconds}
        if stderr is not None:
            extra["stderr"] = [float(s) for s in stderr]
        print(to_json(pieces, values, **extra))
    else:
        print(f"prompt:   {prompt!r}")
        print(f"reward r = v(N) = {r:+.4f}    v(empty) = {base:+.4f}    "
              f"sum of credit = {sum(values):+.4f}")
        print(render_terminal(pieces, values, color=not args.no_color))
        width = max((len(repr(t)) for t in pieces), default=4)
        # A zero standard error everywhere means the estimator scored every coalition (exact values).
        exact = stderr is not None and all(float(s) == 0.0 for s in stderr)
        if exact:
            stderr = None
        print(f"\n{'#':>3}  {'player':<{width}}  credit" + ("   stderr" if stderr is not None else
                                                          "   (exact: every coalition scored)" if exact else ""))
        for i, (t, v) in enumerate(zip(pieces, values)):
            se = f"   {float(stderr[i]):.4f}" if stderr is not None else ""
            print(f"{i:>3}  {t!r:<{width}}  {v:+.4f}{se}")
        if stats is not None:
            print(f"\nscored {stats.distinct_coalitions} coalitions with backend {stats.backend}: "
                  f"{stats.tokens_computed} tokens computed in {stats.passes} pass(es) "
                  f"(one-by-one scoring would compute {stats.plain_tokens}); {seconds:.2f} s")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render_html(pieces, values, title=title,
                                header=f"prompt: {prompt!r} | r = {r:+.4f}, v(empty) = {base:+.4f}"))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    suffix = None
    if args.suffix == "eos":
        if tokenizer.eos_token_id is None:
            print("scar explain: --suffix eos, but the tokenizer has no EOS token", file=sys.stderr)
            return 2
        suffix = [tokenizer.eos_token_id]
    return _explain(model, tokenizer, args.prompt, args.response, args, title="SCAR credit",
                    suffix_ids=suffix)


def _cmd_demo(args: argparse.Namespace) -> int:
    from scar.data.sentiment import build

    world = build(args.cache_dir, size=args.size, progress=True)
    m = world.metrics
    print(f"reward model: the local sentiment model in {world.path} (GPT-2 classifier trained on "
          f"{world.reward_scale:g} x VADER compound; held-out Pearson r = {m['reward_pearson']:.3f}, "
          f"sign accuracy = {m['reward_sign_accuracy']:.3f})\n")
    tokenizer = world.tokenizer()
    # The reward model reads its score at EOS after the response (scar.data.sentiment's template).
    return _explain(world.reward_model(), tokenizer, args.prompt or DEMO_PROMPT, args.response or DEMO_RESPONSE,
                    args, title="SCAR demo: sentiment credit", suffix_ids=[tokenizer.eos_token_id])


def _cmd_bench(args: argparse.Namespace) -> int:
    grid_only = [name for name, given in (("--methods", args.methods is not None),
                                          ("--workloads", args.workloads is not None),
                                          ("--max-minutes", args.max_minutes is not None),
                                          ("--rounds", args.rounds is not None)) if given]
    if args.grid and args.markdown:
        args.parser.error("--grid and --markdown exclude each other (--markdown only reads --out)")
    if args.equal_error and (args.grid or args.markdown):
        args.parser.error("--equal-error does not combine with --grid/--markdown")
    if args.quick and (args.grid or args.markdown):
        args.parser.error("--quick prints the target table; it does not combine with --grid/--markdown")
    if grid_only and not args.grid:
        args.parser.error(f"{', '.join(grid_only)} only apply with --grid")
    if args.max_minutes is not None and args.max_minutes < 0:
        args.parser.error(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if args.rounds is not None and args.rounds < 1:
        args.parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.out is not None and not (args.grid or args.markdown):
        args.parser.error("--out only applies with --grid or --markdown")
    if args.markdown or args.grid:
        from scar.bench_grid import DEFAULT_OUT

        args.out = args.out or DEFAULT_OUT
    if args.markdown:
        from scar.bench_grid import format_grid_markdown, load_rows

        try:
            rows = load_rows(args.out)
        except ValueError as e:
            args.parser.error(str(e))
        if not rows:
            args.parser.error(f"no grid rows in {args.out!r} (run `scar bench --grid` first)")
        print(format_grid_markdown(rows), end="")
        return 0
    if args.grid:
        from scar.bench_grid import parse_methods, run_grid, select_workloads

        try:
            methods = parse_methods(args.methods)
            workloads = select_workloads(args.workloads)
        except ValueError as e:
            args.parser.error(str(e))
        # The command as given (options in a fixed order), stored in every row.
        command = "scar bench --grid" + "".join(
            f" {flag} {value}" for flag, value in (("--methods", args.methods), ("--workloads", args.workloads),
                                                   ("--out", args.out), ("--max-minutes", args.max_minutes),
                                                   ("--rounds", args.rounds)) if value is not None)
        run = run_grid(workloads, methods, out=args.out, max_minutes=args.max_minutes,
                       rounds=args.rounds or 3, command=command)
        print(f"{len(run.measured)} rows measured, {len(run.skipped)} already in {args.out}"
              + (f", {len(run.not_started)} not started (--max-minutes)" if run.not_started else "")
              + (f", {len(run.failed)} failed" if run.failed else ""))
        return 1 if run.failed else 0
    if args.equal_error:
        return _equal_error(args.quick)
    from scar.benchmarking import run_table

    print(run_table(quick=args.quick))
    return 0


def _equal_error(quick: bool) -> int:
    """The headline comparison of bench/bench_equal_error.py: the trained reward model, 5 responses (about
    10 minutes and, on first use, 4 more to train the model), or a tiny random-weight one with --quick."""
    import dataclasses

    from scar import benchmarking as B
    from scar.equal_error import equal_error, format_equal_error

    if quick:
        workload, kwargs = B.Workload("tiny", 16, 8, 4, 4), {"candidates": {"permutation": [2, 8], "kernel": [4, 14]},
                                                             "seeds": range(2), "rounds": 1, "authors_evals": 40}
    else:
        workload, kwargs = B.TRAINED_TARGET_WORKLOAD, {}
    instances = [B.make_instance(dataclasses.replace(workload, seed=s)) for s in range(2 if quick else 5)]
    print(format_equal_error(equal_error(instances, progress=True, **kwargs)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scar", description="Dense RLHF rewards by Shapley credit assignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="credit for one response of a reward model, as a token heatmap")
    p.add_argument("--model", required=True, help="reward model directory (a *ForSequenceClassification)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--response", required=True)
    p.add_argument("--suffix", default="eos", choices=["eos", "none"],
                   help="what follows the response in the reward model's input (default: the EOS token)")
    _add_credit_args(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("demo", help="explain one response of the built-in sentiment reward model")
    p.add_argument("--cache-dir", default=None, help="where the local sentiment models are cached")
    p.add_argument("--size", default="default", choices=["default", "tiny"])
    p.add_argument("--prompt", default=None)
    p.add_argument("--response", default=None)
    _add_credit_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="print the benchmark table (same workloads as bench/), or run the grid")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--equal-error", action="store_true",
                   help="time per response at equal or lower error than the authors' path, on the trained "
                        "reward model (the headline of bench/RESULTS.md)")
    p.add_argument("--grid", action="store_true",
                   help="measure the grid's (workload, method) rows missing from --out, appending JSON lines")
    p.add_argument("--methods", default=None, metavar="M1,M2",
                   help="with --grid: methods to run, comma-separated (default: all engine methods)")
    p.add_argument("--workloads", default=None, metavar="SUBSTRING",
                   help="with --grid: only workloads whose name contains one of these comma-separated substrings")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="grid JSON-lines file (default: bench/results/grid.jsonl)")
    p.add_argument("--markdown", action="store_true",
                   help="print the markdown table of the rows in --out, without running anything")
    p.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="with --grid: start no new row after this many minutes")
    p.add_argument("--rounds", type=int, default=None,
                   help="with --grid: timed runs of the fast (trie) methods (default: 3)")
    p.set_defaults(func=_cmd_bench, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the heatmap
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
