"""How far half-precision coalition scores and credit are from the reward model's own float32 ones.

On GRPO batches of the sentiment world (the pre-trained policy's completions, as
``experiments/sentiment_grpo.py cost`` samples them), measures:

* per coalition (``--coalitions`` random coalitions of span players per response): the score of a bfloat16
  copy of the reward model (``CreditConfig.score_dtype="bfloat16"``, packed trie and plain deletion) and of
  the float32 model under ``torch.autocast`` bfloat16 (packed trie), each against the float32 plain score;
* per response: ``SCAR.for_training``'s player values with bfloat16 coalitions against the same
  permutations scored in float32 (``score_dtype=None``, same seed), as a fraction of the norm of the exact
  Shapley values, next to the float32 estimate's own distance from them (its sampling noise).

Run from the repository root (one torch thread)::

    .venv/bin/python bench/score_dtype_error.py [--batches 6] [--coalitions 24] [--record PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from grpo.credit_cost import sample_batches  # noqa: E402
from grpo.train import TrainConfig  # noqa: E402
from scar.credit.rewarder import SCAR  # noqa: E402
from scar.demo.sentiment import build  # noqa: E402
from scar.game.players import segment  # noqa: E402
from scar.game.tokens import encode_pair  # noqa: E402
from scar.scoring.precision import cast_copy  # noqa: E402
from scar.scoring.scorer import CoalitionScorer  # noqa: E402

QUANTILES = (0.5, 0.99, 0.999)


def _quantiles(errors: np.ndarray) -> dict[str, float]:
    out = {f"q{q * 100:g}": float(np.quantile(errors, q)) for q in QUANTILES}
    out["max"] = float(errors.max())
    out["rms"] = float(np.sqrt((errors**2).mean()))
    return out


def coalition_errors(world, batches, per_response: int, seed: int = 0) -> dict[str, object]:
    """Absolute score errors against the float32 plain score over random coalitions of every response."""
    tokenizer, model = world.tokenizer(), world.reward_model()
    eos = [tokenizer.eos_token_id]
    copy = cast_copy(model, torch.bfloat16)
    generator = torch.Generator().manual_seed(seed)
    args = []
    for prompts, responses, _ in batches:
        group = []
        for prompt, response in zip(prompts, responses):
            enc = encode_pair(tokenizer, prompt, response, suffix_ids=eos)
            players = segment(enc.text, enc.offsets, "span")
            coalitions = torch.rand(per_response, len(players), generator=generator) < 0.5
            group.append((enc.prompt_ids, enc.response_ids, players, coalitions, enc.suffix_ids))
        args.append([list(col) for col in zip(*group)])

    def scores(scorer: CoalitionScorer, autocast: bool = False) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for batch in args:
                out.extend(scorer.score_many(*batch))
        return torch.cat(out).numpy(), (time.perf_counter() - t0) / len(args)

    reference, _ = scores(CoalitionScorer(model, backend="loop", verify=0))
    variants = {
        "float32 trie": (CoalitionScorer(model, backend="trie", verify=0), False),
        "bfloat16 copy, trie": (CoalitionScorer(copy, backend="trie", verify=0), False),
        "bfloat16 copy, plain": (CoalitionScorer(copy, backend="loop", verify=0), False),
        "float32 model under autocast(bfloat16), trie": (CoalitionScorer(model, backend="trie", verify=0), True),
    }
    record: dict[str, object] = {"coalitions": int(reference.size), "score_std": float(reference.std())}
    for name, (scorer, autocast) in variants.items():
        scores(scorer, autocast)  # warm-up
        got, seconds = scores(scorer, autocast)
        record[name] = {**_quantiles(np.abs(got - reference)), "seconds_per_batch": seconds}
    return record


def value_errors(world, batches, min_players: int = 3) -> dict[str, object]:
    """Per response: bfloat16-coalition values against float32 ones (same permutations) and float32 against
    exact Shapley values, both over the norm of the exact values."""
    tokenizer, model = world.tokenizer(), world.reward_model()
    eos = [tokenizer.eos_token_id]
    common = dict(seed=0, suffix_ids=eos, progress=False)
    exact = SCAR(model, tokenizer, players="span", method="exact", suffix_ids=eos, progress=False)
    half = SCAR.for_training(model, tokenizer, score_dtype="bfloat16", **common)
    full = SCAR.for_training(model, tokenizer, score_dtype=None, **common)
    rounding, sampling = [], []
    for batch in batches:
        want, got_half, got_full = exact(*batch).values, half(*batch).values, full(*batch).values
        for w, h, f in zip(want, got_half, got_full):
            if len(w) < min_players or float(w.norm()) == 0.0:
                continue
            rounding.append(float((h - f).norm() / w.norm()))
            sampling.append(float((f - w).norm() / w.norm()))
    rounding_a, sampling_a = np.array(rounding), np.array(sampling)
    return {
        "responses": len(rounding),
        "bfloat16 vs float32 values / |exact|": _quantiles(rounding_a),
        "float32 two-permutation values vs exact / |exact|": _quantiles(sampling_a),
        "responses where rounding exceeds half the sampling error": int((rounding_a > 0.5 * sampling_a).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--coalitions", type=int, default=24, help="random coalitions per response")
    parser.add_argument("--record", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = build()
    batches = sample_batches(world, TrainConfig(threads=1), args.batches)
    record = {
        "command": " ".join(["bench/score_dtype_error.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "per_coalition": coalition_errors(world, batches, args.coalitions),
        "per_response": value_errors(world, batches),
    }
    print(json.dumps(record, indent=2))
    if args.record:
        with open(args.record, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
