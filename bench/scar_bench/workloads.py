"""Benchmark workloads: what is scored, by which reward model, and the plain way to score it.

A :class:`Workload` names a reward-model size, prompt and response lengths, the number of span players
(equal contiguous chunks of the response) and of permutations, a seed, and the weights: a random-weight
GPT-2 reward model built from a config (no downloads) with random token ids, or the reward model trained
on the lexicon world (:mod:`scar_bench.lexicon`) with a prompt and response drawn from its samplers.
:func:`make_instance` makes one concrete (:class:`Instance`); every sequence ends with the ``[EOS]``
suffix. :data:`GRID` lists the engine-table workloads in the order they are measured.

:func:`score_sequences` scores whole sequences in right-padded batches, as a peer's forward would
(through :func:`scar.scoring.padded.score_padded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from scar.scoring.model import inspect_model
from scar.scoring.padded import score_padded
from scar_bench import lexicon
from scar_bench.vocab import ABSENT_ID, EOS_ID, N_SPECIAL, PAD_ID, VOCAB_SIZE, build_tokenizer

__all__ = [
    "MODEL_SIZES",
    "WEIGHTS",
    "PEER_BATCH_TOKENS",
    "Workload",
    "Instance",
    "TARGET_WORKLOAD",
    "TRAINED_TARGET_WORKLOAD",
    "QUICK_WORKLOAD",
    "GRID",
    "build_reward_model",
    "span_players",
    "binary_hierarchy",
    "make_instance",
    "score_sequences",
    "full_and_empty_values",
    # the vocabulary's names, for callers that only import this module
    "PAD_ID",
    "ABSENT_ID",
    "EOS_ID",
    "N_SPECIAL",
    "VOCAB_SIZE",
    "build_tokenizer",
]

MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "large": {"n_layer": 8, "n_embd": 512, "n_head": 8},
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
}
"""GPT-2 reward model shapes: 4 layers x width 256, 8 layers x width 512, and a tiny one for
correctness-only runs."""

WEIGHTS = ("random", "trained")
"""Reward-model weights of a workload: random from a config, or trained on the lexicon world."""

PEER_BATCH_TOKENS = 8192
"""Token budget of one padded batch in the peers' batched forwards (the same as the scorer's default)."""


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes:
        model: ``"small"``, ``"large"`` or ``"tiny"`` (:data:`MODEL_SIZES`).
        prompt_tokens, response_tokens: lengths in tokens.
        n_players: number of span players (equal contiguous chunks of the response).
        n_perms: antithetic permutations of the sampled estimators (``n_perms * (n_players + 1)``
            coalitions, duplicates included); peers get the same number of model evaluations.
        seed: seed of the model weights' and the token ids' generators.
        weights: ``"random"`` (a random-weight model of size ``model``, random token ids) or ``"trained"``
            (the reward model of :func:`scar_bench.lexicon.build`, whose credit sits on a few sentiment
            words; prompt and response drawn by its samplers; ``model`` must be ``"small"``, its shape).
    """

    model: str = "small"
    prompt_tokens: int = 256
    response_tokens: int = 64
    n_players: int = 16
    n_perms: int = 32
    seed: int = 0
    weights: str = "random"

    def __post_init__(self) -> None:
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model must be one of {sorted(MODEL_SIZES)}, got {self.model!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        for name in ("prompt_tokens", "response_tokens", "n_players", "n_perms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_players > self.response_tokens:
            raise ValueError(f"n_players ({self.n_players}) exceeds response_tokens ({self.response_tokens})")
        if self.n_perms % 2:
            raise ValueError(f"n_perms must be even (antithetic pairs), got {self.n_perms}")
        if self.weights == "trained":
            if self.model != "small":
                raise ValueError(f"weights='trained' needs model 'small' (the trained model's shape), "
                                 f"got {self.model!r}")
            if self.prompt_tokens + self.response_tokens + 1 > lexicon.N_POSITIONS:
                raise ValueError(f"prompt + response + suffix ({self.prompt_tokens + self.response_tokens + 1} "
                                 f"tokens) exceeds the trained model's {lexicon.N_POSITIONS} positions")

    @property
    def name(self) -> str:
        """Row id used by ``pytest bench/ -k``: e.g. ``small_p256_r64_n16_k32``, with ``_trained`` appended
        for trained weights."""
        return (f"{self.model}_p{self.prompt_tokens}_r{self.response_tokens}_n{self.n_players}"
                f"_k{self.n_perms}" + ("_trained" if self.weights == "trained" else ""))

    @property
    def budget_coalitions(self) -> int:
        """Coalitions of ``n_perms`` permutations (``n_perms * (n + 1)``), the peers' evaluation budget."""
        return self.n_perms * (self.n_players + 1)


TARGET_WORKLOAD = Workload("small", 256, 64, 16, 32)
"""The target workload: prompt 256 / response 64 / 16 span players / 32 permutations, small model."""

TRAINED_TARGET_WORKLOAD = Workload("small", 256, 64, 16, 32, weights="trained")
"""The target workload on the trained lexicon reward model (:mod:`scar_bench.lexicon`)."""

QUICK_WORKLOAD = Workload("tiny", 16, 8, 4, 4)
"""Tiny workload (tiny model) for ``bench/run.py table --quick`` and correctness-only runs of ``bench/``."""

_FIRST_GRID_ROWS: tuple[Workload, ...] = (
    TARGET_WORKLOAD,
    Workload("small", 256, 64, 16, 8),
    Workload("small", 64, 32, 8, 32),
    Workload("small", 1024, 128, 16, 32),
    Workload("small", 256, 128, 32, 32),
    Workload("large", 256, 64, 16, 32),
    Workload("small", 64, 32, 8, 8),
    Workload("large", 1024, 128, 32, 32),
)

GRID: tuple[Workload, ...] = _FIRST_GRID_ROWS + tuple(sorted(
    (w for w in (Workload(m, p, r, n, k) for m in ("small", "large") for p in (64, 256, 1024) for r in (32, 128)
                 for n in (8, 16, 32) for k in (8, 32))
     if w not in _FIRST_GRID_ROWS),
    # Small model first, then cheap before expensive: sequence length, then coalitions.
    key=lambda w: (w.model != "small", w.prompt_tokens + w.response_tokens, w.budget_coalitions)))
"""Engine-table workloads in priority order: the rows measured first (the target workload, then seven
others, three of them with response 64), then the rest of the full grid of 72 (small/large model x
prompt 64/256/1024 x response 32/128 x 8/16/32 span players x 8/32 permutations), small model first and
cheap before expensive: 75 workloads in all."""


@dataclass
class Instance:
    """A workload made concrete: model, tokenizer, token ids, texts and players."""

    workload: Workload
    model: torch.nn.Module
    tokenizer: object
    prompt_ids: list[int]
    response_ids: list[int]
    suffix_ids: list[int]
    players: list[tuple[int, int]]

    @property
    def response_text(self) -> str:
        """The response as text (one word per token)."""
        return self.tokenizer.decode(self.response_ids)

    def sequence(self, kept_tokens: np.ndarray | torch.Tensor) -> list[int]:
        """``prompt ⊕ kept response tokens ⊕ suffix`` for a bool mask over the response tokens."""
        keep = np.asarray(kept_tokens, dtype=bool)
        return self.prompt_ids + [t for t, k in zip(self.response_ids, keep) if k] + self.suffix_ids

    def token_mask(self, coalition: np.ndarray | torch.Tensor) -> np.ndarray:
        """Bool mask over response tokens kept by a coalition of span players."""
        bits = np.asarray(coalition, dtype=bool)
        keep = np.zeros(len(self.response_ids), dtype=bool)
        for j, (s, e) in enumerate(self.players):
            keep[s:e] = bits[j]
        return keep


def build_reward_model(size: str = "small", *, seed: int = 0, vocab_size: int = VOCAB_SIZE,
                       n_positions: int = 2048, **overrides: int) -> torch.nn.Module:
    """A random-weight ``GPT2ForSequenceClassification`` reward model (one label) in eval mode.

    Args:
        size: ``"small"`` (4 layers, width 256), ``"large"`` (8 layers, width 512) or ``"tiny"``.
        seed: ``torch.manual_seed`` for the weights.
        vocab_size, n_positions: config fields.
        overrides: other ``GPT2Config`` fields (e.g. ``n_layer=2, n_embd=32, n_head=2`` for tests).
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {sorted(MODEL_SIZES)}, got {size!r}")
    shape = {**MODEL_SIZES[size], **overrides}
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, num_labels=1, pad_token_id=PAD_ID,
                        eos_token_id=EOS_ID, bos_token_id=EOS_ID, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, **shape)
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(config).eval()


def span_players(n_tokens: int, n_players: int) -> list[tuple[int, int]]:
    """``n_players`` contiguous ``(start, end)`` spans covering ``n_tokens`` tokens, sizes differing by <= 1."""
    if n_players < 1 or n_players > n_tokens:
        raise ValueError(f"need 1 <= n_players <= n_tokens, got n_players={n_players}, n_tokens={n_tokens}")
    bounds = [round(j * n_tokens / n_players) for j in range(n_players + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def binary_hierarchy(players: Sequence[int]) -> list:
    """A balanced binary tree over contiguous player indices, e.g. ``[[0, 1], [2, 3]]`` for four players:
    the shape of shap's Partition clustering of a text, at span level (for ``method="owen"``)."""
    players = list(players)
    if len(players) <= 2:
        return players
    half = (len(players) + 1) // 2
    return [binary_hierarchy(players[:half]), binary_hierarchy(players[half:])]


_MODELS: dict[tuple, torch.nn.Module] = {}
_TOKENIZERS: dict[int, object] = {}
_WORLDS: dict[str, lexicon.LexiconWorld] = {}


def make_instance(workload: Workload, *, model: torch.nn.Module | None = None, tokenizer: object = None,
                  world: lexicon.LexiconWorld | None = None) -> Instance:
    """The workload's model (cached per size and seed), tokenizer and token ids.

    Random weights: random token ids. Trained weights: the model of ``world`` (default
    :func:`scar_bench.lexicon.build`, loaded once per process), a prompt from its ``sample_prompt`` and a
    response from its ``sample_response``, both drawn from ``numpy.random.default_rng(seed + 1)``.
    ``model``/``tokenizer`` override the defaults (tests pass a tiny model); the model's vocabulary must
    cover the tokenizer's. ``world`` (a :class:`scar_bench.lexicon.LexiconWorld`, e.g. a tiny one in
    tests) applies to trained workloads only.
    """
    if tokenizer is None:
        tokenizer = _TOKENIZERS.setdefault(VOCAB_SIZE, build_tokenizer(VOCAB_SIZE))
    vocab = len(tokenizer)
    if workload.weights == "trained":
        return _trained_instance(workload, model, tokenizer, world)
    if world is not None:
        raise ValueError(f"world applies to trained workloads only; {workload.name} has random weights")
    if model is None:
        key = (workload.model, workload.seed, vocab)
        if key not in _MODELS:
            _MODELS[key] = build_reward_model(workload.model, seed=workload.seed, vocab_size=vocab)
        model = _MODELS[key]
    _check_positions(workload, model)
    g = torch.Generator().manual_seed(workload.seed + 1)
    ids = torch.randint(N_SPECIAL, vocab, (workload.prompt_tokens + workload.response_tokens,), generator=g)
    return Instance(workload, model, tokenizer, ids[: workload.prompt_tokens].tolist(),
                    ids[workload.prompt_tokens:].tolist(), [EOS_ID],
                    span_players(workload.response_tokens, workload.n_players))


def _check_positions(workload: Workload, model: torch.nn.Module) -> None:
    limit = model.config.n_positions
    if workload.prompt_tokens + workload.response_tokens + 1 > limit:
        raise ValueError(f"prompt + response + suffix ({workload.prompt_tokens + workload.response_tokens + 1} "
                         f"tokens) exceeds the model's {limit} positions")


def _trained_instance(workload: Workload, model: torch.nn.Module | None, tokenizer: object,
                      world: lexicon.LexiconWorld | None) -> Instance:
    if world is None:
        if "default" not in _WORLDS:
            _WORLDS["default"] = lexicon.build()
        world = _WORLDS["default"]
    model = model if model is not None else world.model
    _check_positions(workload, model)
    g = np.random.default_rng(workload.seed + 1)
    prompt = world.sample_prompt(workload.prompt_tokens, g)
    response = world.sample_response(workload.response_tokens, g)
    return Instance(workload, model, tokenizer, prompt, response, [EOS_ID],
                    span_players(workload.response_tokens, workload.n_players))


def score_sequences(model: torch.nn.Module, seqs: Sequence[Sequence[int]], *,
                    max_tokens: int = PEER_BATCH_TOKENS) -> tuple[np.ndarray, int, int]:
    """Score token sequences with the reward model in right-padded batches, as a peer's forward would.

    Sequences are length-sorted (longest first) and batched under ``max_tokens`` (batch x padded
    length); each row is read out at its last non-pad token (:func:`scar.scoring.padded.score_padded`).

    Returns:
        ``(scores float64 [len(seqs)], tokens computed (padding included), model calls)``.
    """
    with torch.inference_mode():
        out = score_padded(model, inspect_model(model), seqs, max_tokens=max_tokens)
    return out.scores.numpy(), out.tokens, out.passes


def full_and_empty_values(inst: Instance) -> tuple[float, float]:
    """``v(N)`` and ``v(∅)``: the reward of the whole response and of the prompt with the suffix only."""
    values, _, _ = score_sequences(inst.model, [inst.sequence(np.ones(len(inst.response_ids), dtype=bool)),
                                                inst.sequence(np.zeros(len(inst.response_ids), dtype=bool))])
    return float(values[0]), float(values[1])
