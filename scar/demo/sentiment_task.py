"""The sentiment task behind ``scar demo``: its sizes, its text, VADER labels and the reward model's template.

Text comes from the template grammar of :mod:`scar.demo.templates`; labels are VADER's compound score
(the reward model regresses ``REWARD_SCALE`` times it). The reward model scores a (prompt, response) pair as
``BOS ⊕ prompt ⊕ response ⊕ EOS`` (:func:`reward_input_ids`, the convention of :mod:`scar.game.tokens` with
the one-token suffix ``[EOS]``), read out at EOS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from scar.demo import templates
from scar.game.tokens import encode_pair
from scar.scoring.model import evaluation_mode, inspect_model
from scar.scoring.padded import score_padded

REWARD_SCALE = 5.0  # reward = REWARD_SCALE * VADER compound: a range where Shapley values read easily
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPLITS = ("train", "test")
VADER_NEUTRAL = 0.05  # VADER's own threshold: |compound| < 0.05 is "neutral"

# Tones of the policy's pre-training text: mostly neutral and mixed, so RL has room to improve.
POLICY_MOODS = {"neutral": 0.4, "mixed": 0.3, "positive": 0.15, "negative": 0.15}
POLICY_TOKENS = (24, 48)  # response length in tokens the policy learns to write


@dataclass(frozen=True)
class SizeConfig:
    """Every number that defines one size of the world (part of the cache key)."""

    seed: int
    vocab_size: int
    n_positions: int
    n_reward_train: int
    n_reward_test: int
    n_policy_train: int
    n_policy_test: int
    reward_layers: int
    reward_width: int
    reward_heads: int
    reward_epochs: int
    reward_lr: float
    policy_layers: int
    policy_width: int
    policy_heads: int
    policy_epochs: int
    policy_lr: float
    batch_size: int
    n_policy_samples: int  # completions sampled at the end to report the policy's behaviour
    # Prefix positions per example supervised with the VADER score of the response up to there:
    # many targets per forward (held-out r 0.85 instead of 0.80 at equal steps on "default").
    reward_prefixes: int = 6
    reward_prefix_weight: float = 0.5  # weight of that prefix loss next to the read-out loss
    deletion_fraction: float = 0.2  # reward examples with random words deleted (coalition-like)
    empty_fraction: float = 0.02  # reward examples with an empty response (the empty coalition)
    test_prompt_fraction: float = 0.2


SIZES: dict[str, SizeConfig] = {
    "default": SizeConfig(
        seed=0,
        vocab_size=1536,
        n_positions=128,
        n_reward_train=8000,
        n_reward_test=1000,
        n_policy_train=8000,
        n_policy_test=500,
        reward_layers=4,
        reward_width=128,
        reward_heads=4,
        reward_epochs=3,
        reward_lr=1e-3,
        policy_layers=3,
        policy_width=128,
        policy_heads=4,
        policy_epochs=2,
        policy_lr=1e-3,
        batch_size=32,
        n_policy_samples=128,
    ),
    "tiny": SizeConfig(
        seed=0,
        vocab_size=512,
        n_positions=128,
        n_reward_train=3000,
        n_reward_test=256,
        n_policy_train=256,
        n_policy_test=64,
        reward_layers=1,
        reward_width=32,
        reward_heads=2,
        reward_epochs=2,
        reward_lr=1e-3,
        policy_layers=1,
        policy_width=32,
        policy_heads=2,
        policy_epochs=1,
        policy_lr=3e-3,
        batch_size=32,
        n_policy_samples=16,
    ),
}


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_score(texts: Sequence[str]) -> list[float]:
    """VADER's compound score in [-1, 1] of each text (the label the reward model learned, unscaled)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in texts]


