"""A word-level sentiment world for benchmarks: a lexicon, a non-additive score and a trained reward model.

The benchmark's random-weight reward models (:mod:`scar_bench.workloads`) give an almost "length only" game:
exact Shapley values are nearly uniform. This module gives the same word-level world (the vocabulary of
:mod:`scar_bench.vocab`: ids 0 ``[PAD]``, 1 ``[ABSENT]``, 2 ``[EOS]``, then 1,021 synthetic words, one
word = one token) a meaning, and a reward model trained on it, so that credit sits on a few
words and every peer of the benchmark runs on it unchanged.

1. **Lexicon** (deterministic from a seed): 80 positive words (valence +1 .. +3), 80 negative (-1 .. -3),
   8 negators, 8 intensifiers; every other word is neutral.
2. **Score** (:meth:`Lexicon.true_score`), VADER-like and deliberately *non-additive*: walk the response;
   a negator multiplies the next polar word within :data:`WINDOW` tokens by :data:`NEGATION` (-0.74), an
   intensifier multiplies it by :data:`INTENSIFY` (1.3); ``x`` = the sum of adjusted valences and the score
   is ``4 x / sqrt(x^2 + 15)``, saturating in (-4, 4). Deleting a negator flips a word's contribution, and
   saturation makes every word's marginal depend on the rest.
3. **Reward model**: ``GPT2ForSequenceClassification`` (one label) regressed on the score of the response
   for sequences ``prompt ⊕ response ⊕ [EOS]`` (prompt of neutral words only, so the reward depends on the
   response alone), read out at ``[EOS]`` as the benchmark does. Training also sees *coalition-like*
   responses (random contiguous spans deleted), where the Shapley estimators query the model, and every
   response position is supervised with the score of the response up to there (a causal model's output
   at position ``t`` only sees that text), which gives many targets per forward. Lengths follow a
   curriculum (short texts first), without which this model did not learn at all in the step budget.

:func:`build` caches the trained model under ``$SCAR_CACHE`` (or ``~/.cache/scar``) in ``lexicon-v1``
(``lexicon-v1-<size>`` for other sizes) and loads it on later calls.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2ForSequenceClassification

from scar.demo.cache import check_size, default_cache_root, install, versioned_folder
from scar.demo.training import optimizer_step, torch_threads, warmup_cosine_lr
from scar.scoring.model import inspect_model
from scar.scoring.padded import pad_right, score_padded
from scar_bench.vocab import EOS_ID, N_SPECIAL, PAD_ID, VOCAB_SIZE, build_tokenizer

FORMAT = "lexicon-v1"  # bump when the recipe or the on-disk layout changes: the folder name follows
N_POSITIONS = 512
"""Positions of every trained model: enough for prompt 256 + response 128 + EOS (385 tokens)."""

N_POSITIVE, N_NEGATIVE, N_NEGATORS, N_INTENSIFIERS = 80, 80, 8, 8
VALENCES = (1.0, 1.5, 2.0, 2.5, 3.0)  # magnitudes a polar word can carry
NEGATION = -0.74  # VADER's negation factor
INTENSIFY = 1.3
WINDOW = 3  # a modifier acts on the next polar word within this many tokens
SATURATION = 15.0  # score = 4 x / sqrt(x^2 + SATURATION), VADER's normalisation scaled to (-4, 4)
SCORE_SCALE = 4.0

# Token mix of sampled responses: about 20% polar, 4% negators, 4% intensifiers, the rest neutral.
RESPONSE_MIX = {"polar": 0.20, "negator": 0.04, "intensifier": 0.04}

RngLike = random.Random | np.random.Generator | int

TRAIN_THREADS = 1
"""Intra-op threads while training. One: on cores shared with other jobs, several threads wait on each
other's descheduled cores and a training step runs much slower than with one."""


