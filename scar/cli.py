"""The ``scar`` command line: ``scar explain`` (credit for one response of a saved reward model) and
``scar demo`` (the same for the locally built sentiment reward model).

The benchmark harness is not part of the installed package: ``python bench/run.py --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from scar.credit.rewarder import SCAR
from scar.demo.sentiment import build as build_sentiment_world
from scar.game.players import KINDS
from scar.heatmap import render_html, render_terminal, to_json
from scar.scoring.config import BACKENDS
from scar.shapley import DEFAULT_METHOD, METHODS

__all__ = ["main"]


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_credit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--players", default="span", choices=KINDS, help="what a player is (default: span)")
    p.add_argument(
        "--method", default=DEFAULT_METHOD, choices=METHODS, help=f"Shapley estimator (default: {DEFAULT_METHOD})"
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="permutations (permutation/owen) or coalitions (kernel); default: the method's",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="coalition scoring backend (default: auto)")
    p.add_argument(
        "--alpha",
        type=_unit_interval,
        default=1.0,
        help="weight of the Shapley credit in the dense reward (default: 1.0)",
    )
    p.add_argument("--html", metavar="FILE", default=None, help="also write an HTML heatmap to FILE")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of the heatmap")
    p.add_argument("--no-color", action="store_true", help="print values in brackets instead of colours")


# The demo's response: mixed sentiment, several spans, so the credit has both signs.
DEMO_PROMPT = "Review of the movie:"
DEMO_RESPONSE = " The acting was truly wonderful, but the plot felt painfully slow. The ending was a complete delight!"


def _explain(
    model, tokenizer, prompt: str, response: str, args: argparse.Namespace, title: str, suffix_ids: list[int] | None
) -> int:
    credit = SCAR(
        model,
        tokenizer,
        players=args.players,
        method=args.method,
        budget=args.budget,
        alpha=args.alpha,
        backend=args.backend,
        seed=args.seed,
        progress=False,
        suffix_ids=suffix_ids,
    )
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
        extra = {
            "prompt": prompt,
            "response": response,
            "reward": r,
            "empty_value": base,
            "method": args.method,
            "players_kind": args.players,
            "seconds": seconds,
        }
        if stderr is not None:
            extra["stderr"] = [float(s) for s in stderr]
        print(to_json(pieces, values, **extra))
    else:
        print(f"prompt:   {prompt!r}")
        print(f"reward r = v(N) = {r:+.4f}    v(empty) = {base:+.4f}    sum of credit = {sum(values):+.4f}")
        print(render_terminal(pieces, values, color=not args.no_color))
        width = max((len(repr(t)) for t in pieces), default=4)
        # A zero standard error everywhere means the estimator scored every coalition (exact values).
        exact = stderr is not None and all(float(s) == 0.0 for s in stderr)
        if exact:
            stderr = None
        print(
            f"\n{'#':>3}  {'player':<{width}}  credit"
            + ("   stderr" if stderr is not None else "   (exact: every coalition scored)" if exact else "")
        )
        for i, (t, v) in enumerate(zip(pieces, values)):
            se = f"   {float(stderr[i]):.4f}" if stderr is not None else ""
            print(f"{i:>3}  {t!r:<{width}}  {v:+.4f}{se}")
        if stats is not None:
            print(
                f"\nscored {stats.distinct_coalitions} coalitions with backend {stats.backend}: "
                f"{stats.tokens_computed} tokens computed in {stats.passes} pass(es) "
                f"(one-by-one scoring would compute {stats.plain_tokens}); {seconds:.2f} s"
            )
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:  # checked writable before scoring
            f.write(
                render_html(
                    pieces, values, title=title, header=f"prompt: {prompt!r} | r = {r:+.4f}, v(empty) = {base:+.4f}"
                )
            )
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


class UsageError(Exception):
    """A bad command-line argument: printed as one line, exit status 2."""


def _check_output_path(path: str | None) -> None:
    """UsageError unless ``path`` (``--html``) can be written: checked before any model is loaded."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise UsageError(f"--html {path}: is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"--html {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--html {path}: not writable")