def reward_input_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
    """Token ids the reward model scores: BOS, prompt, response, EOS (see the module docstring)."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be sequences of str, not a single str")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    suffix = [tokenizer.eos_token_id]
    return [encode_pair(tokenizer, p, r, suffix_ids=suffix, allow_empty=True).ids for p, r in zip(prompts, responses)]


def score_ids(model, rows: Sequence[Sequence[int]], batch_size: int = 64) -> list[float]:
    """Reward-model scores of id lists (each already BOS ... EOS), in right-padded batches."""
    info = inspect_model(model)
    for i, row in enumerate(rows):
        if info.max_positions is not None and len(row) > info.max_positions:
            raise ValueError(f"input {i} has {len(row)} tokens; the reward model takes at most {info.max_positions}")
    with evaluation_mode(model):
        return score_padded(model, info, rows, batch_size=batch_size).scores.tolist()


def make_text(config: SizeConfig) -> dict[str, Any]:
    """Prompts split by prompt, and VADER-labelled reward examples for each split."""
    train_prompts, test_prompts = templates.shuffled_prompts(config.seed, config.test_prompt_fraction)
    rng = random.Random(config.seed + 1)
    reward = {
        "train": _reward_examples(rng, train_prompts, config.n_reward_train, config),
        "test": _reward_examples(rng, test_prompts, config.n_reward_test, config),
    }
    prompts = {"train": [asdict(p) for p in train_prompts], "test": [asdict(p) for p in test_prompts]}
    return {"prompts": prompts, "reward": reward}


def _reward_examples(
    rng: random.Random, prompts: list[templates.Prompt], n: int, config: SizeConfig
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        text = templates.response(rng, prompt, rng.choice(templates.MOODS), rng.randint(1, 3))
        u = rng.random()
        if u < config.empty_fraction:
            text = ""
        elif u < config.empty_fraction + config.deletion_fraction:
            text = templates.delete_words(rng, text, rng.uniform(0.2, 0.7))
        rows.append({"prompt": prompt.text, "response": text})
    for row, label in zip(rows, vader_score([r["response"] for r in rows])):
        row["vader"] = label
    return rows


def make_policy_text(
    config: SizeConfig, prompts: dict[str, list[dict[str, str]]], tokenizer
) -> dict[str, list[dict[str, str]]]:
    """Mostly neutral/mixed continuations whose length is within ``POLICY_TOKENS``."""
    rng = random.Random(config.seed + 2)
    moods, weights = zip(*POLICY_MOODS.items())
    lo, hi = POLICY_TOKENS
    out: dict[str, list[dict[str, str]]] = {}
    for split, n in (("train", config.n_policy_train), ("test", config.n_policy_test)):
        split_prompts = [templates.Prompt(**p) for p in prompts[split]]
        rows: list[dict[str, str]] = []
        attempts = 0
        while len(rows) < n:
            attempts += 1
            if attempts > 50 * n:  # the grammar fits the length window far more often than this
                raise RuntimeError(f"could not make {n} policy texts of {lo}-{hi} tokens")
            prompt = rng.choice(split_prompts)
            mood = rng.choices(moods, weights)[0]
            text = templates.response(rng, prompt, mood, rng.randint(2, 4))
            if lo <= len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= hi:
                rows.append({"prompt": prompt.text, "response": text})
        out[split] = rows
    return out


# ---------------------------------------------------------------- tokenizer


def reward_metrics(pred: np.ndarray, vader: np.ndarray) -> dict[str, float]:
    """Held-out quality of reward scores ``pred`` against VADER compounds ``vader``.

    ``reward_sign_accuracy``: fraction of non-neutral texts (|compound| >= 0.05) whose score has
    VADER's sign; ``reward_pearson``: Pearson r of scores and compounds; ``reward_mse``: mean squared
    error against ``REWARD_SCALE * compound`` (reward units).
    """
    pred, vader = np.asarray(pred, dtype=np.float64), np.asarray(vader, dtype=np.float64)
    if pred.shape != vader.shape or pred.ndim != 1 or pred.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length >= 2, got {pred.shape} and {vader.shape}")
    polar = np.abs(vader) >= VADER_NEUTRAL
    return {
        "reward_sign_accuracy": float(np.mean(np.sign(pred[polar]) == np.sign(vader[polar]))),
        "reward_pearson": float(np.corrcoef(pred, vader)[0, 1]),
        "reward_mse": float(np.mean((pred - REWARD_SCALE * vader) ** 2)),
    }