# ---------------------------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class Lexicon:
    """Word classes and valences over the benchmark vocabulary (ids ``N_SPECIAL .. vocab_size - 1``).

    Attributes:
        seed: the seed that drew it.
        vocab_size: size of the id space (special ids included).
        valence: float64 ``[vocab_size]``; 0 for neutral words, modifiers and special ids.
        positive, negative, negators, intensifiers, neutral: sorted id tuples of each class.
    """

    seed: int
    vocab_size: int
    valence: np.ndarray = field(repr=False)
    positive: tuple[int, ...] = field(repr=False)
    negative: tuple[int, ...] = field(repr=False)
    negators: tuple[int, ...] = field(repr=False)
    intensifiers: tuple[int, ...] = field(repr=False)
    neutral: tuple[int, ...] = field(repr=False)

    @property
    def polar(self) -> tuple[int, ...]:
        """Positive and negative word ids."""
        return self.positive + self.negative

    def running_scores(self, ids: Sequence[int]) -> np.ndarray:
        """Score of ``ids[: t + 1]`` for every ``t`` (float64 ``[len(ids)]``): see :meth:`true_score`."""
        ids = self._check_ids(ids)
        negators, intensifiers = set(self.negators), set(self.intensifiers)
        x = 0.0
        pending: list[tuple[float, int]] = []  # (factor, last position it may act on)
        out = np.empty(len(ids), dtype=np.float64)
        for t, token in enumerate(ids):
            pending = [(f, last) for f, last in pending if last >= t]
            if token in negators:
                pending.append((NEGATION, t + WINDOW))
            elif token in intensifiers:
                pending.append((INTENSIFY, t + WINDOW))
            elif self.valence[token] != 0.0:
                value = float(self.valence[token])
                for factor, _ in pending:  # every modifier still in reach acts on this word, then is used up
                    value *= factor
                pending = []
                x += value
            out[t] = SCORE_SCALE * x / math.sqrt(x * x + SATURATION)
        return out

    def true_score(self, ids: Sequence[int]) -> float:
        """The response's sentiment in (-4, 4): ``4 x / sqrt(x^2 + 15)`` with ``x`` the sum of valences,
        each polar word multiplied by -0.74 per negator and by 1.3 per intensifier among the (unused)
        modifiers within the 3 tokens before it. Special ids count as neutral tokens; an empty response
        scores 0."""
        scores = self.running_scores(ids)
        return float(scores[-1]) if len(scores) else 0.0

    def sample_prompt(self, n_tokens: int, rng: RngLike) -> list[int]:
        """``n_tokens`` neutral word ids drawn uniformly (so the reward depends on the response only)."""
        n_tokens = _check_count("n_tokens", n_tokens)
        g = _as_generator(rng)
        return np.asarray(self.neutral)[g.integers(0, len(self.neutral), n_tokens)].tolist()

    def sample_response(self, n_tokens: int, rng: RngLike) -> list[int]:
        """``n_tokens`` word ids: each polar with probability 0.20, a negator 0.04, an intensifier 0.04,
        else neutral; uniform within its class."""
        n_tokens = _check_count("n_tokens", n_tokens)
        g = _as_generator(rng)
        classes = [np.asarray(self.polar), np.asarray(self.negators), np.asarray(self.intensifiers),
                   np.asarray(self.neutral)]
        p = [RESPONSE_MIX["polar"], RESPONSE_MIX["negator"], RESPONSE_MIX["intensifier"]]
        kind = g.choice(4, size=n_tokens, p=p + [1.0 - sum(p)])
        pick = g.random(n_tokens)
        return [int(classes[k][int(u * len(classes[k]))]) for k, u in zip(kind, pick)]

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        if isinstance(ids, torch.Tensor | np.ndarray):
            ids = ids.tolist()
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a sequence of int token ids, got {type(ids).__name__}")
        out = []
        for i, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int | np.integer):
                raise TypeError(f"ids[{i}] must be an int, got {type(token).__name__}")
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"ids[{i}] = {token} is outside the vocabulary [0, {self.vocab_size})")
            out.append(int(token))
        return out


