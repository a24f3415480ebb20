"""TRL drop-in for dense credit: a reward function and a GRPO trainer with per-token advantages.

Three pieces:

* :class:`DenseRewardFunction` wraps a *credit provider* -- any callable
  ``credit_fn(prompts, completions, completion_ids) -> DenseRewards`` (``scar.SCAR(...)``, the ABC
  baseline, :class:`scar.distributed.CreditPool`, ...) -- as an ordinary TRL reward function. Used in
  ``GRPOTrainer`` or ``RLOOTrainer`` it returns the sequence reward ``r`` of each completion (plain GRPO /
  RLOO training on ``r``) and keeps the batch's :class:`~scar.credit.rewards.DenseRewards` so that a trainer
  can fetch them for the same completions. It takes text or conversational (chat-message) datasets, and
  logs the credit statistics of each batch through TRL's ``log_metric``. :class:`AsyncDenseRewardFunction`
  is the same as an async reward function, whose credit overlaps TRL's other async reward functions.
* :class:`DenseGRPOConfig` is TRL's ``GRPOConfig`` with the settings of the per-token advantages.
* :class:`DenseGRPOTrainer` is a ``GRPOTrainer`` whose advantages are per token, ``(B, T)``, built from
  the dense rewards. Only the advantages change: the KL term, clipping, loss types and loss
  normalisation of TRL are untouched (GRPO's loss accepts ``(B, T)`` advantages from a subclass).

The per-token advantages are :func:`scar.credit.advantages.dense_group_advantages` of the dense rewards:
returns-to-go minus a group baseline (per position by default), scaled like GRPO's (``scale_rewards``). With
sparse credit they equal GRPO's sequence advantages broadcast over each completion. Their settings are the
fields of :class:`DenseGRPOConfig`, TRL's ``GRPOConfig`` plus ``std_of`` and ``baseline``.

When several reward functions are given, the per-token reward is
``R_{i,t} = sum_{dense k} w_k R^k_{i,t} + 1[t == T_i] * sum_{other k} w_k r^k_i``: the sequence-level
reward functions put their reward on the last completion token (TRL's completion ends with the EOS
token when the policy stopped), exactly as in plain GRPO.

Several processes (``torchrun``, ``accelerate launch``): each process scores its own completions with its
own credit provider (the reward model lives in every process); :class:`DenseGRPOTrainer` pads the per-token
rewards to a common length and gathers them, so the group statistics see every completion of a group even
when the group is split across processes, and each process keeps the rows of its own completions.

RLOO: :class:`DenseRewardFunction` works in ``RLOOTrainer`` as a sequence reward. RLOO's loss is built on
the *sequence* log-ratio (one ratio and one advantage per completion), so per-token advantages have no
place there without rewriting its loss; this module does not provide a dense RLOO trainer.

Tested with TRL ``>=1.16,<1.17`` (the range in ``pyproject.toml``'s ``trl`` extra): the trainer overrides
the private methods ``_calculate_rewards`` and ``_generate_and_score_completions`` of ``GRPOTrainer``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

import torch

from scar._checks import check_choice
from scar.credit.advantages import BASELINES, SCALE_REWARDS, STD_OF, dense_group_advantages

if TYPE_CHECKING:  # annotations only: any object with token_rewards and rewards is accepted at run time
    from scar.credit.rewards import DenseRewards

TRL_TESTED_RANGE = (">=1.16", "<1.17")
_TRL_MIN = (1, 16)
_TRL_BELOW = (1, 17)


def _check_trl_version() -> str:
    """Return the installed TRL version; ImportError without TRL, a warning outside the tested range."""
    try:
        version = metadata.version("trl")
    except metadata.PackageNotFoundError:
        raise ImportError(
            "scar.integrations.trl needs TRL: pip install 'scar-rlhf[trl]' (tested with trl>=1.16,<1.17)"
        ) from None
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = None
    if major_minor is None or not (_TRL_MIN <= major_minor < _TRL_BELOW):
        warnings.warn(
            f"scar.integrations.trl is tested with trl{','.join(TRL_TESTED_RANGE)} but trl {version} is installed; "
            "DenseGRPOTrainer overrides private GRPOTrainer methods that may have changed",
            UserWarning,
            stacklevel=3,
        )
    return version


TRL_VERSION = _check_trl_version()

from trl import GRPOConfig, GRPOTrainer  # noqa: E402  (after the version check: a missing TRL fails with our message)

__all__ = [
    "AsyncDenseRewardFunction",
    "CreditFn",
    "DenseRewardFunction",
    "DenseGRPOConfig",
    "DenseGRPOTrainer",
    "FormatFn",
    "credit_metrics",
    "TRL_TESTED_RANGE",
    "TRL_VERSION",
]

EOS_ADVANTAGES = ("sequence", "credit")
"""``DenseGRPOConfig.eos_advantage``: the ending EOS token's advantage, the sequence's or its own credit's."""

