"""GRPO on the local sentiment task with one credit method per run: training, timing and evaluation.

The same pre-trained policy of :func:`scar.demo.sentiment.build` is trained with GRPO (TRL) to raise the
score of the world's reward model, once per credit method (:mod:`grpo.methods`) and seed. Everything else
is shared: the seeds (same prompt order, same first batch of completions), the number of steps, the batch
(``prompts_per_step`` prompts x ``num_generations`` completions), completions of ``min_tokens`` to
``max_tokens`` tokens, the optimiser, and the KL penalty to the pre-trained policy (TRL's ``beta``: added per
token to the loss, identically for every method). Every credit provider returns the same sequence reward
``r`` (the reward model on prompt, response and EOS), so the logged training rewards are comparable.

Recorded per step: the mean reward of the sampled completions (TRL's ``reward`` log), its std, the KL to
the pre-trained policy, the mean completion length, the wall time of the step and the part of it spent
computing credit, and the mean within-completion std of the advantages (0 for sparse credit). After
training, completions sampled from the held-out prompts with a fixed seed (the same for every method, and
for the pre-trained policy as the reference point): reward, VADER score, length, and two coherence
measures, the pre-trained policy's perplexity of the completions and the fraction of distinct bigrams.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo.methods import method as get_method
from scar.demo.sentiment import build as build_sentiment_world
from scar.integrations.trl import DenseGRPOConfig, DenseGRPOTrainer, DenseRewardFunction

logger = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TimedCredit",
    "run",
    "train_one",
    "evaluate_policy",
    "load",
    "quiet_and_threads",
    "sample_completions",
    "RESULTS_FILE",
]

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run except the method, the seed and the number of steps.

    Attributes:
        prompts_per_step: prompts per GRPO step; each gets ``num_generations`` completions.
        num_generations: GRPO's group size.
        min_tokens, max_tokens: completion length window in policy tokens (``min_new_tokens`` keeps
            EOS away before ``min_tokens``; longer completions are truncated at ``max_tokens``).
        learning_rate: AdamW learning rate (TRL's linear decay to 0 over the run).
        kl_beta: TRL's ``beta``, the weight of the per-token KL to the pre-trained policy.
        temperature: sampling temperature, in training and in the final evaluation.
        eval_samples_per_prompt: completions per held-out prompt in the final evaluation.
        eval_seed: the seed of the final evaluation's sampling (same for every method and run).
        threads: torch intra-op threads during the experiment (None: leave torch's setting).
        smooth: window (steps) of the trailing moving average used for steps-to-threshold.
        fraction: the threshold of steps-to-threshold, as a fraction of the best method's gain.
    """

    prompts_per_step: int = 4
    num_generations: int = 4
    min_tokens: int = 24
    max_tokens: int = 48
    learning_rate: float = 5e-4
    kl_beta: float = 0.04
    temperature: float = 1.0
    eval_samples_per_prompt: int = 2
    eval_seed: int = 1234
    threads: int | None = 1
    smooth: int = 5
    fraction: float = 0.9

    def __post_init__(self) -> None:
        for name in (
            "prompts_per_step",
            "num_generations",
            "min_tokens",
            "max_tokens",
            "eval_samples_per_prompt",
            "smooth",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (GRPO compares completions of a prompt), got {self.num_generations}"
            )
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        for name in ("learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.kl_beta >= 0:
            raise ValueError(f"kl_beta must be >= 0, got {self.kl_beta!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")


# ---------------------------------------------------------------- credit and trainer


class TimedCredit:
    """A credit provider wrapped to measure the seconds it spends (the cost of the credit method)."""

    def __init__(self, credit_fn: Any, name: str) -> None:
        self.credit_fn = credit_fn
        self.__name__ = name
        self.seconds = 0.0  # accumulated since the last :meth:`lap`

    def __call__(self, prompts, completions, completion_ids):
        t0 = time.perf_counter()
        try:
            return self.credit_fn(prompts, completions, completion_ids)
        finally:
            self.seconds += time.perf_counter() - t0

    def lap(self) -> float:
        """Seconds spent since the previous lap; restarts the count."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _advantage_spread(advantages: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over completions of the std of the advantage along the completion's tokens.

    GRPO's ``(B,)`` advantages are one number per completion (spread 0); dense ``(B, T)`` ones vary.
    """
    if advantages.dim() == 1:
        return 0.0
    spreads = []
    for row, keep in zip(advantages.detach().double(), mask.bool()):
        values = row[keep]
        if values.numel() > 1:
            spreads.append(float(values.std(unbiased=False)))
    return float(np.mean(spreads)) if spreads else 0.0


def _recording(trainer_cls: type) -> type:
    """``trainer_cls`` that keeps the advantage spread of each generation batch in ``self.spreads``."""

    class Recording(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spreads: list[float] = []

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.spreads.append(_advantage_spread(output["advantages"], output["completion_mask"]))
            return output

    Recording.__name__ = f"Recording{trainer_cls.__name__}"
    return Recording


def _step_recorder(timed: TimedCredit, label: str, progress: bool):
    """A TrainerCallback that turns TRL's per-step logs into this experiment's step records
    (and prints one line per step when ``progress``)."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self.trainer: Any = None
            self._start = self._last = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = self._last = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "reward" not in logs:  # the end-of-training summary log carries no reward
                return
            now = time.perf_counter()
            spreads = self.trainer.spreads if self.trainer is not None else []
            self.steps.append(
                {
                    "step": int(state.global_step),
                    "reward": float(logs["reward"]),
                    "reward_std": float(logs.get("reward_std", math.nan)),
                    "kl": float(logs.get("kl", math.nan)),
                    "completion_length": float(logs.get("completions/mean_length", math.nan)),
                    "advantage_spread": spreads[-1] if spreads else math.nan,
                    "step_s": now - self._last,
                    "credit_s": timed.lap(),
                    "wall_s": now - self._start,
                }
            )
            self._last = now
            last = self.steps[-1]
            _log(
                progress,
                f"{label} step {last['step']}: reward {last['reward']:.3f}, {last['step_s']:.1f} s "
                f"(credit {last['credit_s']:.1f} s)",
            )

    return StepRecorder()


# ---------------------------------------------------------------- one run


@contextlib.contextmanager
def quiet_and_threads(threads: int | None) -> Iterator[None]:
    """Quiet transformers/TRL chatter and set torch's threads, restoring both afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, before = hf_logging.get_verbosity(), torch.get_num_threads()
    bars = hf_logging.is_progress_bar_enabled()
    trl_logger = logging.getLogger("trl")
    trl_level = trl_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load would drown the step lines
    trl_logger.setLevel(logging.ERROR)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(before)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        trl_logger.setLevel(trl_level)


def _distinct_bigrams(rows: Sequence[Sequence[int]]) -> float:
    """Distinct bigrams over all bigrams of the completions (1: never repeats; falls as text loops)."""
    grams = [tuple(row[i : i + 2]) for row in rows for i in range(len(row) - 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@torch.no_grad()
def reference_perplexity(
    reference: Any, prompt_ids: torch.Tensor, completions: Sequence[Sequence[int]], pad_id: int
) -> float:
    """Perplexity of the completions under ``reference`` (the pre-trained policy), given their prompts."""
    total_nll, total_tokens = 0.0, 0
    for prompt, row in zip(prompt_ids.tolist(), completions):
        prompt = [t for t in prompt if t != pad_id]
        if not row:
            continue
        ids = torch.tensor([prompt + list(row)])
        logits = reference(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        total_nll += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(row), reduction="sum"))
        total_tokens += len(row)
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


@torch.no_grad()
def sample_completions(
    policy: Any, tokenizer: Any, prompts: Sequence[str], config: TrainConfig
) -> tuple[torch.Tensor, list[list[int]]]:
    """Sample one completion per prompt as training does (temperature, ``min_tokens`` to ``max_tokens``
    tokens), from the caller's random state.

    Returns the left-padded prompt ids ``[B, P]`` and each completion's ids, padding removed, ending with the
    EOS token where the policy stopped (like TRL's completion ids).
    """
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    out = policy.generate(
        **enc,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=config.temperature,
        min_new_tokens=config.min_tokens,
        max_new_tokens=config.max_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        rows.append([t for t in row if t != tokenizer.pad_token_id])
    return enc["input_ids"], rows


def evaluate_policy(
    world: Any,
    policy: Any,
    tokenizer: Any,
    reward_model: Any,
    config: TrainConfig,
    reference: Any = None,
    n_samples_shown: int = 4,
) -> dict[str, Any]:
    """Reward and VADER score of completions sampled from every held-out prompt with ``config.eval_seed``.

    Sampling as in training (temperature, ``min_tokens`` to ``max_tokens`` tokens) with a fixed seed, so
    every policy is judged on the same prompts and the same random stream. The global RNG is restored
    afterwards. Returns means and stds of reward and VADER compound, the mean length in tokens, the
    coherence measures (``reference_perplexity`` under ``reference``, default the pre-trained policy, and
    ``distinct_bigrams``), and a few (prompt, completion) examples.
    """
    prompts = [p for p in world.prompts("test") for _ in range(config.eval_samples_per_prompt)]
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.eval_seed)
        prompt_ids, sampled = sample_completions(policy, tokenizer, prompts, config)
    policy.train(was_training)
    # the evaluation measures the text: the ending EOS is not part of it
    rows = [row[:-1] if row and row[-1] == tokenizer.eos_token_id else row for row in sampled]
    lengths = [len(row) for row in rows]
    completions = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    reference = reference if reference is not None else world.policy()
    perplexity = reference_perplexity(reference.eval(), prompt_ids, rows, tokenizer.pad_token_id)
    # Score the text as the training reward functions do (SCAR's tokenization: prompt, response, EOS).
    rewards = np.array(world.score(prompts, completions, model=reward_model, tokenizer=tokenizer))
    vader = np.array(world.vader_score(completions))
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "vader_mean": float(vader.mean()),
        "vader_std": float(vader.std()),
        "vader_positive_fraction": float(np.mean(vader >= 0.05)),
        "tokens_mean": float(np.mean(lengths)),
        "eos_fraction": float(np.mean([len(r) < config.max_tokens for r in rows])),
        "reference_perplexity": perplexity,
        "distinct_bigrams": _distinct_bigrams(rows),
        "n": len(prompts),
        "examples": [
            {"prompt": p, "completion": c, "reward": float(r), "vader": float(v)}
            for p, c, r, v in list(zip(prompts, completions, rewards, vader))[:n_samples_shown]
        ],
    }


def train_one(
    world: Any,
    method: str,
    seed: int,
    steps: int,
    config: TrainConfig,
    work_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    reference: Any = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train the world's pre-trained policy with GRPO and ``method``'s credit; return the run's record.

    The record holds ``method``, ``seed``, the per-step list ``steps`` (see the module docstring),
    ``final`` (:func:`evaluate_policy` of the trained policy; ``None`` when not ``evaluate``), ``train_s``
    (training wall time) and ``param_change`` (L2 norm of the change of the policy's parameters).
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = get_method(method)
    tokenizer, reward_model, policy = world.tokenizer(), world.reward_model(), world.policy()
    initial = [p.detach().clone() for p in policy.parameters()]
    timed = TimedCredit(spec.make(reward_model, tokenizer, seed), name="reward")
    reward_fn = DenseRewardFunction(timed, name="reward")
    batch = config.prompts_per_step * config.num_generations
    args = (DenseGRPOConfig if spec.dense else GRPOConfig)(
        output_dir=str(work_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=seed,
        max_steps=steps,
        per_device_train_batch_size=batch,
        num_generations=config.num_generations,
        max_completion_length=config.max_tokens,
        generation_kwargs={"min_new_tokens": config.min_tokens},
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        beta=config.kl_beta,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **spec.trainer,
    )
    trainer_cls = _recording(DenseGRPOTrainer if spec.dense else GRPOTrainer)
    recorder = _step_recorder(timed, f"{method} seed {seed}", progress)
    trainer = trainer_cls(
        model=policy,
        reward_funcs=[reward_fn],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": world.prompts("train")}),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    trainer.remove_callback(PrinterCallback)  # the recorder reports steps; no raw log dicts on stdout
    recorder.trainer = trainer
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    change = math.sqrt(sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(policy.parameters(), initial)))
    final = evaluate_policy(world, policy, tokenizer, reward_model, config, reference) if evaluate else None
    return {
        "method": method,
        "seed": seed,
        "steps": recorder.steps,
        "final": final,
        "train_s": train_s,
        "param_change": change,
    }


# ---------------------------------------------------------------- the experiment


def _check_run_args(methods: Sequence[str], seeds: Sequence[int], steps: int) -> None:
    if isinstance(methods, str) or not methods:
        raise TypeError(f"methods must be a non-empty sequence of method names, got {methods!r}")
    for m in methods:
        get_method(m)
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {list(methods)}")
    if isinstance(seeds, (str, int)) or not seeds:
        raise TypeError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"seeds must be ints, got {s!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


def run(
    methods: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 150,
    size: str = "default",
    out_dir: str | os.PathLike[str] = "runs/sentiment_grpo",
    progress: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    config: TrainConfig | None = None,
    world: Any | None = None,
) -> dict[str, Any]:
    """Train every (method, seed) pair for ``steps`` GRPO steps and compare them.

    Builds (or loads from ``cache_dir``) the sentiment world of ``size`` -- or uses ``world``, an
    already loaded :class:`scar.demo.sentiment.SentimentWorld` (``size`` and ``cache_dir`` are then
    ignored) -- evaluates the pre-trained policy once, then runs :func:`train_one` for each seed and
    method (methods interleaved per seed, so a shortened run still compares all methods, and so the
    machine's load varies alike for every method). ``results.json`` is rewritten in ``out_dir`` after
    every run (a partial result survives an interruption). :mod:`grpo.report` summarises and plots it.

    Returns:
        ``{"config", "world", "initial", "runs"}``.
    """
    _check_run_args(methods, seeds, steps)
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if world is None:
        world = build_sentiment_world(cache_dir, size=size, progress=progress)
    size = world.size
    results: dict[str, Any] = {
        "config": {
            "methods": list(methods),
            "seeds": list(seeds),
            "steps": steps,
            "size": size,
            **asdict(config),
            **_environment(),
        },
        "world": {"path": str(world.path), "config": world.config, "metrics": world.metrics},
        "initial": None,
        "runs": [],
    }
    with quiet_and_threads(config.threads):
        results["config"]["torch_threads"] = torch.get_num_threads()
        tokenizer, reward_model, reference = world.tokenizer(), world.reward_model(), world.policy()
        results["initial"] = evaluate_policy(world, reference, tokenizer, reward_model, config, reference)
        _log(
            progress,
            f"pre-trained policy: held-out reward {results['initial']['reward_mean']:.3f}, "
            f"VADER {results['initial']['vader_mean']:.3f}",
        )
        for seed in seeds:
            for method in methods:
                record = train_one(
                    world,
                    method,
                    seed,
                    steps,
                    config,
                    out / "trainer" / f"{method}-{seed}",
                    progress=progress,
                    reference=reference,
                )
                results["runs"].append(record)
                _write(out, results)
                last = record["steps"][-1]
                _log(
                    progress,
                    f"{method} seed {seed}: {len(record['steps'])} steps in {record['train_s']:.0f} s, "
                    f"last train reward {last['reward']:.3f}, held-out reward "
                    f"{record['final']['reward_mean']:.3f}, VADER {record['final']['vader_mean']:.3f}",
                )
    return results


def _environment() -> dict[str, Any]:
    from importlib import metadata

    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "torch": torch.__version__,
        "trl": metadata.version("trl"),
        "transformers": metadata.version("transformers"),
    }


def _log(progress: bool, message: str) -> None:
    logger.info(message)
    if progress:
        print(message, flush=True)


def _write(out: Path, results: dict[str, Any]) -> None:
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=True), encoding="utf-8")
    os.replace(tmp, out / RESULTS_FILE)


def load(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``results.json`` of an earlier :func:`run` in ``out_dir``."""
    return json.loads((Path(out_dir) / RESULTS_FILE).read_text(encoding="utf-8"))