def build_lexicon(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Lexicon:
    """The lexicon drawn by ``random.Random(seed)`` over ids ``3 .. vocab_size - 1``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    n_classed = N_POSITIVE + N_NEGATIVE + N_NEGATORS + N_INTENSIFIERS
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < N_SPECIAL + n_classed + 1:
        raise ValueError(f"vocab_size must be an int >= {N_SPECIAL + n_classed + 1}, got {vocab_size!r}")
    rng = random.Random(seed)
    words = list(range(N_SPECIAL, vocab_size))
    rng.shuffle(words)
    cuts = np.cumsum([N_POSITIVE, N_NEGATIVE, N_NEGATORS, N_INTENSIFIERS])
    positive, negative, negators, intensifiers, neutral = (
        sorted(part) for part in np.split(np.array(words), cuts))
    valence = np.zeros(vocab_size, dtype=np.float64)
    for token in positive:
        valence[token] = rng.choice(VALENCES)
    for token in negative:
        valence[token] = -rng.choice(VALENCES)
    as_ints = lambda part: tuple(int(t) for t in part)
    return Lexicon(seed, vocab_size, valence, as_ints(positive), as_ints(negative), as_ints(negators),
                   as_ints(intensifiers), as_ints(neutral))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The lexicon of every trained world (seed 0, the benchmark's 1,024 ids)."""
    return build_lexicon(0, VOCAB_SIZE)


def true_score(ids: Sequence[int]) -> float:
    """:meth:`Lexicon.true_score` under :func:`default_lexicon`."""
    return default_lexicon().true_score(ids)


def sample_prompt(n_tokens: int, rng: RngLike) -> list[int]:
    """:meth:`Lexicon.sample_prompt` under :func:`default_lexicon`."""
    return default_lexicon().sample_prompt(n_tokens, rng)


def sample_response(n_tokens: int, rng: RngLike) -> list[int]:
    """:meth:`Lexicon.sample_response` under :func:`default_lexicon`."""
    return default_lexicon().sample_response(n_tokens, rng)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _as_generator(rng: RngLike) -> np.random.Generator:
    """A numpy Generator from a Generator (itself), a ``random.Random`` (seeded from it) or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    if isinstance(rng, int) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, a random.Random or an int seed, got {type(rng).__name__}")


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class SizeConfig:
    """Every number that defines one trained world (part of the cache key)."""

    n_layer: int
    n_embd: int
    n_head: int
    max_prompt: int  # prompt length is uniform in [0, max_prompt]
    max_response: int  # response length is uniform in [1, max_response]
    n_train: int  # training sequences drawn per epoch (fresh ones each epoch)
    epochs: int
    n_test: int  # held-out sequences of each kind (whole responses, coalition-like)
    lr: float
    batch_tokens: int  # padded tokens per batch (batches are bucketed by length)
    seed: int = 0
    n_positions: int = N_POSITIONS
    coalition_fraction: float = 0.5  # training responses with random contiguous spans deleted
    empty_fraction: float = 0.02  # training responses deleted entirely (the empty coalition)
    position_weight: float = 0.5  # weight of the every-position loss next to the read-out loss
    warmup_fraction: float = 0.05
    # First epoch: a fraction ``curriculum_short`` of the examples has prompts <= short_prompt and responses
    # <= short_response tokens; over the next ``curriculum_ramp`` the caps grow to the full range.
    curriculum_short: float = 0.6
    curriculum_ramp: float = 0.2
    short_prompt: int = 16
    short_response: int = 32
    curriculum_chunks: int = 10  # batches are shuffled within consecutive chunks only
    weight_decay: float = 0.01


SIZES: dict[str, SizeConfig] = {
    "default": SizeConfig(n_layer=4, n_embd=256, n_head=4, max_prompt=256, max_response=128,
                          n_train=8500, epochs=1, n_test=256, lr=1e-3, batch_tokens=1024),
    "tiny": SizeConfig(n_layer=1, n_embd=64, n_head=2, max_prompt=24, max_response=24,
                       n_train=1500, epochs=4, n_test=128, lr=3e-3, batch_tokens=512),
}


def folder_name(size: str) -> str:
    """``lexicon-v1`` for "default", ``lexicon-v1-<size>`` otherwise."""
    return versioned_folder(FORMAT, size, SIZES)


@dataclass
class LexiconWorld:
    """A trained lexicon world.

    Attributes:
        model: the reward model (``GPT2ForSequenceClassification``, one label, eval mode).
        tokenizer: :func:`scar_bench.vocab.build_tokenizer` (word level, one word = one token).
        lexicon: the :class:`Lexicon` the model was trained on.
        metrics: held-out numbers: ``pearson``/``mse`` on whole responses, ``pearson_coalitions``/
            ``mse_coalitions`` on coalition-like ones, ``constant_mse`` (the variance of the targets: what
            predicting their mean scores), ``train_loss`` (last 10% of the steps), ``build_seconds``.
        config: the :class:`SizeConfig` fields.
        path: the cache folder.
        built: True when this call trained the model, False when it loaded it.
    """

    model: torch.nn.Module
    tokenizer: Any
    lexicon: Lexicon
    metrics: dict[str, float]
    config: dict[str, Any]
    path: Path
    built: bool

    def true_score(self, ids: Sequence[int]) -> float:
        """:meth:`Lexicon.true_score` (what the model approximates)."""
        return self.lexicon.true_score(ids)

    def sample_prompt(self, n_tokens: int, rng: RngLike) -> list[int]:
        """:meth:`Lexicon.sample_prompt`."""
        return self.lexicon.sample_prompt(n_tokens, rng)

    def sample_response(self, n_tokens: int, rng: RngLike) -> list[int]:
        """:meth:`Lexicon.sample_response`."""
        return self.lexicon.sample_response(n_tokens, rng)

    def score(self, prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> np.ndarray:
        """Model scores of ``prompt ⊕ response ⊕ [EOS]`` for each response (float64)."""
        return _predict(self.model, [list(prompt) + list(r) + [EOS_ID] for r in responses])


def build(size: str = "default", cache_dir: str | os.PathLike[str] | None = None, force: bool = False,
          progress: bool = True) -> LexiconWorld:
    """Train (or load from the cache) the lexicon world of ``size`` ("default" or "tiny").

    ``cache_dir`` is the cache *root* (default ``$SCAR_CACHE`` or ``~/.cache/scar``); the world lives in
    its subfolder :func:`folder_name`. A folder holding the same format and configuration is
    loaded unless ``force``. A build trains in a temporary sibling folder and renames it into place when
    complete, so an interrupted build never leaves a folder that looks valid. "default" is the benchmark's
    model (4 layers x 256 x 4 heads, 512 positions); "tiny" trains in seconds for tests.
    """
    check_size(size, SIZES)
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    if not isinstance(force, bool) or not isinstance(progress, bool):
        raise TypeError("force and progress must be bools")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / folder_name(size)
    config = SIZES[size]
    tokenizer = build_tokenizer(VOCAB_SIZE)
    lexicon = default_lexicon()
    if not force:
        loaded = _load(target, config)
        if loaded is not None:
            model, manifest = loaded
            return LexiconWorld(model, tokenizer, lexicon, manifest["metrics"], manifest["config"], target, False)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        with torch_threads(TRAIN_THREADS):
            model, metrics = _train(lexicon, config, progress)
        metrics["build_seconds"] = time.perf_counter() - start
        model.save_pretrained(tmp / "model")
        manifest = {"format": FORMAT, "size": size, "config": asdict(config), "metrics": metrics}
        (tmp / "world.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LexiconWorld(model, tokenizer, lexicon, metrics, manifest["config"], target, True)


def _load(target: Path, config: SizeConfig) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """The model and manifest in ``target`` if complete and built with ``config``; else ``None``."""
    try:
        manifest = json.loads((target / "world.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("config") != asdict(config):
        return None
    if not (target / "model" / "config.json").is_file():
        return None
    return GPT2ForSequenceClassification.from_pretrained(target / "model").eval(), manifest


def _new_model(config: SizeConfig) -> torch.nn.Module:
    torch.manual_seed(config.seed + 10)
    gpt2 = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=config.n_positions, n_layer=config.n_layer,
                      n_embd=config.n_embd, n_head=config.n_head, num_labels=1, problem_type="regression",
                      pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=EOS_ID, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2ForSequenceClassification(gpt2)


def _delete_spans(response: list[int], rng: np.random.Generator) -> list[int]:
    """The response with 1-4 random contiguous spans deleted: what span-player coalitions look like."""
    keep = np.ones(len(response), dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        start = int(rng.integers(0, len(response)))
        keep[start: start + int(rng.integers(1, max(2, len(response) // 3) + 1))] = False
    return [t for t, k in zip(response, keep) if k]


def _draw_examples(lexicon: Lexicon, config: SizeConfig, n: int, g: np.random.Generator,
                   coalition_fraction: float, curriculum: bool = False) -> list[tuple[list[int], np.ndarray]]:
    """``n`` (sequence, per-position target) pairs: ``prompt ⊕ response ⊕ [EOS]`` with the score of the
    response up to each response position and the response's score at ``[EOS]``; NaN on the prompt (not
    supervised: those positions are easy zeros that would dilute the loss of the response's)."""
    out = []
    for i in range(n):
        prompt_cap, response_cap = config.max_prompt, config.max_response
        if curriculum:
            # Short texts first, then lengths grow to the full range: long texts dilute the response's few
            # polar words in the attention averages of an untrained model, and training on the full range
            # from the start did not learn at all within the step budget (responses of <= 32 tokens did).
            grown = min(1.0, max(0.0, (i / n - config.curriculum_short) / config.curriculum_ramp))
            short_prompt = min(config.short_prompt, prompt_cap)
            short_response = min(config.short_response, response_cap)
            prompt_cap = round(short_prompt + (prompt_cap - short_prompt) * grown)
            response_cap = round(short_response + (response_cap - short_response) * grown)
        prompt = lexicon.sample_prompt(int(g.integers(0, prompt_cap + 1)), g)
        response = lexicon.sample_response(int(g.integers(1, response_cap + 1)), g)
        u = g.random()
        if u < config.empty_fraction:
            response = []
        elif u < coalition_fraction:
            response = _delete_spans(response, g)
        running = lexicon.running_scores(response)
        final = running[-1] if len(running) else 0.0
        targets = np.concatenate([np.full(len(prompt), np.nan), running, [final]])
        out.append((prompt + response + [EOS_ID], targets))
    return out


def _batches(examples: list[tuple[list[int], np.ndarray]], batch_tokens: int, g: np.random.Generator,
             chunks: int = 1) -> list[list[int]]:
    """Indices of examples grouped by length (little padding), at most ``batch_tokens`` padded tokens a
    batch, in random order within each of ``chunks`` consecutive chunks of the examples (which keeps the
    order of a curriculum)."""
    bounds = np.linspace(0, len(examples), chunks + 1).round().astype(int)
    return [batch for lo, hi in zip(bounds[:-1], bounds[1:])
            for batch in _bucket(examples, range(lo, hi), batch_tokens, g)]


def _bucket(examples: list[tuple[list[int], np.ndarray]], index: range, batch_tokens: int,
            g: np.random.Generator) -> list[list[int]]:
    order = sorted(index, key=lambda i: len(examples[i][0]))
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, len(examples[i][0]))
        if current and new_width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_width = [], len(examples[i][0])
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return [batches[k] for k in g.permutation(len(batches))]