CreditFn = Callable[[list[str], list[str], list[list[int]]], "DenseRewards"]
"""A credit provider: ``credit_fn(prompts, completions, completion_ids) -> DenseRewards``."""


@dataclass
class DenseGRPOConfig(GRPOConfig):
    """``GRPOConfig`` with the settings of :class:`DenseGRPOTrainer`'s per-token advantages.

    Args:
        std_of: what the std that scales the advantages is taken of: ``"token"`` (the centred
            returns-to-go, each completion weighing 1; default) or ``"sequence"`` (the sequence returns,
            GRPO's); see :func:`scar.credit.advantages.dense_group_advantages`.
        baseline: ``"position"`` (the group's mean return-to-go at each position; default) or ``"group"``
            (one baseline per group, GRPO's).
        eos_advantage: the advantage of the end-of-sequence token that ends a completion:
            ``"sequence"`` (default): the completion's sequence advantage (GRPO's), so the decision to stop
            is judged by the whole reward; ``"credit"``: its return-to-go advantage like any token, which
            with credit that depends on later tokens (Shapley credit does) pushes every stop down and
            lengthens the completions. See :func:`scar.credit.advantages.dense_group_advantages`
            (``ended``).
        (all other arguments): ``trl.GRPOConfig``'s.
    """

    std_of: str = field(default="token", metadata={"help": "std of the advantages' scale: 'token' or 'sequence'"})
    baseline: str = field(default="position", metadata={"help": "advantage baseline: 'position' or 'group'"})
    eos_advantage: str = field(
        default="sequence", metadata={"help": "advantage of the ending EOS token: 'sequence' or 'credit'"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.std_of, "std_of", STD_OF)
        check_choice(self.baseline, "baseline", BASELINES)
        check_choice(self.eos_advantage, "eos_advantage", EOS_ADVANTAGES)


FormatFn = Callable[[Any, Any], tuple[str, str]]
"""A user formatting function: ``format_fn(prompt, completion) -> (prompt_text, response_text)``."""


class DenseRewardFunction:
    """A TRL reward function backed by a credit provider; keeps the batch's dense rewards.

    ``DenseRewardFunction(credit_fn)`` can be passed to ``GRPOTrainer(reward_funcs=[...])`` or
    ``RLOOTrainer``. Each call runs ``credit_fn(prompts, completions, completion_ids)`` and returns
    ``DenseRewards.rewards`` (the sequence reward ``r`` of each completion) as ``list[float]``. The
    ``DenseRewards`` of that call are kept, with the completion ids they were computed for, until
    :meth:`take` fetches them (``DenseGRPOTrainer`` does so once per batch).

    Prompts and completions reach the credit provider as text:

    * text datasets: as TRL passes them;
    * conversational datasets (chat-message lists): the prompt through the reward tokenizer's chat template,
      ``tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)`` (a leading BOS
      that the template writes is dropped when the tokenizer adds it by itself, as it does to every text
      prompt), and the response is the completion's message content (TRL decodes it from the policy's
      ``completion_ids``, so the two match; where TRL parses responses into tool calls or reasoning, the
      content is not the whole completion: use ``format_fn``). What the template writes after the
      assistant's message (end-of-turn) belongs in the credit provider's ``suffix_ids``;
    * any dataset, with ``format_fn(prompt, completion) -> (prompt_text, response_text)``: as it returns.

    After each call the credit statistics of the batch go to TRL's logs through the ``log_metric`` callable
    TRL passes to reward functions, as ``credit/<name>/<statistic>`` (averaged over the logging steps and the
    processes): ``seconds`` (the credit provider's wall time), ``coalitions`` and ``tokens_computed`` (summed
    over the distinct :class:`~scar.scoring.ScorerStats` in the provider's ``last_stats``, when it has
    them), ``stderr_mean`` (the mean standard error of the players' values, when the estimator gives one).
    They are also kept in :attr:`last_metrics`.

    Args:
        credit_fn: the credit provider. ``token_rewards[i]`` must have one entry per token of
            ``completion_ids[i]`` (the policy's tokens, EOS included when TRL includes it).
        name: the name TRL logs the reward under (``rewards/<name>/mean``); default the credit
            provider's ``__name__`` or class name.
        tokenizer: the reward model's tokenizer, whose chat template formats conversational prompts;
            default the credit provider's ``tokenizer`` attribute (``SCAR`` and ``CreditPool`` have one).
        format_fn: turns each ``(prompt, completion)`` into ``(prompt_text, response_text)``; when given it
            is used for every pair, text or conversational.
        chat_template_kwargs: extra keyword arguments of ``apply_chat_template`` (e.g. ``enable_thinking``).
        log_metrics: send the credit statistics through ``log_metric`` when TRL passes it.

    Attributes:
        last_metrics: the credit statistics of the last call (a dict of floats).
    """

    def __init__(
        self,
        credit_fn: CreditFn,
        name: str | None = None,
        *,
        tokenizer: Any | None = None,
        format_fn: FormatFn | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        log_metrics: bool = True,
    ) -> None:
        if not callable(credit_fn):
            raise TypeError(f"credit_fn must be callable, got {type(credit_fn).__name__}")
        if name is None:
            name = getattr(credit_fn, "__name__", None) or type(credit_fn).__name__
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if format_fn is not None and not callable(format_fn):
            raise TypeError(f"format_fn must be callable or None, got {type(format_fn).__name__}")
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise TypeError(f"chat_template_kwargs must be a dict or None, got {type(chat_template_kwargs).__name__}")
        if not isinstance(log_metrics, bool):
            raise TypeError(f"log_metrics must be a bool, got {type(log_metrics).__name__}")
        self.credit_fn = credit_fn
        self.__name__ = name  # TRL names the reward after the callable's __name__
        self.tokenizer = tokenizer
        self.format_fn = format_fn
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.log_metrics = log_metrics
        self.last_metrics: dict[str, float] = {}
        self._last_ids: tuple[tuple[int, ...], ...] | None = None
        self._last_dense: DenseRewards | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__name__!r})"

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float]:
        """Score a batch: returns the sequence rewards; the dense rewards are kept for :meth:`take`.

        ``kwargs`` (TRL passes the dataset's extra columns, ``trainer_state``, ``log_extra``,
        ``log_metric``) are not forwarded to the credit provider; ``log_metric`` receives the credit
        statistics.
        """
        texts, responses, ids = self._prepare(prompts, completions, completion_ids)
        began = time.perf_counter()
        dense = self.credit_fn(texts, responses, [list(row) for row in ids])
        return self._finish(dense, ids, time.perf_counter() - began, kwargs.get("log_metric"))

    def _prepare(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]]
    ) -> tuple[list[str], list[str], tuple[tuple[int, ...], ...]]:
        """The batch as (prompt texts, response texts, completion ids), checked."""
        if not (len(prompts) == len(completions) == len(completion_ids)):
            raise ValueError(
                f"batch sizes differ: {len(prompts)} prompts, {len(completions)} completions, "
                f"{len(completion_ids)} completion_ids"
            )
        texts, responses = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            prompt_text, response_text = self._as_text(i, prompt, completion)
            texts.append(prompt_text)
            responses.append(response_text)
        ids = tuple(tuple(int(t) for t in row) for row in completion_ids)
        return texts, responses, ids

    def _as_text(self, i: int, prompt: Any, completion: Any) -> tuple[str, str]:
        """``(prompt_text, response_text)`` of pair ``i`` (see the class docstring)."""
        if self.format_fn is not None:
            out = self.format_fn(prompt, completion)
            if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(x, str) for x in out)):
                raise TypeError(
                    f"format_fn must return (prompt_text, response_text) as two str, got {out!r:.80} for pair {i}"
                )
            return out
        if isinstance(prompt, str) and isinstance(completion, str):
            return prompt, completion
        if _is_messages(prompt) and _is_messages(completion):
            return self._chat_prompt(prompt), _completion_text(i, completion)
        raise TypeError(
            f"DenseRewardFunction needs each prompt and completion as text, or both as chat-message lists; pair {i} "
            f"has a {type(prompt).__name__} prompt and a {type(completion).__name__} completion (pass format_fn="
            "lambda prompt, completion: (prompt_text, response_text) for other forms)"
        )

    def _chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(self.credit_fn, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TypeError(
                f"reward function {self.__name__!r} got conversational prompts but "
                + ("has no reward tokenizer" if tokenizer is None else "the reward tokenizer has no chat template")
                + ": pass DenseRewardFunction(..., tokenizer=<a tokenizer with a chat template>) or format_fn=..."
            )
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos) :]  # the prompt is encoded with the tokenizer's special tokens: one BOS
        return text

    def _finish(self, dense: Any, ids: tuple[tuple[int, ...], ...], seconds: float, log_metric: Any) -> list[float]:
        """Check and keep the dense rewards, log the credit statistics, return the sequence rewards."""
        _check_dense(dense, ids, self.__name__)
        self._last_ids, self._last_dense = ids, dense
        self.last_metrics = credit_metrics(self.credit_fn, dense, seconds)
        if self.log_metrics and callable(log_metric):
            for key, value in self.last_metrics.items():
                log_metric(f"credit/{self.__name__}/{key}", value)
        return [float(r) for r in dense.rewards.tolist()]

    def take(self, completion_ids: Sequence[Sequence[int]]) -> DenseRewards:
        """Fetch (and forget) the dense rewards of the last call, checking they are for these completions.

        Raises:
            RuntimeError: nothing is kept (never called, or already taken), or the kept dense rewards
                were computed for other completions (a different batch or order).
        """
        if self._last_dense is None:
            raise RuntimeError(
                f"reward function {self.__name__!r} holds no dense rewards: it was not called for this batch, "
                "or they were already taken"
            )
        ids = tuple(tuple(int(t) for t in row) for row in completion_ids)
        if ids != self._last_ids:
            raise RuntimeError(
                f"reward function {self.__name__!r} holds dense rewards for other completions than the ones asked "
                "for (a different batch, or the same batch in another order)"
            )
        dense = self._last_dense
        self._last_ids, self._last_dense = None, None
        return dense