HEAD_PREFIXES = ("score.", "classifier.", "pre_classifier.")
"""The weights of a sequence-classification head (decoders: ``score``; encoders: ``classifier``)."""


def _load_reward_model(path: str) -> Any:
    """The checkpoint in ``path`` as a ``*ForSequenceClassification`` model whose head was trained.

    Raises:
        UsageError: no such folder, no model in it, or a checkpoint without a trained classification head
            (e.g. a causal LM, which would be scored through a randomly initialised head).
    """
    from transformers import AutoModelForSequenceClassification  # loaded only when needed

    if not os.path.isdir(path):
        raise UsageError(f"--model {path}: no such directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"--model {path}: not a transformers model folder (no config.json)")
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--model {path}: cannot load a sequence-classification model: {err}") from None
    missing = [k for k in info.get("missing_keys", ()) if k.startswith(HEAD_PREFIXES) or ".score." in k]
    if missing:
        raise UsageError(
            f"--model {path}: the checkpoint has no trained sequence-classification head (missing {missing[0]}); "
            "its scores would come from random weights. Give a reward model (a *ForSequenceClassification "
            "checkpoint)"
        )
    return model.eval()


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer  # loaded only when needed

    if not os.path.isdir(path):
        raise UsageError(f"--tokenizer {path}: no such directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer: {err}") from None


def _cmd_explain(args: argparse.Namespace) -> int:
    if not args.response.strip():
        raise UsageError("--response is empty: there is nothing to give credit to")
    if not args.prompt:
        raise UsageError("--prompt is empty")
    _check_output_path(args.html)
    model = _load_reward_model(args.model)
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    suffix = None
    if args.suffix == "eos":
        if tokenizer.eos_token_id is None:
            raise UsageError("--suffix eos, but the tokenizer has no EOS token (use --suffix none)")
        suffix = [tokenizer.eos_token_id]
    return _explain(model, tokenizer, args.prompt, args.response, args, title="SCAR credit", suffix_ids=suffix)


def _cmd_demo(args: argparse.Namespace) -> int:
    _check_output_path(args.html)
    world = build_sentiment_world(args.cache_dir, size=args.size, progress=True)
    m = world.metrics
    print(
        f"reward model: the local sentiment model in {world.path} (GPT-2 classifier trained on "
        f"{world.reward_scale:g} x VADER compound; held-out Pearson r = {m['reward_pearson']:.3f}, "
        f"sign accuracy = {m['reward_sign_accuracy']:.3f})\n"
    )
    tokenizer = world.tokenizer()
    # The reward model reads its score at EOS after the response (the sentiment world's template).
    return _explain(
        world.reward_model(),
        tokenizer,
        args.prompt or DEMO_PROMPT,
        args.response or DEMO_RESPONSE,
        args,
        title="SCAR demo: sentiment credit",
        suffix_ids=[tokenizer.eos_token_id],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scar", description="Dense RLHF rewards by Shapley credit assignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="credit for one response of a reward model, as a token heatmap")
    p.add_argument("--model", required=True, help="reward model directory (a *ForSequenceClassification)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--response", required=True)
    p.add_argument(
        "--suffix",
        default="eos",
        choices=["eos", "none"],
        help="what follows the response in the reward model's input (default: the EOS token)",
    )
    _add_credit_args(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("demo", help="explain one response of the built-in sentiment reward model")
    p.add_argument("--cache-dir", default=None, help="where the local sentiment models are cached")
    p.add_argument("--size", default="default", choices=["default", "tiny"])
    p.add_argument("--prompt", default=None)
    p.add_argument("--response", default=None)
    _add_credit_args(p)
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad arguments, 1 when scoring fails)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the heatmap
    hf_logging.set_verbosity_error()
    try:
        return args.func(args)
    except UsageError as err:
        print(f"scar {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:  # the library's checks: say it in one line, no traceback
        print(f"scar {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
