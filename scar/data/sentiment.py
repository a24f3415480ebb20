"""A locally built sentiment task: text, tokenizer, reward model and policy, cached on disk.

Nothing is downloaded. :func:`build` makes, deterministically from a fixed seed,

1. **text** from the template grammar of :mod:`scar.data.templates` (word banks sorted by the VADER
   lexicon shipped in ``vaderSentiment``), labelled by VADER's compound score in [-1, 1];
2. a **tokenizer**: byte-level BPE (``tokenizers``) trained on that text, wrapped as
   ``transformers.PreTrainedTokenizerFast`` with ``<|pad|>``, ``<|bos|>`` and ``<|eos|>``. Encoding
   a text prepends BOS (and nothing else); offsets are not trimmed, so the character spans of a
   text's tokens tile it exactly (a token's span includes its leading space);
3. a **reward model**: ``GPT2ForSequenceClassification`` (``num_labels=1``) regressed on
   ``REWARD_SCALE * compound`` of the response, so rewards lie in about [-5, 5];
4. a **policy**: ``GPT2LMHeadModel`` pre-trained on neutral and mixed continuations of 24-48
   tokens, so that sampling from it gives sentences of mixed sentiment for RL to improve.

Reward-model template (what the scores mean): the input of a (prompt, response) pair is
``tokenizer(prompt).input_ids + tokenizer(response, add_special_tokens=False).input_ids + [eos]``
-- BOS, prompt, response, then EOS as the one-token *suffix*; the score is read at EOS (the last
non-pad token, which is how ``GPT2ForSequenceClassification`` reads out). Responses start with a
space, and byte-level pre-tokenisation splits before a space, so tokenising prompt and response
separately gives the same ids as tokenising their concatenation. Training examples include
responses with random words deleted (labelled by VADER on what is left) and empty responses, so
the scores of SCAR's coalitions are meaningful too. Besides the read-out at EOS, a few word ends
inside each response are supervised (through the same score head) with the VADER score of the
response up to there: many targets per forward, which makes the small model learn faster.

Everything lands in one folder with a ``manifest.json``; a second :func:`build` with the same
arguments loads that folder and trains nothing (:attr:`SentimentWorld.built` is then ``False``).
"""

from __future__ import annotations

import json
import logging
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

from scar.data import templates
from scar.data._build import (check_size, default_cache_root, install, optimizer_step, pad_rows, torch_threads,
                              versioned_folder, warmup_cosine_lr)

logger = logging.getLogger(__name__)

FORMAT = "sentiment-v1"  # bump when the on-disk layout or the recipe changes: the folder name follows
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
        seed=0, vocab_size=1536, n_positions=128,
        n_reward_train=8000, n_reward_test=1000, n_policy_train=8000, n_policy_test=500,
        reward_layers=4, reward_width=128, reward_heads=4, reward_epochs=3, reward_lr=1e-3,
        policy_layers=3, policy_width=128, policy_heads=4, policy_epochs=2, policy_lr=1e-3,
        batch_size=32, n_policy_samples=128,
    ),
    "tiny": SizeConfig(
        seed=0, vocab_size=512, n_positions=128,
        n_reward_train=3000, n_reward_test=256, n_policy_train=256, n_policy_test=64,
        reward_layers=1, reward_width=32, reward_heads=2, reward_epochs=2, reward_lr=1e-3,
        policy_layers=1, policy_width=32, policy_heads=2, policy_epochs=1, policy_lr=3e-3,
        batch_size=32, n_policy_samples=16,
    ),
}


def folder_name(size: str) -> str:
    """Versioned folder of a size inside the cache root: ``sentiment-v1`` or ``sentiment-v1-<size>``."""
    return versioned_folder(FORMAT, size, SIZES)


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
    if not prompts:
        return []
    head = tokenizer(list(prompts))["input_ids"]
    tail = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [h + t + [tokenizer.eos_token_id] for h, t in zip(head, tail)]