class AsyncDenseRewardFunction(DenseRewardFunction):
    """:class:`DenseRewardFunction` as an async reward function: the credit runs off TRL's event loop.

    TRL awaits its async reward functions together on one event loop, so the credit overlaps the other
    async reward functions (an LLM judge, a sandbox, ...). A credit provider with an ``acall`` coroutine
    method (:class:`scar.distributed.CreditPool`) is awaited directly; any other runs in a one-thread
    executor owned by this function (so calls of one provider never overlap each other). Everything else
    -- text conversion, checks, :meth:`take`, the logged statistics -- is :class:`DenseRewardFunction`'s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._executor: ThreadPoolExecutor | None = None

    async def __call__(  # type: ignore[override]
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float]:
        """Score a batch (awaitable): the sequence rewards; the dense rewards are kept for :meth:`take`."""
        texts, responses, ids = self._prepare(prompts, completions, completion_ids)
        rows = [list(row) for row in ids]
        began = time.perf_counter()
        acall = getattr(self.credit_fn, "acall", None)
        if acall is not None and inspect.iscoroutinefunction(acall):
            dense = await acall(texts, responses, rows)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"credit-{self.__name__}")
            loop = asyncio.get_running_loop()
            dense = await loop.run_in_executor(self._executor, self.credit_fn, texts, responses, rows)
        return self._finish(dense, ids, time.perf_counter() - began, kwargs.get("log_metric"))

    def close(self) -> None:
        """Shut down the executor (a later call starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_executor"] = None  # an executor cannot be pickled; a copy starts its own
        return state


def _is_messages(x: Any) -> bool:
    """A chat-message list: a list of dicts with a ``role``."""
    return isinstance(x, list) and bool(x) and all(isinstance(m, dict) and "role" in m for m in x)


def _completion_text(i: int, messages: list[dict[str, Any]]) -> str:
    """The text of a conversational completion: its one message's content (text blocks joined)."""
    content = messages[0].get("content") if len(messages) == 1 else None
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        content = "".join(str(b.get("text", "")) for b in content)
    if not isinstance(content, str):
        raise TypeError(
            f"completion {i}: a conversational completion must be one message with text content, got "
            f"{len(messages)} message(s) (pass format_fn=... to turn such completions into text)"
        )
    return content


def _adds_bos(tokenizer: Any) -> bool:
    """Whether encoding text with special tokens puts the BOS token in front by itself."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


def credit_metrics(credit_fn: Any, dense: Any, seconds: float) -> dict[str, float]:
    """Statistics of one credit call: ``seconds``; ``coalitions`` and ``tokens_computed`` from the
    provider's ``last_stats`` (each distinct stats object counted once); ``stderr_mean`` over the players'
    standard errors. A statistic the provider does not give is left out."""
    out = {"seconds": float(seconds)}
    stats = getattr(credit_fn, "last_stats", None)
    if isinstance(stats, list):
        distinct = list({id(s): s for s in stats if s is not None}.values())
        if distinct and all(hasattr(s, "coalitions") and hasattr(s, "tokens_computed") for s in distinct):
            out["coalitions"] = float(sum(s.coalitions for s in distinct))
            out["tokens_computed"] = float(sum(s.tokens_computed for s in distinct))
    errors = [se.double() for se in getattr(dense, "stderr", []) or [] if isinstance(se, torch.Tensor)]
    if errors:
        flat = torch.cat([e.flatten() for e in errors])
        flat = flat[torch.isfinite(flat)]
        if flat.numel():
            out["stderr_mean"] = float(flat.mean())
    return out


def _check_dense(dense: Any, ids: tuple[tuple[int, ...], ...], name: str) -> None:
    """Check a credit provider's output against the completions it was asked about."""
    for attr in ("token_rewards", "rewards"):
        if not hasattr(dense, attr):
            raise TypeError(
                f"credit function of {name!r} must return DenseRewards (with token_rewards and rewards), "
                f"got {type(dense).__name__} without {attr!r}"
            )
    rewards = dense.rewards
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1 or rewards.numel() != len(ids):
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"credit function of {name!r}: rewards must be a [{len(ids)}] tensor, got {shape}")
    if len(dense.token_rewards) != len(ids):
        raise ValueError(
            f"credit function of {name!r} returned token rewards for {len(dense.token_rewards)} completions, "
            f"expected {len(ids)}"
        )
    for i, (tok, row) in enumerate(zip(dense.token_rewards, ids)):
        if not isinstance(tok, torch.Tensor) or tok.dim() != 1 or tok.numel() != len(row):
            shape = tuple(tok.shape) if isinstance(tok, torch.Tensor) else type(tok).__name__
            raise ValueError(
                f"credit function of {name!r}: token_rewards[{i}] must have one reward per completion token "
                f"({len(row)}), got shape {shape}"
            )


