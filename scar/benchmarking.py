"""Benchmark workloads, peer adapters and the table printed by ``scar bench`` (the ``bench/`` suite uses it too).

What is compared (issue 6): the same responses scored with the same reward model by

- the peers a user would pick instead of SCAR:

  * ``shap-partition``: shap's Partition explainer over a ``shap.maskers.Text`` masker with its default
    500 evaluations and ONE reward-model call per masked string. This is how the SCAR authors computed
    their rewards. The authors replace removed spans by a space, i.e. delete them; here the masker
    writes the ``[ABSENT]`` token and the model function drops it before scoring, which is the same
    deletion (a space is not a token that shap's masker can insert). Its attributions are token-level Owen values over shap's own token clustering; to compare
    them with span-level Shapley values they are summed over each span player's tokens.
  * ``shap-permutation``: shap's Permutation explainer on the span-player game (a 0/1 matrix of kept
    players, scored in padded batches).
  * ``captum-svs``: captum's ``ShapleyValueSampling`` with a ``feature_mask`` of span players, batched with
    ``perturbations_per_eval``; the forward deletes the tokens of absent players.
  * ``shapiq-kernel`` / ``shapiq-permutation``: shapiq's ``KernelSHAP`` and ``PermutationSamplingSV`` on the
    span-player game (scored in padded batches).

- this project: :class:`scar.scorer.CoalitionScorer` backends ``loop``, ``batched``, ``trie`` with
  ``attention="mask"`` (a dense ``N x N`` additive mask) and ``trie-kernel`` = ``trie`` with
  ``attention="kernel"`` (the registered ``scar_tree`` attention op, ``scar::tree_attention``, through
  :func:`scar.integrations.transformers.packed_forward`), all under :func:`scar.attribution.shapley_values`;
  the pack is built by the C++ builder in both trie engines.

Workloads are random-weight GPT-2 reward models built from configs (no downloads), a word-level fast
tokenizer built locally (one token per word, so text-based and id-based paths score identical
sequences), random prompt/response token ids of the stated lengths, and span players that cut the
response into equal contiguous chunks.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

__all__ = [
    "MODEL_SIZES",
    "ENGINE_METHODS",
    "PEER_METHODS",
    "SCAR_METHODS",
    "Workload",
    "Instance",
    "RunResult",
    "TARGET_WORKLOAD",
    "TRAINED_TARGET_WORKLOAD",
    "WEIGHTS",
    "QUICK_WORKLOAD",
    "engine_rows",
    "bench_row",
    "full_and_empty_values",
    "timed",
    "Timing",
    "build_tokenizer",
    "build_reward_model",
    "span_players",
    "make_instance",
    "score_sequences",
    "run_method",
    "exact_shapley",
    "trie_lower_bound",
    "plain_tokens",
    "plain_forward_seconds",
    "PeakMemory",
    "torch_threads",
    "reference_values",
    "GRID",
    "engine_row",
    "accuracy_study",
    "estimate_from_table",
    "summarize_accuracy",
    "format_engine_table",
    "format_accuracy_table",
    "plot_accuracy",
    "machine_description",
    "run_table",
    "binary_hierarchy",
]

PAD_ID, ABSENT_ID, EOS_ID = 0, 1, 2
"""Special ids of the benchmark tokenizer: padding, the marker captum puts on absent tokens (deleted by the
forward), and the end-of-sequence suffix every coalition sequence ends with."""
N_SPECIAL = 3
VOCAB_SIZE = 1024

MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "large": {"n_layer": 8, "n_embd": 512, "n_head": 8},
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
}
"""GPT-2 reward model shapes: the issue's 4 layers x width 256 and 8 layers x width 512, and a tiny one
for correctness-only runs."""

WEIGHTS = ("random", "trained")
"""Reward-model weights of a workload: random from a config, or trained on the lexicon world."""

PEER_METHODS = ("shap-partition", "shap-permutation", "captum-svs", "shapiq-kernel", "shapiq-permutation")
SCAR_METHODS = ("scar-loop", "scar-batched", "scar-trie", "scar-trie-kernel")
ENGINE_METHODS = PEER_METHODS + SCAR_METHODS
AUTHORS_METHOD = "shap-partition"
SHAP_PARTITION_EVALS = 500
"""shap Partition's default ``max_evals``: the SCAR authors' budget."""
PEER_BATCH_TOKENS = 8192
"""Token budget of one padded batch in the peers' batched forwards (the same as the scorer's default)."""


# ---------------------------------------------------------------------------------------------- workloads


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
            (the reward model of :func:`scar.data.lexicon.build`, whose credit sits on a few sentiment
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
            from scar.data.lexicon import N_POSITIONS

            if self.model != "small":
                raise ValueError(f"weights='trained' needs model 'small' (the trained model's shape), "
                                 f"got {self.model!r}")
            if self.prompt_tokens + self.response_tokens + 1 > N_POSITIONS:
                raise ValueError(f"prompt + response + suffix ({self.prompt_tokens + self.response_tokens + 1} "
                                 f"tokens) exceeds the trained model's {N_POSITIONS} positions")

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
"""The issue's target workload: prompt 256 / response 64 / 16 span players / 32 permutations, small model."""

TRAINED_TARGET_WORKLOAD = Workload("small", 256, 64, 16, 32, weights="trained")
"""The target workload on the trained lexicon reward model (:mod:`scar.data.lexicon`)."""


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


