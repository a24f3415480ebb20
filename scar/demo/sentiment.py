"""A locally built sentiment task: text, tokenizer, reward model and policy, cached on disk.

Nothing is downloaded. :func:`build` makes, deterministically from a fixed seed,

1. **text** from the template grammar of :mod:`scar.demo.templates` (word banks sorted by the VADER
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
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scar.demo.cache import check_size, default_cache_root, install, versioned_folder
from scar.demo.sentiment_task import (
    POLICY_TOKENS,
    REWARD_SCALE,
    SIZES,
    SPLITS,
    VADER_NEUTRAL,
    SizeConfig,
    make_policy_text,
    make_text,
    reward_input_ids,
    reward_metrics,
    score_ids,
    vader_score,
)
from scar.demo.sentiment_training import sample_policy, train_policy, train_reward_model, train_tokenizer
from scar.demo.training import torch_threads

__all__ = [
    "FORMAT",
    "POLICY_TOKENS",
    "REWARD_SCALE",
    "SIZES",
    "VADER_NEUTRAL",
    "SentimentWorld",
    "SizeConfig",
    "build",
    "default_cache_root",
    "folder_name",
    "reward_input_ids",
    "reward_metrics",
    "score_ids",
    "vader_score",
]

logger = logging.getLogger(__name__)

FORMAT = "sentiment-v1"  # bump when the on-disk layout or the recipe changes: the folder name follows


def folder_name(size: str) -> str:
    """Versioned folder of a size inside the cache root: ``sentiment-v1`` or ``sentiment-v1-<size>``."""
    return versioned_folder(FORMAT, size, SIZES)


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

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, model=None, tokenizer=None, batch_size: int = 64
    ) -> list[float]:
        """Reward-model scores of (prompt, response) pairs under the template of the module docstring.

        Pass ``model``/``tokenizer`` to reuse loaded ones (they are loaded from disk otherwise).
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer()
        model = model if model is not None else self.reward_model()
        rows = reward_input_ids(tokenizer, prompts, responses)
        return score_ids(model, rows, batch_size)

    def _data(self, part: str, split: str) -> list[Any]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not self._corpus:
            self._corpus.update(json.loads((self.path / "corpus.json").read_text(encoding="utf-8")))
        return list(self._corpus[part][split])


def build(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    size: str = "default",
    force: bool = False,
    progress: bool = True,
) -> SentimentWorld:
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
    # One thread: these models are small enough that intra-op threads mostly synchronise, and on a
    # machine shared with other work more threads are much slower, not faster.
    with torch_threads(1):
        t0 = time.perf_counter()
        corpus = make_text(config)
        tokenizer = train_tokenizer(corpus, config)
        tokenizer.save_pretrained(folder / "tokenizer")
        corpus["policy"] = make_policy_text(config, corpus["prompts"], tokenizer)
        (folder / "corpus.json").write_text(json.dumps(corpus, indent=0), encoding="utf-8")
        timings["text_and_tokenizer"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        reward_model, reward_metrics = train_reward_model(corpus, tokenizer, config, progress)
        reward_model.save_pretrained(folder / "reward_model")
        timings["reward_model"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        policy, policy_metrics = train_policy(corpus, tokenizer, config, progress)
        policy_metrics.update(sample_policy(policy, reward_model, tokenizer, corpus, config))
        policy.save_pretrained(folder / "policy")
        timings["policy"] = time.perf_counter() - t0

    metrics = {**reward_metrics, **policy_metrics}
    manifest = {
        "format": FORMAT,
        "size": size,
        "config": asdict(config),
        "reward_scale": REWARD_SCALE,
        "metrics": metrics,
        "timings_s": timings,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    logger.info(
        "sentiment world %r built in %.1f s: %s",
        size,
        sum(timings.values()),
        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
    )
    return manifest


# ---------------------------------------------------------------- text