@dataclass
class _PendingDense:
    """What ``_calculate_rewards`` saw, kept until ``_generate_and_score_completions`` builds advantages."""

    completion_ids: list[list[int]]
    rewards_per_func: torch.Tensor  # [N_all, K], gathered over processes, as TRL returns it
    dense: dict[int, Any]  # reward function index -> DenseRewards of this process's completions


class DenseGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with per-token ``(B, T)`` advantages from dense credit.

    Pass at least one :class:`DenseRewardFunction` in ``reward_funcs``; any other reward functions are
    sequence rewards placed on the last token. The advantages are :func:`dense_group_advantages` of the
    weighted per-token rewards (``GRPOConfig.reward_weights``) with ``GRPOConfig.scale_rewards``; see the
    module docstring for the formula and why it equals GRPO when the credit is sparse. Everything else
    (generation, KL to the reference model, clipping, loss types) is TRL's. Needs
    ``multi_objective_aggregation="sum_then_normalize"`` (the default): normalising each reward function
    separately has no per-token meaning.

    Args:
        *args, **kwargs: ``GRPOTrainer``'s arguments; ``args`` must be a :class:`DenseGRPOConfig` (its
            ``std_of`` and ``baseline`` choose the advantages).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DenseGRPOConfig):
            raise TypeError(f"DenseGRPOTrainer needs args=DenseGRPOConfig(...), got {type(self.args).__name__}")
        if not any(isinstance(f, DenseRewardFunction) for f in self.reward_funcs):
            raise ValueError(
                "DenseGRPOTrainer needs at least one DenseRewardFunction in reward_funcs "
                "(with sequence rewards only, use GRPOTrainer)"
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "DenseGRPOTrainer supports multi_objective_aggregation='sum_then_normalize' only, got "
                f"{self.multi_objective_aggregation!r}"
            )
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        self._pending_dense: _PendingDense | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's reward computation, plus fetching each dense reward function's per-token rewards."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        dense = {
            k: f.take(completion_ids_list)
            for k, f in enumerate(self.reward_funcs)
            if isinstance(f, DenseRewardFunction)
        }
        self._pending_dense = _PendingDense([list(c) for c in completion_ids_list], rewards_per_func, dense)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's generation and scoring, with ``output["advantages"]`` replaced by the ``(B, T)`` ones."""
        output = super()._generate_and_score_completions(inputs)
        pending, self._pending_dense = self._pending_dense, None
        if pending is None:
            raise RuntimeError("DenseGRPOTrainer: no rewards were computed for this batch (_calculate_rewards not run)")
        output["advantages"] = self._dense_advantages(output, pending)
        return output

    def _dense_advantages(self, output: dict[str, Any], pending: _PendingDense) -> torch.Tensor:
        """Build this process's ``(B, T)`` advantages, aligned with ``output["completion_ids"]``."""
        completion_ids = output["completion_ids"]
        device = completion_ids.device
        local_b, length = completion_ids.shape
        if len(pending.completion_ids) != local_b:
            raise RuntimeError(f"{len(pending.completion_ids)} scored completions but {local_b} rows in the batch")
        lengths = torch.tensor([len(c) for c in pending.completion_ids], dtype=torch.long, device=device)
        for i, ids in enumerate(pending.completion_ids):
            # the rewards were computed on the unpadded ids; the loss sees the right-padded rows
            if len(ids) > length or completion_ids[i, : len(ids)].tolist() != ids:
                raise RuntimeError(f"completion {i}: padded completion_ids do not start with the scored tokens")

        weights = self.reward_weights.to(device=device, dtype=torch.float64)
        token_rewards = torch.zeros(local_b, length, dtype=torch.float64, device=device)
        for k, dense in pending.dense.items():
            for i, tok in enumerate(dense.token_rewards):
                token_rewards[i, : tok.numel()] += weights[k] * tok.to(device=device, dtype=torch.float64)
        # the sequence-level reward functions reward the last token, like GRPO's sequence reward
        process_slice = slice(self.accelerator.process_index * local_b, (self.accelerator.process_index + 1) * local_b)
        sparse_ks = [k for k in range(len(self.reward_funcs)) if k not in pending.dense]
        if sparse_ks:
            local = pending.rewards_per_func[process_slice][:, sparse_ks].to(device=device, dtype=torch.float64)
            sparse = (torch.nan_to_num(local, nan=0.0) * weights[sparse_ks]).sum(dim=1)
            rows = torch.arange(local_b, device=device)
            has_tokens = lengths > 0
            token_rewards[rows[has_tokens], lengths[has_tokens] - 1] += sparse[has_tokens]

        # group statistics need every process's completions: pad to a common T and gather
        all_rewards = self.accelerator.gather(self.accelerator.pad_across_processes(token_rewards, dim=1))
        all_lengths = self.accelerator.gather(lengths)
        # completions that the policy ended (TRL keeps the EOS token as their last id; a cut one has none)
        eos_ids = torch.tensor(self.eos_token_ids, dtype=completion_ids.dtype, device=device)
        last = completion_ids[torch.arange(local_b, device=device), (lengths - 1).clamp(min=0)]
        all_ended = self.accelerator.gather((lengths > 0) & torch.isin(last, eos_ids))
        training = self.model is not None and self.model.training
        num_generations = int(self.num_generations if training else self.num_generations_eval)  # type: ignore[arg-type]
        args = cast(DenseGRPOConfig, self.args)
        all_advantages = dense_group_advantages(
            all_rewards,
            all_lengths,
            num_generations,
            self.scale_rewards,
            args.std_of,
            args.baseline,
            ended=all_ended if args.eos_advantage == "sequence" else None,
        )

        # TRL logged the sequence advantages of r; log the advantage of each completion's first token instead
        n_all = all_advantages.shape[0]
        logged: Any = self._logs["advantages"]
        for _ in range(min(n_all, len(logged))):
            logged.pop()
        logged.extend(all_advantages[:, 0].tolist() if all_advantages.shape[1] else [0.0] * n_all)

        return all_advantages[process_slice, :length].contiguous()