def _word(i: int) -> str:
    """Deterministic pronounceable word number ``i`` (two or three syllables)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syll = [c + v for c in consonants for v in vowels]
    a, rest = i % len(syll), i // len(syll)
    b, rest = rest % len(syll), rest // len(syll)
    return syll[a] + syll[b] + (syll[rest - 1] if rest else "")


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A word-level ``PreTrainedTokenizerFast`` built locally: ``[PAD]``, ``[ABSENT]``, ``[EOS]`` and
    ``vocab_size - 3`` synthetic words; whitespace pre-tokenisation, so one word is one token and
    ``decode`` joins tokens with spaces (text round trips exactly)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= N_SPECIAL:
        raise ValueError(f"vocab_size must be an int > {N_SPECIAL}, got {vocab_size!r}")
    vocab = {"[PAD]": PAD_ID, "[ABSENT]": ABSENT_ID, "[EOS]": EOS_ID}
    for i in range(vocab_size - N_SPECIAL):
        vocab[_word(i)] = N_SPECIAL + i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[ABSENT]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]",
                                   unk_token="[ABSENT]")


def build_reward_model(size: str = "small", *, seed: int = 0, vocab_size: int = VOCAB_SIZE,
                       n_positions: int = 2048, **overrides: int) -> torch.nn.Module:
    """A random-weight ``GPT2ForSequenceClassification`` reward model (one label) in eval mode.

    Args:
        size: ``"small"`` (4 layers, width 256), ``"large"`` (8 layers, width 512) or ``"tiny"``.
        seed: ``torch.manual_seed`` for the weights.
        vocab_size, n_positions: config fields.
        overrides: other ``GPT2Config`` fields (e.g. ``n_layer=2, n_embd=32, n_head=2`` for tests).
    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

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


_MODELS: dict[tuple, torch.nn.Module] = {}
_TOKENIZERS: dict[int, object] = {}
_WORLDS: dict[str, object] = {}


def make_instance(workload: Workload, *, model: torch.nn.Module | None = None, tokenizer: object = None,
                  world: object = None) -> Instance:
    """The workload's model (cached per size and seed), tokenizer and token ids.

    Random weights: random token ids. Trained weights: the model of ``world`` (default
    :func:`scar.data.lexicon.build`, loaded once per process), a prompt from its ``sample_prompt`` and a
    response from its ``sample_response``, both drawn from ``numpy.random.default_rng(seed + 1)``.
    ``model``/``tokenizer`` override the defaults (tests pass a tiny model); the model's vocabulary must
    cover the tokenizer's. ``world`` (a :class:`scar.data.lexicon.LexiconWorld`, e.g. a tiny one in tests)
    applies to trained workloads only.
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
    limit = model.config.n_positions
    if workload.prompt_tokens + workload.response_tokens + 1 > limit:
        raise ValueError(f"prompt + response + suffix ({workload.prompt_tokens + workload.response_tokens + 1} "
                         f"tokens) exceeds the model's {limit} positions")
    g = torch.Generator().manual_seed(workload.seed + 1)
    ids = torch.randint(N_SPECIAL, vocab, (workload.prompt_tokens + workload.response_tokens,), generator=g)
    return Instance(workload, model, tokenizer, ids[: workload.prompt_tokens].tolist(),
                    ids[workload.prompt_tokens:].tolist(), [EOS_ID],
                    span_players(workload.response_tokens, workload.n_players))


def _trained_instance(workload: Workload, model: torch.nn.Module | None, tokenizer: object,
                      world: object) -> Instance:
    if world is None:
        if "default" not in _WORLDS:
            from scar.data import lexicon

            _WORLDS["default"] = lexicon.build()
        world = _WORLDS["default"]
    model = model if model is not None else world.model
    limit = model.config.n_positions
    if workload.prompt_tokens + workload.response_tokens + 1 > limit:
        raise ValueError(f"prompt + response + suffix ({workload.prompt_tokens + workload.response_tokens + 1} "
                         f"tokens) exceeds the model's {limit} positions")
    g = np.random.default_rng(workload.seed + 1)
    prompt = world.sample_prompt(workload.prompt_tokens, g)
    response = world.sample_response(workload.response_tokens, g)
    return Instance(workload, model, tokenizer, prompt, response, [EOS_ID],
                    span_players(workload.response_tokens, workload.n_players))


# ---------------------------------------------------------------------------------------------- scoring


def score_sequences(model: torch.nn.Module, seqs: Sequence[Sequence[int]], *,
                    max_tokens: int = PEER_BATCH_TOKENS) -> tuple[np.ndarray, int, int]:
    """Score token sequences with the reward model in right-padded batches, as a peer's forward would.

    Sequences are length-sorted (longest first) and batched under ``max_tokens`` (batch x padded
    length). ``GPT2ForSequenceClassification`` reads each row out at its last non-pad token.

    Returns:
        ``(scores float64 [len(seqs)], tokens computed (padding included), model calls)``.
    """
    order = sorted(range(len(seqs)), key=lambda k: -len(seqs[k]))
    out = np.empty(len(seqs), dtype=np.float64)
    tokens = calls = 0
    start = 0
    with torch.inference_mode():
        while start < len(order):
            width = len(seqs[order[start]])
            size = max(1, min(len(order) - start, max_tokens // width))
            batch = order[start: start + size]
            ids = torch.full((size, width), PAD_ID, dtype=torch.int64)
            attn = torch.zeros(size, width, dtype=torch.int64)
            for b, k in enumerate(batch):
                ids[b, : len(seqs[k])] = torch.as_tensor(seqs[k])
                attn[b, : len(seqs[k])] = 1
            logits = model(input_ids=ids, attention_mask=attn).logits
            out[batch] = logits[:, 0].double().numpy()
            tokens += size * width
            calls += 1
            start += size
    return out, tokens, calls


@dataclass
class RunResult:
    """What one attribution run produced and what it cost.

    Attributes:
        values: float64 ``[n_players]`` span-player values.
        coalitions: coalitions evaluated (every row handed to the reward model, duplicates included).
        tokens: token-forwards computed (padding included).
        calls: reward-model forward calls.
        lower_bound: tokens of the prefix trie of the evaluated coalitions (``None`` until computed).
        token_values: token-level values (``shap-partition`` only).
        feature_coalitions: bool ``[C, F]`` coalitions over the method's features (span players, or
            response tokens for ``shap-partition``), for the trie lower bound.
        token_level: True when the features are response tokens.
    """

    values: np.ndarray
    coalitions: int
    tokens: int
    calls: int
    lower_bound: int | None = None
    token_values: np.ndarray | None = None
    feature_coalitions: np.ndarray | None = None
    token_level: bool = False


class _Recorder:
    """Counts a peer's evaluations and scores coalitions of span players in padded batches."""

    def __init__(self, inst: Instance, value_table: Callable[[np.ndarray], np.ndarray] | None = None,
                 token_cost: Callable[[np.ndarray], int] | None = None) -> None:
        self.inst = inst
        self.value_table = value_table
        self.token_cost = token_cost
        self.coalitions = 0
        self.tokens = 0
        self.calls = 0
        self.rows: list[np.ndarray] = []

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        bits = np.asarray(coalitions) > 0.5
        if bits.ndim == 1:
            bits = bits[None]
        self.rows.append(bits.copy())
        self.coalitions += bits.shape[0]
        self.calls += 1
        if self.value_table is not None:
            # Accuracy study: values from the exact table; cost = one plain sequence per coalition.
            self.tokens += self.token_cost(bits)
            return self.value_table(bits)
        seqs = [self.inst.sequence(self.inst.token_mask(b)) for b in bits]
        values, tokens, _ = score_sequences(self.inst.model, seqs)
        self.tokens += tokens
        return values

    def result(self, values: np.ndarray) -> RunResult:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, len(self.inst.players)), dtype=bool)
        return RunResult(np.asarray(values, dtype=np.float64).reshape(-1), self.coalitions, self.tokens,
                         self.calls, feature_coalitions=rows)


