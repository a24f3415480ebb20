"""TRL drop-in for dense credit: a reward function and a GRPO trainer with per-token advantages.

Three pieces:

* :class:`DenseRewardFunction` wraps a *credit provider* -- any callable
  ``credit_fn(prompts, completions, completion_ids) -> DenseRewards`` (``scar.SCAR(...)``, the ABC
  baseline, ...) -- as an ordinary TRL reward function. Used in ``GRPOTrainer`` or ``RLOOTrainer`` it
  returns the sequence reward ``r`` of each completion (plain GRPO / RLOO training on ``r``) and keeps the
  batch's :class:`~scar.credit.rewards.DenseRewards` so that a trainer can fetch them for the same
  completions.
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

RLOO: :class:`DenseRewardFunction` works in ``RLOOTrainer`` as a sequence reward. RLOO's loss is built on
the *sequence* log-ratio (one ratio and one advantage per completion), so per-token advantages have no
place there without rewriting its loss; this module does not provide a dense RLOO trainer.

Tested with TRL ``>=1.16,<1.17`` (the range in ``pyproject.toml``'s ``trl`` extra): the trainer overrides
the private methods ``_calculate_rewards`` and ``_generate_and_score_completions`` of ``GRPOTrainer``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
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
    "CreditFn",
    "DenseRewardFunction",
    "DenseGRPOConfig",
    "DenseGRPOTrainer",
    "TRL_TESTED_RANGE",
    "TRL_VERSION",
]

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
        (all other arguments): ``trl.GRPOConfig``'s.
    """

    std_of: str = field(default="token", metadata={"help": "std of the advantages' scale: 'token' or 'sequence'"})
    baseline: str = field(default="position", metadata={"help": "advantage baseline: 'position' or 'group'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.std_of, "std_of", STD_OF)
        check_choice(self.baseline, "baseline", BASELINES)


class DenseRewardFunction:
    """A TRL reward function backed by a credit provider; keeps the batch's dense rewards.

    ``DenseRewardFunction(credit_fn)`` can be passed to ``GRPOTrainer(reward_funcs=[...])`` or
    ``RLOOTrainer``. Each call runs ``credit_fn(prompts, completions, completion_ids)`` and returns
    ``DenseRewards.rewards`` (the sequence reward ``r`` of each completion) as ``list[float]``. The
    ``DenseRewards`` of that call are kept, with the completion ids they were computed for, until
    :meth:`take` fetches them (``DenseGRPOTrainer`` does so once per batch).

    Args:
        credit_fn: the credit provider. ``token_rewards[i]`` must have one entry per token of
            ``completion_ids[i]`` (the policy's tokens, EOS included when TRL includes it).
        name: the name TRL logs the reward under (``rewards/<name>/mean``); default the credit
            provider's ``__name__`` or class name.
    """

    def __init__(self, credit_fn: CreditFn, name: str | None = None) -> None:
        if not callable(credit_fn):
            raise TypeError(f"credit_fn must be callable, got {type(credit_fn).__name__}")
        if name is None:
            name = getattr(credit_fn, "__name__", None) or type(credit_fn).__name__
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self.credit_fn = credit_fn
        self.__name__ = name  # TRL names the reward after the callable's __name__
        self._last_ids: tuple[tuple[int, ...], ...] | None = None
        self._last_dense: DenseRewards | None = None

    def __repr__(self) -> str:
        return f"DenseRewardFunction({self.__name__!r})"

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        **kwargs: Any,
    ) -> list[float]:
        """Score a batch: returns the sequence rewards; the dense rewards are kept for :meth:`take`.

        ``kwargs`` (TRL passes the dataset's extra columns, ``trainer_state``, ``log_extra``,
        ``log_metric``) are accepted and not forwarded to the credit provider.
        """
        for what, items in (("prompts", prompts), ("completions", completions)):
            if not all(isinstance(x, str) for x in items):
                raise TypeError(
                    f"DenseRewardFunction needs {what} as text (list[str]); conversational (chat message) "
                    "datasets are not supported: apply the chat template to the dataset's prompts first"
                )
        if not (len(prompts) == len(completions) == len(completion_ids)):
            raise ValueError(
                f"batch sizes differ: {len(prompts)} prompts, {len(completions)} completions, "
                f"{len(completion_ids)} completion_ids"
            )
        ids = tuple(tuple(int(t) for t in row) for row in completion_ids)
        dense = self.credit_fn(list(prompts), list(completions), [list(row) for row in ids])
        _check_dense(dense, ids, self.__name__)
        self._last_ids, self._last_dense = ids, dense
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
        training = self.model is not None and self.model.training
        num_generations = int(self.num_generations if training else self.num_generations_eval)  # type: ignore[arg-type]
        args = cast(DenseGRPOConfig, self.args)
        all_advantages = dense_group_advantages(
            all_rewards, all_lengths, num_generations, self.scale_rewards, args.std_of, args.baseline
        )

        # TRL logged the sequence advantages of r; log the advantage of each completion's first token instead
        n_all = all_advantages.shape[0]
        logged: Any = self._logs["advantages"]
        for _ in range(min(n_all, len(logged))):
            logged.pop()
        logged.extend(all_advantages[:, 0].tolist() if all_advantages.shape[1] else [0.0] * n_all)

        return all_advantages[process_slice, :length].contiguous()