def _train(lexicon: Lexicon, config: SizeConfig, progress: bool) -> tuple[torch.nn.Module, dict[str, float]]:
    """Fit a fresh model on ``config.epochs`` x ``config.n_train`` fresh sequences; held-out metrics."""
    model = _new_model(config)
    g = np.random.default_rng(config.seed + 11)
    epochs = [_draw_examples(lexicon, config, config.n_train, g, config.coalition_fraction, curriculum=e == 0)
              for e in range(config.epochs)]
    plans = [_batches(examples, config.batch_tokens, g, config.curriculum_chunks) for examples in epochs]
    total = sum(len(p) for p in plans)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    step, losses = 0, []
    with tqdm(total=total, desc=f"lexicon reward model ({config.n_layer}x{config.n_embd})", disable=not progress,
              leave=False) as bar:
        for examples, plan in zip(epochs, plans):
            for index in plan:
                loss = _loss(model, [examples[i] for i in index], config.position_weight)
                lr = warmup_cosine_lr(step, total, config.lr, warmup_fraction=config.warmup_fraction, floor=0.05)
                optimizer_step(model, optimizer, loss, lr)
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    metrics = {"train_loss": float(np.mean(losses[-max(1, total // 10):])), "train_steps": float(total),
               "train_sequences": float(config.n_train * config.epochs)}
    test = np.random.default_rng(config.seed + 99)
    for suffix, fraction in (("", 0.0), ("_coalitions", 1.0)):
        held = _draw_examples(lexicon, config, config.n_test, test, fraction)
        pred = _predict(model, [seq for seq, _ in held])
        truth = np.array([targets[-1] for _, targets in held])
        metrics[f"pearson{suffix}"] = float(np.corrcoef(pred, truth)[0, 1])
        metrics[f"mse{suffix}"] = float(np.mean((pred - truth) ** 2))
        metrics[f"constant_mse{suffix}"] = float(np.var(truth))
    return model, metrics


def _loss(model: torch.nn.Module, batch: list[tuple[list[int], np.ndarray]], position_weight: float
          ) -> torch.Tensor:
    """MSE at each row's read-out ([EOS]) plus ``position_weight`` x MSE at the response's positions.

    The score head is applied to every position (the weights ``GPT2ForSequenceClassification`` uses at
    the read-out), so one forward supervises the score of every prefix.
    """
    ids, mask = pad_right([seq for seq, _ in batch], PAD_ID)
    target = torch.full(ids.shape, float("nan"), dtype=torch.float32)
    for b, (_, values) in enumerate(batch):
        target[b, : len(values)] = torch.as_tensor(values, dtype=torch.float32)
    hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    scores = model.score(hidden)[..., 0]
    last = mask.sum(1) - 1
    rows = torch.arange(len(batch))
    readout = torch.nn.functional.mse_loss(scores[rows, last], target[rows, last])
    inner = ~torch.isnan(target)
    inner[rows, last] = False
    if position_weight > 0 and bool(inner.any()):
        return readout + position_weight * torch.nn.functional.mse_loss(scores[inner], target[inner])
    return readout


@torch.no_grad()
def _predict(model: torch.nn.Module, seqs: Sequence[Sequence[int]], batch_tokens: int = 8192) -> np.ndarray:
    """Read-out scores of full sequences (right-padded, longest first, at most ``batch_tokens`` a batch)."""
    return score_padded(model, inspect_model(model), seqs, max_tokens=batch_tokens).scores.numpy()


__all__ = [
    "FORMAT", "N_POSITIONS", "SIZES", "SizeConfig", "Lexicon", "LexiconWorld", "build", "build_lexicon",
    "default_lexicon", "folder_name", "sample_prompt", "sample_response", "true_score",
]