def _np_seed(seed: int) -> None:
    # shap's samplers draw from numpy's global generator; seed it so that runs repeat.
    np.random.seed(seed)


def _shap_partition(inst: Instance, max_evals: int) -> RunResult:
    """The SCAR authors' path: shap Partition over a Text masker, one reward-model call per string."""
    import shap

    counter = {"calls": 0, "tokens": 0}
    masks: list[np.ndarray] = []

    def model_fn(strings: np.ndarray) -> np.ndarray:
        out = np.empty(len(strings), dtype=np.float64)
        with torch.inference_mode():
            for i, s in enumerate(strings):
                ids = [t for t in inst.tokenizer(str(s), add_special_tokens=False)["input_ids"] if t != ABSENT_ID]
                seq = inst.prompt_ids + ids + inst.suffix_ids
                out[i] = float(inst.model(input_ids=torch.tensor([seq])).logits[0, 0])
                counter["calls"] += 1
                counter["tokens"] += len(seq)
                masks.append(_kept_tokens(inst.response_ids, ids))
        return out

    masker = shap.maskers.Text(inst.tokenizer, mask_token="[ABSENT]")
    explainer = shap.PartitionExplainer(model_fn, masker)
    sv = explainer([inst.response_text], max_evals=max_evals, silent=True)
    token_values = np.asarray(sv.values[0], dtype=np.float64).reshape(-1)
    if token_values.shape[0] != len(inst.response_ids):
        raise RuntimeError(f"shap's Text masker split the response into {token_values.shape[0]} tokens, "
                           f"expected {len(inst.response_ids)}")
    values = np.array([token_values[s:e].sum() for s, e in inst.players])
    return RunResult(values, counter["calls"], counter["tokens"], counter["calls"], token_values=token_values,
                     feature_coalitions=np.stack(masks) if masks else None, token_level=True)


def _kept_tokens(response: list[int], kept: list[int]) -> np.ndarray:
    """Which response tokens a masked response keeps (greedy subsequence match; the masker deletes)."""
    keep = np.zeros(len(response), dtype=bool)
    j = 0
    for i, t in enumerate(response):
        if j < len(kept) and kept[j] == t:
            keep[i] = True
            j += 1
    if j != len(kept):
        raise RuntimeError("a masked response is not a subsequence of the response")
    return keep