@torch.no_grad()
def score_ids(model, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Reward-model scores of id lists (each already BOS ... EOS), batched with right padding."""
    limit = model.config.n_positions
    for i, row in enumerate(rows):
        if len(row) > limit:
            raise ValueError(f"input {i} has {len(row)} tokens; the reward model takes at most {limit}")
    model.eval()
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_rows(rows[start : start + batch_size], pad_id)
        out.extend(model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist())
    return out


@dataclass(frozen=True)
class SentimentWorld:
    """A built sentiment world on disk: loaders for its tokenizer, models, prompts and data.

    ``built`` is ``True`` when the call that returned this object trained the models and ``False``
    when it loaded them from the cache. ``metrics`` holds the reward model's held-out numbers
    (``reward_sign_accuracy``, ``reward_pearson``, ``reward_mse`` in reward units; see
    :func:`reward_metrics`), its last-epoch training loss ``reward_train_mse`` (read-out MSE plus
    the weighted prefix MSE), and the policy's held-out token loss and statistics of completions
    sampled from held-out prompts (``policy_sample_*``); ``timings_s`` the build times in seconds.
    """

    path: Path
    size: str
    built: bool
    config: dict[str, Any]
    metrics: dict[str, float]
    timings_s: dict[str, float]
    reward_scale: float = REWARD_SCALE
    _corpus: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def tokenizer(self):
        """The byte-level BPE tokenizer as a ``transformers.PreTrainedTokenizerFast`` (pads right)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(self.path / "tokenizer")

    def reward_model(self):
        """The reward model, a ``GPT2ForSequenceClassification`` in eval mode."""
        from transformers import GPT2ForSequenceClassification

        return GPT2ForSequenceClassification.from_pretrained(self.path / "reward_model").eval()

    def policy(self):
        """The pre-trained policy, a ``GPT2LMHeadModel`` in eval mode."""
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel.from_pretrained(self.path / "policy").eval()

    def prompts(self, split: str = "train") -> list[str]:
        """The prompts of ``split`` ("train" or "test"; the splits share no prompt)."""
        return [p["text"] for p in self._data("prompts", split)]

    def reward_data(self, split: str = "train") -> list[dict[str, Any]]:
        """Reward-model examples of ``split``: dicts with ``prompt``, ``response`` and ``vader``."""
        return self._data("reward", split)

    def policy_data(self, split: str = "train") -> list[dict[str, Any]]:
        """Policy pre-training texts of ``split``: dicts with ``prompt`` and ``response``."""
        return self._data("policy", split)

    def vader_score(self, texts: Sequence[str]) -> list[float]:
        """VADER compound scores in [-1, 1]; the reward model approximates ``reward_scale`` times these."""
        return vader_score(texts)

    def score(self, prompts: Sequence[str], responses: Sequence[str], *, model=None, tokenizer=None,
              batch_size: int = 64) -> list[float]:
        """Reward-model scores of (prompt, response) pairs under the template of the module docstring.

        Pass ``model``/``tokenizer`` to reuse loaded ones (they are loaded from disk otherwise).
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer()
        model = model if model is not None else self.reward_model()
        rows = reward_input_ids(tokenizer, prompts, responses)
        return score_ids(model, rows, tokenizer.pad_token_id, batch_size)

    def _data(self, part: str, split: str) -> list[Any]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not self._corpus:
            self._corpus.update(json.loads((self.path / "corpus.json").read_text(encoding="utf-8")))
        return list(self._corpus[part][split])


def build(cache_dir: str | os.PathLike[str] | None = None, *, size: str = "default", force: bool = False,
          progress: bool = True) -> SentimentWorld:
    """Build (or load from cache) the sentiment world of ``size`` ("default" or "tiny").

    ``cache_dir`` is the cache *root* (default :func:`default_cache_root`); the world lives in its
    subfolder :func:`folder_name` (``sentiment-v1`` for "default", ``sentiment-v1-tiny`` for "tiny").
    A valid folder (same format and configuration) is loaded without training unless ``force``.
    A build writes into a temporary sibling folder and renames it into place when complete, so an
    interrupted build never leaves a folder that looks valid.
    """
    check_size(size, SIZES)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / folder_name(size)
    config = SIZES[size]
    if not force:
        world = _load(target, size, config)
        if world is not None:
            return world
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        manifest = _build_into(tmp, size, config, progress)
        install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SentimentWorld(target, size, True, manifest["config"], manifest["metrics"], manifest["timings_s"])


def _load(target: Path, size: str, config: SizeConfig) -> SentimentWorld | None:
    """The world in ``target`` if it is complete and was built with ``config``; else ``None``."""
    manifest_path = target / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("config") != asdict(config):
        return None
    needed = ("corpus.json", "tokenizer/tokenizer.json", "reward_model/config.json", "policy/config.json")
    if not all((target / name).is_file() for name in needed):
        return None
    return SentimentWorld(target, size, False, manifest["config"], manifest["metrics"], manifest["timings_s"])


def _build_into(folder: Path, size: str, config: SizeConfig, progress: bool) -> dict[str, Any]:
    timings: dict[str, float] = {}
    # One thread: these models are small enough that intra-op threads mostly synchronise. Measured
    # on the shared 2-core machine (load ~2-3), a "default" reward-model step took 140 ms on one
    # thread and 2.2 s on two; the policy 160 ms against 740 ms.
    with torch_threads(1):
        t0 = time.perf_counter()
        corpus = _make_text(config)
        tokenizer = _train_tokenizer(corpus, config)
        tokenizer.save_pretrained(folder / "tokenizer")
        corpus["policy"] = _make_policy_text(config, corpus["prompts"], tokenizer)
        (folder / "corpus.json").write_text(json.dumps(corpus, indent=0), encoding="utf-8")
        timings["text_and_tokenizer"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        reward_model, reward_metrics = _train_reward_model(corpus, tokenizer, config, progress)
        reward_model.save_pretrained(folder / "reward_model")
        timings["reward_model"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        policy, policy_metrics = _train_policy(corpus, tokenizer, config, progress)
        policy_metrics.update(_sample_policy(policy, reward_model, tokenizer, corpus, config))
        policy.save_pretrained(folder / "policy")
        timings["policy"] = time.perf_counter() - t0

    metrics = {**reward_metrics, **policy_metrics}
    manifest = {"format": FORMAT, "size": size, "config": asdict(config), "reward_scale": REWARD_SCALE,
                "metrics": metrics, "timings_s": timings}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    logger.info("sentiment world %r built in %.1f s: %s", size, sum(timings.values()),
                ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return manifest


# ---------------------------------------------------------------- text


def _make_text(config: SizeConfig) -> dict[str, Any]:
    """Prompts split by prompt, and VADER-labelled reward examples for each split."""
    train_prompts, test_prompts = templates.shuffled_prompts(config.seed, config.test_prompt_fraction)
    rng = random.Random(config.seed + 1)
    reward = {
        "train": _reward_examples(rng, train_prompts, config.n_reward_train, config),
        "test": _reward_examples(rng, test_prompts, config.n_reward_test, config),
    }
    prompts = {"train": [asdict(p) for p in train_prompts], "test": [asdict(p) for p in test_prompts]}
    return {"prompts": prompts, "reward": reward}


def _reward_examples(rng: random.Random, prompts: list[templates.Prompt], n: int,
                     config: SizeConfig) -> list[dict[str, Any]]:
    rows = []
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


def _make_policy_text(config: SizeConfig, prompts: dict[str, list[dict[str, str]]],
                      tokenizer) -> dict[str, list[dict[str, str]]]:
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


def _train_tokenizer(corpus: dict[str, Any], config: SizeConfig):
    """Byte-level BPE trained on the prompts and reward texts, wrapped for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p["text"] for split in SPLITS for p in corpus["prompts"][split]]
    texts += [r["prompt"] + r["response"] for r in corpus["reward"]["train"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # Untrimmed offsets: each token's character span includes its leading space, so spans tile the text.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                      special_tokens=[(BOS, tok.token_to_id(BOS))]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=config.n_positions, padding_side="right")


# ---------------------------------------------------------------- training


def _gpt2_config(tokenizer, config: SizeConfig, layers: int, width: int, heads: int, **extra):
    from transformers import GPT2Config

    # No dropout: the data are generated in abundance, and without it training is a pure
    # function of the seed and the batch order.
    return GPT2Config(vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=width,
                      n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **extra)


def _fit(model, rows: list[list[int]], targets: list[list[tuple[int, float]]] | None, *, epochs: int,
         lr: float, batch_size: int, seed: int, pad_id: int, progress: bool, desc: str,
         prefix_weight: float = 0.0) -> float:
    """AdamW over shuffled right-padded batches; regression on ``targets``, else causal LM loss.

    For regression, ``targets[i]`` lists ``(position, value)`` pairs of row ``i``: the last pair is the
    read-out (EOS) target, the others prefix targets whose mean squared error is added with weight
    ``prefix_weight``. Returns the mean loss of the last epoch.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_batches = math.ceil(len(rows) / batch_size)
    total = epochs * n_batches
    model.train()
    step, last_epoch_losses = 0, []
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for _epoch in range(epochs):
            last_epoch_losses = []
            order = torch.randperm(len(rows), generator=generator).tolist()
            for b in range(n_batches):
                index = order[b * batch_size : (b + 1) * batch_size]
                ids, mask = pad_rows([rows[i] for i in index], pad_id)
                if targets is None:
                    labels = ids.masked_fill(mask == 0, -100)
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                else:
                    loss = _regression_loss(model, ids, mask, [targets[i] for i in index], prefix_weight)
                optimizer_step(model, optimizer, loss,
                               warmup_cosine_lr(step, total, lr, warmup_fraction=0.05, floor=0.1))
                step += 1
                last_epoch_losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return float(np.mean(last_epoch_losses))


def _regression_loss(model, ids: torch.Tensor, mask: torch.Tensor, targets: list[list[tuple[int, float]]],
                     prefix_weight: float) -> torch.Tensor:
    """MSE at each row's read-out plus ``prefix_weight`` times the MSE at its prefix positions.

    The score head is applied to every position (the same weights ``GPT2ForSequenceClassification``
    uses at the read-out), so each sequence supervises many positions in one forward.
    """
    hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    scores = model.score(hidden)[..., 0]
    last = [(b, *pairs[-1]) for b, pairs in enumerate(targets)]
    rows_, cols, values = zip(*last)
    loss = torch.nn.functional.mse_loss(scores[list(rows_), list(cols)], torch.tensor(values))
    inner = [(b, pos, value) for b, pairs in enumerate(targets) for pos, value in pairs[:-1]]
    if prefix_weight > 0 and inner:
        rows_, cols, values = zip(*inner)
        loss = loss + prefix_weight * torch.nn.functional.mse_loss(scores[list(rows_), list(cols)],
                                                                   torch.tensor(values))
    return loss


def _prefix_targets(rng: random.Random, tokenizer, example: dict[str, Any], row: list[int],
                    n_prefixes: int) -> list[tuple[int, float]]:
    """Up to ``n_prefixes`` (position, scaled VADER of the response up to there) pairs, then the read-out.

    Prefixes end at word ends (the next token starts with a space), where the text so far is a
    sequence of whole words -- the kind of text SCAR's span coalitions produce.
    """
    response = example["response"]
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    start = len(row) - 1 - len(offsets)  # index of the first response token in ``row``
    ends = [j for j in range(len(offsets) - 1) if response[offsets[j + 1][0]] == " "]
    chosen = sorted(rng.sample(ends, min(n_prefixes, len(ends))))
    labels = vader_score([response[: offsets[j][1]] for j in chosen])
    pairs = [(start + j, REWARD_SCALE * label) for j, label in zip(chosen, labels)]
    return pairs + [(len(row) - 1, REWARD_SCALE * example["vader"])]


def _train_reward_model(corpus: dict[str, Any], tokenizer, config: SizeConfig, progress: bool):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(config.seed + 10)
    model = GPT2ForSequenceClassification(_gpt2_config(
        tokenizer, config, config.reward_layers, config.reward_width, config.reward_heads,
        num_labels=1, problem_type="regression"))
    train, test = corpus["reward"]["train"], corpus["reward"]["test"]
    rows = reward_input_ids(tokenizer, [r["prompt"] for r in train], [r["response"] for r in train])
    rng = random.Random(config.seed + 12)
    targets = [_prefix_targets(rng, tokenizer, ex, row, config.reward_prefixes) for ex, row in zip(train, rows)]
    train_loss = _fit(model, rows, targets, epochs=config.reward_epochs, lr=config.reward_lr,
                      batch_size=config.batch_size, seed=config.seed + 11, pad_id=tokenizer.pad_token_id,
                      progress=progress, desc="reward model", prefix_weight=config.reward_prefix_weight)
    test_rows = reward_input_ids(tokenizer, [r["prompt"] for r in test], [r["response"] for r in test])
    pred = np.array(score_ids(model, test_rows, tokenizer.pad_token_id))
    vader = np.array([r["vader"] for r in test])
    return model, {"reward_train_mse": train_loss, **reward_metrics(pred, vader)}


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


def _train_policy(corpus: dict[str, Any], tokenizer, config: SizeConfig, progress: bool):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed + 20)
    model = GPT2LMHeadModel(_gpt2_config(tokenizer, config, config.policy_layers, config.policy_width,
                                         config.policy_heads))

    def rows(split: str) -> list[list[int]]:
        data = corpus["policy"][split]
        return reward_input_ids(tokenizer, [r["prompt"] for r in data], [r["response"] for r in data])

    train_loss = _fit(model, rows("train"), None, epochs=config.policy_epochs, lr=config.policy_lr,
                      batch_size=config.batch_size, seed=config.seed + 21, pad_id=tokenizer.pad_token_id,
                      progress=progress, desc="policy")
    test = rows("test")
    losses, counts = [], []
    with torch.no_grad():
        for start in range(0, len(test), config.batch_size):
            ids, mask = pad_rows(test[start : start + config.batch_size], tokenizer.pad_token_id)
            n = int(mask[:, 1:].sum())
            losses.append(model(input_ids=ids, attention_mask=mask,
                                labels=ids.masked_fill(mask == 0, -100)).loss.item() * n)
            counts.append(n)
    return model, {"policy_train_loss": train_loss, "policy_test_loss": sum(losses) / sum(counts)}


@torch.no_grad()
def _sample_policy(policy, reward_model, tokenizer, corpus: dict[str, Any], config: SizeConfig) -> dict[str, float]:
    """Statistics of completions sampled (temperature 1) from held-out prompts."""
    rng = random.Random(config.seed + 30)
    prompts = [rng.choice(corpus["prompts"]["test"])["text"] for _ in range(config.n_policy_samples)]
    torch.manual_seed(config.seed + 31)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = policy.generate(**enc, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=2 * POLICY_TOKENS[1],
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    lengths, finished, completions, rows = [], [], [], []
    for prompt_ids, row in zip(tokenizer(prompts)["input_ids"], new):
        done = tokenizer.eos_token_id in row
        row = row[: row.index(tokenizer.eos_token_id)] if done else row
        lengths.append(len(row))
        finished.append(done)
        completions.append(tokenizer.decode(row))
        # Score the sampled ids themselves: re-tokenising decoded text need not give them back.
        rows.append(prompt_ids + row + [tokenizer.eos_token_id])
    lo, hi = POLICY_TOKENS
    rewards = score_ids(reward_model, rows, tokenizer.pad_token_id)
    return {
        "policy_sample_tokens": float(np.mean(lengths)),
        "policy_sample_eos_rate": float(np.mean(finished)),
        "policy_sample_in_length_window": float(np.mean([lo <= n <= hi for n in lengths])),
        "policy_sample_vader": float(np.mean(vader_score(completions))),
        "policy_sample_reward": float(np.mean(rewards)),
    }