def _shap_permutation(inst: Instance, rec: _Recorder, n_perms: int, seed: int) -> RunResult:
    import shap

    n = len(inst.players)
    _np_seed(seed)
    masker = shap.maskers.Independent(np.zeros((1, n)), max_samples=1)
    explainer = shap.PermutationExplainer(lambda x: rec(x), masker, seed=seed)
    # shap counts a forward+backward pass over one permutation as 2n + 1 evaluations.
    sv = explainer(np.ones((1, n)), max_evals=max(n_perms // 2, 1) * (2 * n + 1), silent=True)
    return rec.result(sv.values[0])


def _captum_forward(inst: Instance, rec: _Recorder) -> Callable[[torch.Tensor], torch.Tensor]:
    """A captum forward over response token ids where absent players' tokens carry ``ABSENT_ID``."""
    starts = [s for s, _ in inst.players]

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        present = (inputs != ABSENT_ID).numpy()
        return torch.from_numpy(rec(present[:, starts]))

    return forward


def _captum(inst: Instance, rec: _Recorder, n_perms: int | None, seed: int) -> RunResult:
    """captum ShapleyValueSampling (``n_perms`` permutations) or, with ``n_perms=None``, exact ShapleyValues."""
    from captum.attr import ShapleyValues, ShapleyValueSampling

    x = torch.tensor([inst.response_ids])
    feature_mask = torch.zeros(1, len(inst.response_ids), dtype=torch.int64)
    for j, (s, e) in enumerate(inst.players):
        feature_mask[0, s:e] = j
    baselines = torch.full_like(x, ABSENT_ID)
    forward = _captum_forward(inst, rec)
    per_eval = max(1, PEER_BATCH_TOKENS // len(inst.sequence(np.ones(len(inst.response_ids)))))
    torch.manual_seed(seed)  # captum draws its permutations from torch's global generator
    if n_perms is None:
        attr = ShapleyValues(forward).attribute(x, baselines=baselines, feature_mask=feature_mask,
                                                perturbations_per_eval=per_eval)
    else:
        attr = ShapleyValueSampling(forward).attribute(x, baselines=baselines, feature_mask=feature_mask,
                                                       n_samples=n_perms, perturbations_per_eval=per_eval)
    return rec.result(np.array([float(attr[0, s]) for s, _ in inst.players]))


def _shapiq(inst: Instance, rec: _Recorder, kind: str, budget: int, seed: int) -> RunResult:
    import shapiq

    n = len(inst.players)
    approx = (shapiq.KernelSHAP(n=n, random_state=seed) if kind == "kernel"
              else shapiq.PermutationSamplingSV(n=n, random_state=seed))
    iv = approx.approximate(budget, rec)
    return rec.result(np.asarray(iv.get_n_order_values(1), dtype=np.float64).reshape(-1))


def _shapiq_exact(inst: Instance, rec: _Recorder) -> RunResult:
    import shapiq

    iv = shapiq.ExactComputer(rec, n_players=len(inst.players))("SV")
    return rec.result(np.asarray(iv.get_n_order_values(1), dtype=np.float64).reshape(-1))


def _pack_layout(inst: Instance, players: Sequence[tuple[int, int]], coalitions: torch.Tensor):
    """The prefix-trie pack layout (:func:`scar.trie.build_pack`, C++ when built) of one response's
    coalitions over ``players`` (tokens in no player are always kept)."""
    from scar.trie import build_pack

    seg_player, seg_len, cursor = [], [], 0
    for j, (s, e) in enumerate(players):
        if s > cursor:
            seg_player.append(-1)
            seg_len.append(s - cursor)
        seg_player.append(j)
        seg_len.append(e - s)
        cursor = e
    if cursor < len(inst.response_ids):
        seg_player.append(-1)
        seg_len.append(len(inst.response_ids) - cursor)
    c = coalitions.shape[0]
    return build_pack(coalitions.to(torch.bool), torch.zeros(c, dtype=torch.int64), torch.tensor([0, len(seg_player)]),
                      torch.tensor(seg_player, dtype=torch.int64), torch.tensor(seg_len, dtype=torch.int64),
                      torch.tensor([len(inst.prompt_ids)]), torch.tensor([len(inst.suffix_ids)]), torch.tensor([0]))


def binary_hierarchy(players: Sequence[int]) -> list:
    """A balanced binary tree over contiguous player indices, e.g. ``[[0, 1], [2, 3]]`` for four players:
    the shape of shap's Partition clustering of a text, at span level (for ``method="owen"``)."""
    players = list(players)
    if len(players) <= 2:
        return players
    half = (len(players) + 1) // 2
    return [binary_hierarchy(players[:half]), binary_hierarchy(players[half:])]


_SCORERS: dict[tuple[int, str], object] = {}


def _scar(inst: Instance, backend: str, method: str, budget: int | None, seed: int) -> RunResult:
    from scar.attribution import shapley_values
    from scar.scorer import CoalitionScorer

    hierarchy = binary_hierarchy(range(len(inst.players))) if method == "owen" else None
    key = (id(inst.model), backend)
    if key not in _SCORERS:
        # Built once per model and engine, as a user would: construction probes the model (trie exactness).
        if backend == "loop" or backend == "batched":
            _SCORERS[key] = CoalitionScorer(inst.model, backend=backend)
        else:  # trie with a dense float mask, or with the tree-attention kernel (C++ op on CPU)
            _SCORERS[key] = CoalitionScorer(inst.model, backend="trie",
                                            attention="kernel" if backend == "trie-kernel" else "mask")
    scorer = _SCORERS[key]
    res = shapley_values(scorer, inst.prompt_ids, inst.response_ids, inst.players, method=method, budget=budget,
                         seed=seed, hierarchy=hierarchy, suffix_ids=inst.suffix_ids)
    st = scorer.stats
    return RunResult(res.values.numpy(), res.n_evals, st.tokens_computed, st.passes, lower_bound=st.trie_tokens)


def run_method(inst: Instance, method: str, *, budget: int | None = None, seed: int = 0,
               value_table: Callable[[np.ndarray], np.ndarray] | None = None,
               token_cost: Callable[[np.ndarray], int] | None = None) -> RunResult:
    """Run one attribution method on an instance.

    Args:
        method: one of :data:`ENGINE_METHODS`, ``"scar-kernel"`` (this project's KernelSHAP),
            ``"scar-owen"`` (its Owen values over :func:`binary_hierarchy`: exact without a budget,
            else that many hierarchy-consistent permutations), both on the ``trie-kernel`` engine, or
            the exact references ``"captum-exact"`` / ``"shapiq-exact"``.
        budget: ``shap-partition``: max_evals (default 500); ``shap-permutation``, ``captum-svs``,
            ``scar-*``: permutations (default: the workload's ``n_perms``); ``shapiq-*``: coalitions
            (default: the workload's ``n_perms * (n + 1)``); ``scar-kernel``: sampled coalitions;
            ``scar-owen``: permutations (``None``: exact Owen values).
        seed: seed of the method's sampler.
        value_table, token_cost: peers on the span game only: take values from a table instead of the
            model (accuracy study) and charge ``token_cost(coalitions)`` tokens.
    """
    w = inst.workload
    n = len(inst.players)
    if method == "shap-partition":
        return _shap_partition(inst, budget or SHAP_PARTITION_EVALS)
    rec = _Recorder(inst, value_table, token_cost)
    if method == "shap-permutation":
        return _shap_permutation(inst, rec, budget or w.n_perms, seed)
    if method == "captum-svs":
        return _captum(inst, rec, budget or w.n_perms, seed)
    if method == "captum-exact":
        return _captum(inst, rec, None, seed)
    if method in ("shapiq-kernel", "shapiq-permutation"):
        return _shapiq(inst, rec, method.split("-")[1], budget or w.n_perms * (n + 1), seed)
    if method == "shapiq-exact":
        return _shapiq_exact(inst, rec)
    if method.startswith("scar-"):
        backend = method[len("scar-"):]
        if backend == "kernel":
            return _scar(inst, "trie-kernel", "kernel", budget, seed)
        if backend == "owen":
            return _scar(inst, "trie-kernel", "owen", budget, seed)
        if backend not in ("loop", "batched", "trie", "trie-kernel"):
            raise ValueError(f"unknown method {method!r}")
        return _scar(inst, backend, "permutation", budget or w.n_perms, seed)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(ENGINE_METHODS)}, scar-kernel, scar-owen, "
                     "captum-exact, shapiq-exact")


def exact_shapley(inst: Instance, *, max_tokens: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact span-player Shapley values and the table of all ``2**n`` coalition values (index = bitmask,
    bit ``j`` = player ``j``), scored with the ``trie`` backend."""
    from scar.estimators import shapley
    from scar.scorer import CoalitionScorer

    n = len(inst.players)
    scorer = CoalitionScorer(inst.model, backend="trie", max_tokens_per_pass=max_tokens)
    table = np.empty(2**n, dtype=np.float64)

    def value_fn(coalitions: torch.Tensor) -> torch.Tensor:
        v = scorer.score(inst.prompt_ids, inst.response_ids, inst.players, coalitions, inst.suffix_ids)
        table[_bitmask(coalitions.numpy())] = v.numpy()
        return v

    res = shapley(value_fn, n, method="exact")
    return res.values.numpy(), table


def _bitmask(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.int64) << np.arange(bits.shape[1], dtype=np.int64)).sum(1)


def trie_lower_bound(inst: Instance, coalitions: np.ndarray, *, token_level: bool = False) -> int:
    """Tokens of the prefix trie of ``coalitions`` (over span players, or over response tokens with
    ``token_level``): the fewest token-forwards any engine needs to score them."""
    players = [(i, i + 1) for i in range(len(inst.response_ids))] if token_level else inst.players
    return _pack_layout(inst, players, torch.as_tensor(np.asarray(coalitions, dtype=bool))).n_tokens


def plain_tokens(inst: Instance, coalitions: np.ndarray) -> int:
    """Sum over coalitions of ``prompt + kept + suffix``: the cost of scoring each on its own."""
    sizes = np.array([e - s for s, e in inst.players])
    bits = np.asarray(coalitions, dtype=bool)
    return int(bits.shape[0] * (len(inst.prompt_ids) + len(inst.suffix_ids)) + (bits @ sizes).sum())


# ---------------------------------------------------------------------------------------------- measuring

BENCH_THREADS = 1
"""torch intra-op threads while benchmarking. The project's CPU machine has 2 cores shared with other
work; two threads contending with other processes made single forwards up to 8x slower and very noisy,
one thread gives stable medians. Every method runs under the same setting."""


class torch_threads:
    """Context manager: run the block with ``n`` torch intra-op threads, then restore the previous count."""

    def __init__(self, n: int = BENCH_THREADS) -> None:
        self.n = n

    def __enter__(self) -> torch_threads:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._previous)



class PeakMemory:
    """Peak resident-set growth of this process while the block runs, sampled every ``interval`` s.

    CPU-only machines have no allocator peak counter for torch, so the resident set size is read from
    ``/proc/self/statm`` by a background thread (torch releases the GIL inside ops). Memory freed
    before the block and reused inside it is not counted, so this is a lower bound on the block's
    working set.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._start = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)


_PLAIN_CACHE: dict[tuple, tuple[float, float]] = {}


def plain_forward_seconds(model: torch.nn.Module, n_tokens: int, *, chunk: int = 4096, rounds: int = 3
                          ) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one plain causal forward of the reward model's base over ``n_tokens`` tokens.

    Up to ``chunk`` tokens this is one sequence of ``n_tokens``; beyond, the per-token time of one
    ``chunk``-token sequence times ``n_tokens`` (a single sequence that long would exceed the model's
    positions). Medians of ``rounds``; cached per (model, timed length).
    """
    length = min(n_tokens, chunk, model.config.n_positions)
    key = (id(model), length)  # every count above ``length`` reuses the same timed forward
    if key not in _PLAIN_CACHE:
        from scar.models import inspect_model

        base = inspect_model(model).base
        ids = torch.randint(N_SPECIAL, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
        walls, cpus = [], []
        with torch.inference_mode():
            for _ in range(rounds):
                c0, t0 = time.process_time(), time.perf_counter()
                base(input_ids=ids, use_cache=False)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        _PLAIN_CACHE[key] = (statistics.median(walls), statistics.median(cpus))
    wall, cpu = _PLAIN_CACHE[key]
    scale = n_tokens / length
    return wall * scale, cpu * scale


def _rel_l2(est: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(est - ref) / np.linalg.norm(ref))


def engine_row(inst: Instance, method: str, timing: Timing, *, reference: np.ndarray | None = None,
               authors: Timing | None = None) -> dict:
    """The figures of one engine-table row (JSON-serialisable, for ``benchmark.extra_info``).

    Args:
        timing: the method's :class:`Timing` on this instance (one response).
        reference: exact span-player values for the error column.
        authors: the ``shap-partition`` timing on the same workload, for the speedup columns.
    """
    result = timing.result
    lower = result.lower_bound
    if lower is None and result.feature_coalitions is not None and len(result.feature_coalitions):
        lower = trie_lower_bound(inst, result.feature_coalitions, token_level=result.token_level)
    plain_wall, plain_cpu = plain_forward_seconds(inst.model, result.tokens)
    nan = float("nan")
    return {
        "workload": inst.workload.name,
        "method": method,
        "seconds": timing.wall,
        "cpu_seconds": timing.cpu,
        "coalitions": result.coalitions,
        "coalitions_per_s": result.coalitions / timing.wall if timing.wall > 0 else nan,
        "tokens": result.tokens,
        "trie_lower_bound": lower,
        "tokens_over_lb": result.tokens / lower if lower else nan,
        "over_plain_forward": timing.wall / plain_wall,
        "cpu_over_plain_forward": timing.cpu / plain_cpu if plain_cpu > 0 else nan,
        "peak_mib": timing.peak_bytes / 2**20,
        "calls": result.calls,
        "speedup_vs_authors": authors.wall / timing.wall if authors and timing.wall > 0 else nan,
        "cpu_speedup_vs_authors": authors.cpu / timing.cpu if authors and timing.cpu > 0 else nan,
        "rel_l2_error": _rel_l2(result.values, reference) if reference is not None else nan,
        "values": result.values.tolist(),
    }


@dataclass
class Timing:
    """Medians over the timed rounds of one method on one instance.

    Attributes:
        wall: wall-clock seconds per response.
        cpu: CPU seconds of this process per response (``time.process_time``). With one torch thread
            this is the compute itself, unaffected by other processes sharing the cores.
        peak_bytes: peak resident-set growth (:class:`PeakMemory`).
        result: the last run's :class:`RunResult`.
    """

    wall: float
    cpu: float
    peak_bytes: int
    result: RunResult


def timed(fn: Callable[[], RunResult], rounds: int, *, warmup: bool = True) -> Timing:
    """Time ``rounds`` runs of ``fn`` (after one untimed warm-up run when ``warmup``)."""
    if warmup:
        fn()
    walls, cpus, peak, result = [], [], 0, None
    for _ in range(rounds):
        with PeakMemory() as mem:
            c0, t0 = time.process_time(), time.perf_counter()
            result = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peak = max(peak, mem.peak_bytes)
    return Timing(statistics.median(walls), statistics.median(cpus), peak, result)


# ---------------------------------------------------------------------------------------------- accuracy


ACCURACY_METHODS = ("scar-permutation", "scar-kernel", "scar-owen", "shap-partition", "shap-permutation", "captum-svs",
                    "shapiq-kernel", "shapiq-permutation")
DEFAULT_ESTIMATOR = "scar-kernel"
"""The project's default estimator: KernelSHAP (``scar.estimators.DEFAULT_METHOD``)."""


@dataclass
class _TableGame:
    """A span game served from the exact table; charges tokens as the engine that would run it would."""

    inst: Instance
    table: np.ndarray

    def values(self, bits: np.ndarray) -> np.ndarray:
        return self.table[_bitmask(bits)]

    def plain(self, bits: np.ndarray) -> int:
        return plain_tokens(self.inst, bits)


def estimate_from_table(inst: Instance, table: np.ndarray, method: str, *, budget: int | None,
                        seed: int) -> RunResult:
    """This project's estimator ``method`` (``permutation``, ``kernel`` or ``owen`` over
    :func:`binary_hierarchy`) on the span game served from the exact ``table`` of :func:`exact_shapley`
    (the numbers the reward model gives), charged the trie tokens of its plan (what the ``trie`` engines
    compute, up to pass splitting)."""
    from scar.estimators import shapley

    plan: list[np.ndarray] = []

    def value_fn(c: torch.Tensor) -> np.ndarray:
        plan.append(c.numpy().copy())
        return table[_bitmask(c.numpy())]

    hierarchy = binary_hierarchy(range(len(inst.players))) if method == "owen" else None
    res = shapley(value_fn, len(inst.players), method=method, budget=budget, seed=seed, hierarchy=hierarchy)
    return RunResult(res.values.numpy(), res.n_evals, trie_lower_bound(inst, np.concatenate(plan)), 1)


def accuracy_study(inst: Instance, *, budgets: dict[str, Sequence[int]], seeds: Sequence[int] = (0, 1, 2),
                   exact: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """Error (relative L2 to exact Shapley) against coalitions evaluated and tokens computed.

    Sampled methods draw their coalitions from the exact table of all ``2**n`` values (the same
    numbers the reward model gives), so many budgets and seeds are cheap. Tokens computed: this
    project's estimators are charged the trie tokens of their plan (what the ``trie`` backend runs,
    up to pass splitting); the peers the plain tokens of every coalition they evaluate (their engines
    score each coalition as its own sequence; padding not counted). ``shap-partition`` runs the real
    model through its Text masker (token-level; its token values are summed onto the span players)
    and is charged the tokens of the sequences it scored.

    Args:
        budgets: per method in :data:`ACCURACY_METHODS`, the budgets to try (permutations for
            ``*-permutation``/``captum-svs``, coalitions for ``*-kernel``, max_evals for
            ``shap-partition``; for ``scar-owen`` permutations, or ``None`` for its exact Owen values
            over :func:`binary_hierarchy`).
        exact: ``(values, table)`` from :func:`exact_shapley` (computed when omitted).

    Returns:
        One dict per (method, budget, seed): method, budget, seed, coalitions, tokens, rel_l2_error.
    """
    ref, table = exact if exact is not None else exact_shapley(inst)
    game = _TableGame(inst, table)
    rows = []
    for method, method_budgets in budgets.items():
        if method not in ACCURACY_METHODS:
            raise ValueError(f"unknown accuracy method {method!r}; known: {', '.join(ACCURACY_METHODS)}")
        for budget in method_budgets:
            deterministic = method == "shap-partition" or (method == "scar-owen" and budget is None)
            for seed in (seeds[:1] if deterministic else seeds):
                if method in ("scar-permutation", "scar-kernel", "scar-owen"):
                    r = estimate_from_table(inst, table, method.split("-")[1], budget=budget, seed=seed)
                elif method == "shap-partition":
                    r = run_method(inst, method, budget=budget)
                else:
                    r = run_method(inst, method, budget=budget, seed=seed, value_table=game.values,
                                   token_cost=game.plain)
                rows.append({"method": method, "budget": budget, "seed": seed, "coalitions": r.coalitions,
                             "tokens": r.tokens, "rel_l2_error": _rel_l2(r.values, ref)})
    return rows


def summarize_accuracy(rows: Sequence[dict]) -> list[dict]:
    """Median over seeds per (method, budget): coalitions, tokens and error; plus, for the default
    estimator, how every other method compares at the same tokens computed (log-log interpolation
    of its median curve; ``nan`` outside its measured range)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in groups.items():
        out.append({"method": method, "budget": budget, "seeds": len(rs),
                    "coalitions": statistics.median(r["coalitions"] for r in rs),
                    "tokens": statistics.median(r["tokens"] for r in rs),
                    "rel_l2_error": statistics.median(r["rel_l2_error"] for r in rs)})
    out.sort(key=lambda r: (r["method"], r["tokens"]))
    curves = {m: [(r["tokens"], r["rel_l2_error"]) for r in out if r["method"] == m] for m in {r["method"] for r in out}}
    for r in out:
        if r["method"] != DEFAULT_ESTIMATOR:
            continue
        for other, pts in curves.items():
            if other == DEFAULT_ESTIMATOR:
                continue
            err = _interp_loglog(pts, r["tokens"])
            r[f"error_ratio_vs_{other}"] = r["rel_l2_error"] / err if err == err else float("nan")
    return out


def _interp_loglog(points: Sequence[tuple[float, float]], x: float) -> float:
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1 and x0 > 0 and x1 > x0 and y0 > 0 and y1 > 0:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    if len(pts) == 1 and pts[0][0] == x:
        return pts[0][1]
    return float("nan")


# ---------------------------------------------------------------------------------------------- output


def machine_description() -> str:
    """CPU model, core count, torch version and the date (UTC)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores available, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")


def format_engine_table(rows: Sequence[dict]) -> str:
    """Markdown table of engine rows (wall and CPU seconds per response; ratios to one plain forward over
    the same tokens and speedups over the authors' path, each by wall / by CPU time)."""
    head = ("| workload | method | wall s | CPU s | coal/s (wall) | coalitions | tokens | tokens/LB "
            "| wall/plain fwd | CPU/plain fwd | peak MiB | speedup vs authors (wall) | (CPU) | rel L2 err |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['method']} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | "
            f"{r['coalitions_per_s']:.0f} | {r['coalitions']} | {r['tokens']} | {r['tokens_over_lb']:.2f} | "
            f"{r['over_plain_forward']:.2f} | {r['cpu_over_plain_forward']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['speedup_vs_authors']:.1f}x | {r['cpu_speedup_vs_authors']:.1f}x | {r['rel_l2_error']:.3f} |")
    return "\n".join(lines)


def format_accuracy_table(summary: Sequence[dict]) -> str:
    """Markdown table of the accuracy summary."""
    others = sorted({k for r in summary for k in r if k.startswith("error_ratio_vs_")})
    head = "| method | budget | seeds | coalitions | tokens | rel L2 err (median) |"
    if others:
        head += " " + " | ".join(k.replace("error_ratio_vs_", "err / ") for k in others) + " |"
    lines = [head, "|" + "---|" * (6 + len(others))]
    for r in summary:
        line = (f"| {r['method']} | {r['budget']} | {r['seeds']} | {r['coalitions']:.0f} | {r['tokens']:.0f} | "
                f"{r['rel_l2_error']:.4f} |")
        if others:
            line += " " + " | ".join(f"{r[k]:.2f}" if k in r and r[k] == r[k] else "" for k in others) + " |"
        lines.append(line)
    return "\n".join(lines)


def plot_accuracy(summary: Sequence[dict], path: str, *, title: str = "") -> None:
    """Error against tokens computed and against coalitions evaluated (log-log), one line per method;
    ``title`` (e.g. the workload) is appended to the figure's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = sorted({r["method"] for r in summary})
    for ax, xkey, label in ((axes[0], "tokens", "tokens computed"), (axes[1], "coalitions", "coalitions evaluated")):
        for m in methods:
            pts = sorted((r[xkey], r["rel_l2_error"]) for r in summary if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m,
                    linewidth=2.5 if m == DEFAULT_ESTIMATOR else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("relative L2 error vs exact Shapley")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy per unit of compute (median over seeds)" + (f": {title}" if title else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


QUICK_WORKLOAD = Workload("tiny", 16, 8, 4, 4)
"""Tiny workload (tiny model) for ``scar bench --quick`` and correctness-only runs of ``bench/``."""

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
others, three of them with response 64), then the rest of the issue's grid of 72 (small/large model x
prompt 64/256/1024 x response 32/128 x 8/16/32 span players x 8/32 permutations), small model first and
cheap before expensive: 75 workloads in all."""

REFERENCE_MAX_PLAYERS = 16
_REFERENCES: dict[tuple, np.ndarray] = {}


def reference_values(inst: Instance) -> np.ndarray | None:
    """Exact span-player Shapley values of an instance (cached per workload), or ``None`` above
    ``REFERENCE_MAX_PLAYERS`` players (``2**n`` coalitions would take too long)."""
    if len(inst.players) > REFERENCE_MAX_PLAYERS:
        return None
    key = (inst.workload, id(inst.model))
    if key not in _REFERENCES:
        _REFERENCES[key] = exact_shapley(inst)[0]
    return _REFERENCES[key]


FAST_METHODS = ("scar-trie", "scar-trie-kernel")
"""Rows cheap enough to time over several rounds; the rest get one timed run (a row of the authors'
path takes minutes on the shared 2-core machine)."""


def engine_rows(inst: Instance, methods: Sequence[str] = ENGINE_METHODS, *, rounds: int = 3, slow_rounds: int = 1,
                reference: np.ndarray | None = None, authors: Timing | None = None,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Time every method on one instance and build its row (``on_row`` sees each row as it is made).

    :data:`FAST_METHODS` run one warm-up and ``rounds`` timed runs, the others ``slow_rounds`` timed
    runs without warm-up (call once on a tiny workload first to pay for imports). ``shap-partition``
    (the authors' path) runs first when present, so the other rows carry their speedup over it.
    """
    methods = list(methods)
    if AUTHORS_METHOD in methods:
        methods.remove(AUTHORS_METHOD)
        methods.insert(0, AUTHORS_METHOD)
    rows = []
    for m in methods:
        fast = m in FAST_METHODS
        timing = timed(lambda m=m: run_method(inst, m), rounds if fast else slow_rounds, warmup=fast)
        if m == AUTHORS_METHOD:
            authors = timing
        rows.append(engine_row(inst, m, timing, reference=reference, authors=authors))
        if on_row is not None:
            on_row(rows[-1])
    return rows


AUTHORS_TIMINGS: dict[str, Timing] = {}
"""Timing of the authors' path per workload name, filled by :func:`bench_row` (so rows that run after it
in the same pytest session carry their speedup)."""


def bench_row(benchmark, bench_full: bool, workload: Workload, method: str) -> dict:
    """The body of one ``bench/`` engine row under pytest-benchmark.

    With ``bench_full`` the workload runs at full size (``benchmark.pedantic``: 1 warm-up and 5 rounds
    for :data:`FAST_METHODS`, 1 round otherwise); without, :data:`QUICK_WORKLOAD` runs once for
    correctness. pytest-benchmark times the wall clock; the CPU time per round is taken alongside.
    The row's figures go to ``benchmark.extra_info``; the row is returned.
    """
    inst = make_instance(workload if bench_full else QUICK_WORKLOAD)
    fast = method in FAST_METHODS
    box: list[RunResult] = []
    cpus: list[float] = []

    def run() -> None:
        c0 = time.process_time()
        box.append(run_method(inst, method))
        cpus.append(time.process_time() - c0)

    rounds, warmup = (5, 1) if fast and bench_full else (1, 0)
    with torch_threads(), PeakMemory() as mem:
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    stats = getattr(benchmark, "stats", None)
    wall = stats.stats.median if stats is not None else float("nan")
    timing = Timing(wall, statistics.median(cpus[warmup:]), mem.peak_bytes, box[-1])
    if method == AUTHORS_METHOD:
        AUTHORS_TIMINGS[inst.workload.name] = timing
    with torch_threads():
        row = engine_row(inst, method, timing, reference=reference_values(inst),
                         authors=AUTHORS_TIMINGS.get(inst.workload.name))
    benchmark.extra_info.update(row)
    return row


def full_and_empty_values(inst: Instance) -> tuple[float, float]:
    """``v(N)`` and ``v(∅)``: the reward of the whole response and of the prompt with the suffix only."""
    values, _, _ = score_sequences(inst.model, [inst.sequence(np.ones(len(inst.response_ids), dtype=bool)),
                                                inst.sequence(np.zeros(len(inst.response_ids), dtype=bool))])
    return float(values[0]), float(values[1])


def run_table(quick: bool = False) -> str:
    """The engine table of the target workload (with errors against exact Shapley values), as printed by
    ``scar bench``. ``quick`` runs the tiny :data:`QUICK_WORKLOAD` in seconds; the full table takes
    about half an hour on the project's shared 2-core machine."""
    workload = QUICK_WORKLOAD if quick else TARGET_WORKLOAD
    with torch_threads():
        if not quick:
            engine_rows(make_instance(QUICK_WORKLOAD), rounds=1)  # imports and first-call costs
        inst = make_instance(workload)
        rows = engine_rows(inst, rounds=1 if quick else 3, reference=reference_values(inst))
        machine = machine_description()
    return (f"SCAR benchmark: {workload.name} ({MODEL_SIZES[workload.model]}), "
            f"errors vs exact Shapley over {workload.n_players} span players\n"
            f"machine: {machine}\n\n" + format_engine_table(rows))
