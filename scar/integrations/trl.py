"""TRL drop-in for dense credit: a reward function and a GRPO trainer with per-token advantages.

Two pieces (DESIGN.md section 7):

* :class:`DenseRewardFunction` wraps a *credit provider* -- any callable
  ``credit_fn(prompts, completions, completion_ids) -> DenseRewards`` (``scar.SCAR(...)``, the ABC
  baseline, ...) -- as an ordinary TRL reward function. Used in ``GRPOTrainer`` or ``RLOOTrainer`` it
  returns the sequence reward ``r`` of each completion (plain GRPO / RLOO training on ``r``) and keeps the
  batch's :class:`~scar.rewards.DenseRewards` so that a trainer can fetch them for the same completions.
* :class:`DenseGRPOTrainer` is a ``GRPOTrainer`` whose advantages are per token, ``(B, T)``, built from
  the dense rewards. Only the advantages change: the KL term, clipping, loss types and loss
  normalisation of TRL are untouched (GRPO's loss accepts ``(B, T)`` advantages from a subclass).

The per-token advantage (:func:`dense_group_advantages`). For completion ``i`` of a group ``g`` (the
``num_generations`` completions of one prompt) with per-token rewards ``R_{i,1..T_i}``:

    G_{i,t} = sum_{s >= t} R_{i,s}                       (return-to-go, undiscounted)
    A_{i,t} = (G_{i,t} - b_{g,t}) / (s + 1e-4)            (A = 0 on padding)

The baseline ``b``:

* ``baseline="position"`` (the default): ``b_{g,t} = mean_{j in g} H_{j,t}``, the group's mean
  return-to-go at position ``t``, where ``H_{j,t} = G_{j,t}`` for ``t <= T_j`` and, for a completion that
  has already ended (``t > T_j``), ``H_{j,t} = G_{j,T_j}``, the return-to-go of its last token (0 for a
  completion without tokens). With sparse credit ``G_{j,t} = r_j`` at every ``t <= T_j``, so ``H_{j,t} =
  r_j`` at every position and ``b_{g,t}`` is GRPO's group mean, for equal *and* unequal lengths. With dense
  credit and unequal lengths, the baseline at a position past some completions' ends mixes the running
  completions' returns-to-go with the ended ones' last-token rewards (usually small): the last tokens of
  a short completion are compared with the reward the longer ones still had to come.
* ``baseline="group"``: ``b_{g,t} = mean_{j in g} G_{j,1}``, one baseline for all positions (GRPO's
  group mean of the sequence returns). The first token keeps the advantage of the whole return and each
  later token's drops the credit earned before it, ``A_{i,t} = A_{i,1} - (sum_{s<t} R_{i,s}) / (s + 1e-4)``,
  so late tokens drift towards ``-mean(r) / s`` whenever the rewards do not average 0.

At the first position both baselines are the group mean of the sequence returns.

The divisor follows ``GRPOConfig.scale_rewards``: ``"group"`` pools the group ``g``, ``"batch"`` the whole
batch (centred on the batch's own means, as TRL does), ``"none"`` divides by nothing (``A = G - b``). ``s``
is, with ``std_of="token"`` (the default), the std of the centred returns-to-go over the pool with each
completion weighing 1, ``s^2 = sum_j mean_{t<=T_j} (G_{j,t} - c_t)^2 / (n - 1)`` (``c_t`` the pool's
baseline at ``t``, ``n`` its size); with ``std_of="sequence"`` (GRPO's), the Bessel-corrected std of the
sequence returns ``G_{j,1}`` over the pool. Where ``s`` is zero the advantages are 0.

Why ``std_of="token"`` is the default: the sequence std measures only how the *totals* differ within
the group, while the credit in ``G_{i,t} - b_{g,t}`` is as large as the credit itself. When the group's
totals are nearly equal but the credit is not (e.g. ``v(∅)`` far from ``r``), ``std_of="sequence"``
divides the credit by a tiny number and the advantages grow without bound (a test group whose totals
agree within 1e-6 gets advantages above 1e4; a group with exactly equal totals is set to 0, like GRPO,
rather than divided by ``1e-4``). The token std measures the spread of what is actually used as
advantage: with ``scale_rewards="group"`` the squared advantages, averaged over each completion's tokens
and summed over the group, equal ``n - 1`` (Bessel), so no advantage exceeds ``sqrt((n - 1) * T_max)``.

Why it reduces to GRPO for sparse credit: if all reward is on the last token, ``R_{i,t} = r_i 1[t==T_i]``,
then ``G_{i,t} = r_i`` for every ``t <= T_i``; both baselines become the group mean of ``r`` and both
choices of ``s`` the std of ``r`` over the pool, so ``A_{i,t} = (r_i - mean_g r) / (std r + 1e-4)`` on
every token -- GRPO's sequence advantage broadcast over the completion, which is what GRPO's loss does
with its ``(B,)`` advantages (and where GRPO's std is zero its advantages are zero too).

Which baseline, measured (``simulate_advantages`` in ``tests/test_trl.py``; 4000 groups of 8
completions, per-token rewards ``R_t = 0.3 + e_t`` with ``e_t ~ N(0, 0.5/sqrt(10))``, i.e. ``r ~ N(3, 0.5)``
over 10 tokens; ``e_t`` is the true centred credit of token ``t``; ``scale_rewards="group"``). ``corr`` is
the correlation of ``A_{i,t}`` with ``e_{i,t}`` over all tokens, ``last`` and ``mean`` the average
advantage of the last token and of all tokens (ideally 0)::

    lengths  std_of    baseline   corr    last    mean
    10       token     position   0.404  -0.00   +0.00
    10       token     group      0.157  -1.54   -0.77
    10       sequence  position   0.390  +0.00   +0.00
    10       sequence  group      0.122  -6.06   -3.03
    5..15    token     position   0.161  -0.52   +0.11
    5..15    token     group      0.127  -1.47   -0.66
    5..15    sequence  position   0.153  -0.47   +0.10
    5..15    sequence  group      0.111  -2.73   -1.26

The per-position baseline removes the late-token drift and follows the per-token credit 2.6x better
with equal lengths (1.3x with varied lengths, where the return still to come also depends on how long
each completion runs); hence the default. The group baseline drifts whenever the per-token rewards do
not average 0 (here 0.3; SCAR's credit sums to ``alpha * (r - v(∅)) + (1 - alpha) * r``).

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
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # annotations only: any object with token_rewards and rewards is accepted at run time
    from scar.rewards import DenseRewards

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

from trl import GRPOTrainer  # noqa: E402  (after the version check, so a missing TRL fails with our message)

__all__ = [
    "CreditFn",
    "DenseRewardFunction",
    "DenseGRPOTrainer",
    "dense_group_advantages",
    "TRL_TESTED_RANGE",
    "TRL_VERSION",
]

CreditFn = Callable[[list[str], list[str], list[list[int]]], "DenseRewards"]
"""A credit provider: ``credit_fn(prompts, completions, completion_ids) -> DenseRewards``."""

SCALE_REWARDS = ("group", "batch", "none")
STD_OF = ("token", "sequence")
BASELINES = ("position", "group")


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


def dense_group_advantages(
    token_rewards: torch.Tensor,
    lengths: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    std_of: str = "token",
    baseline: str = "position",
) -> torch.Tensor:
    """Per-token GRPO advantages from per-token rewards (formula in the module docstring).

    Args:
        token_rewards: ``[N, T]`` right-padded per-token rewards of all completions, grouped: rows
            ``g*num_generations .. (g+1)*num_generations - 1`` are the completions of prompt ``g``.
            Values past ``lengths`` are ignored. A row with a NaN reward is unscorable: it is left out
            of the means and stds, and its advantages are 0 (as TRL does for NaN rewards).
        lengths: ``[N]`` number of completion tokens of each row (``<= T``).
        num_generations: completions per prompt (the group size).
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (``GRPOConfig.scale_rewards``): the pool
            whose std divides the advantages, or no division.
        std_of: ``"token"`` (default): the std of the centred returns-to-go over the pool, each
            completion weighing 1 (each of its tokens ``1/T_i``); ``"sequence"``: the std of the
            sequence returns over the pool (GRPO's; unbounded when the totals are nearly equal).
        baseline: ``"position"`` (default): ``b_t`` = the group's mean return-to-go at position ``t``
            (a completion that has ended counts with the return-to-go of its last token); ``"group"``:
            one baseline per group, the mean sequence return.

    Returns:
        float32 ``[N, T]`` advantages, zero on padding and wherever the dividing std is zero.
    """
    if token_rewards.dim() != 2:
        raise ValueError(f"token_rewards must be [N, T], got shape {tuple(token_rewards.shape)}")
    n, length = token_rewards.shape
    lengths = torch.as_tensor(lengths, device=token_rewards.device)
    if lengths.shape != (n,):
        raise ValueError(f"lengths must be [{n}], got shape {tuple(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > length).any()):
        raise ValueError(f"lengths must be in [0, {length}]")
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
    if n % num_generations:
        raise ValueError(f"{n} completions do not split into groups of num_generations={num_generations}")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if std_of not in STD_OF:
        raise ValueError(f"std_of must be one of {STD_OF}, got {std_of!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")

    device = token_rewards.device
    valid = torch.arange(length, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = token_rewards.to(torch.float64).masked_fill(~valid, 0.0)
    unscorable = torch.isnan(rewards).any(dim=1)
    # returns-to-go: reversed cumulative sum along the completion (padding holds 0, so it adds nothing)
    returns = rewards.flip(1).cumsum(1).flip(1)
    returns[unscorable] = torch.nan
    seq_returns = returns[:, 0] if length else torch.zeros(n, dtype=torch.float64, device=device)
    seq_returns = seq_returns.masked_fill(unscorable, torch.nan)

    if baseline == "position":
        # past its end a completion keeps the return-to-go of its last token (0 for an empty one): with
        # sparse credit that is its r at every position, so the baseline is GRPO's for any lengths
        rows = torch.arange(n, device=device)
        last = returns[rows, (lengths - 1).clamp(min=0)] if length else seq_returns
        last = torch.where(lengths > 0, last, seq_returns)
        held = torch.where(valid, returns, last.unsqueeze(1))
    else:
        held = seq_returns.unsqueeze(1).expand(n, length)  # the group baseline is the same at every position
    # [N, T] per-position centre of each row's group (group baseline: the mean sequence return everywhere)
    centre = torch.nanmean(held.reshape(-1, num_generations, length), dim=1).repeat_interleave(num_generations, 0)
    seq_centre = torch.nanmean(seq_returns.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    advantages = returns - centre
    if scale_rewards != "none":
        # TRL centres the group std on the group mean and the batch std on the batch mean; so do we
        if scale_rewards == "group":
            pool_centre, pool_seq_centre, pool_size = centre, seq_centre, num_generations
        else:
            pool_centre = torch.nanmean(held, dim=0, keepdim=True).expand(n, length)
            pool_seq_centre, pool_size = torch.nanmean(seq_returns).expand(n), n
        if std_of == "sequence":
            sq_dev = (seq_returns - pool_seq_centre) ** 2
        else:
            dev = (returns - pool_centre).masked_fill(~valid, 0.0)
            sq_dev = torch.where(
                lengths > 0, dev.pow(2).sum(1) / lengths.clamp(min=1), (seq_returns - pool_seq_centre) ** 2
            )
        pooled = sq_dev.view(-1, pool_size)
        count = (~torch.isnan(pooled)).sum(dim=1, keepdim=True)
        # Bessel-corrected like TRL's nanstd; undefined (NaN, hence advantage 0) for a pool of one
        var = torch.nansum(pooled, dim=1, keepdim=True) / (count - 1).clamp(min=1)
        std = torch.where(count > 1, var.sqrt(), torch.nan).expand_as(pooled).reshape(n)
        advantages = advantages / (std.unsqueeze(1) + 1e-4)
        # no spread, no scale: GRPO's advantage is 0 there, and dividing by 1e-4 would blow up the credit
        advantages = advantages.masked_fill(torch.isclose(std, torch.zeros_like(std)).unsqueeze(1), 0.0)
    advantages = advantages.masked_fill(~valid, 0.0)
    return torch.nan_to_num(advantages, nan=0.0).to(torch.float32)


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
        *args, **kwargs: ``GRPOTrainer``'s arguments.
        std_of: what the std that scales the advantages is taken of: ``"token"`` (the centred
            returns-to-go; default) or ``"sequence"`` (the sequence returns, GRPO's); see
            :func:`dense_group_advantages`.
        baseline: ``"position"`` (a per-position group baseline; default) or ``"group"`` (one baseline
            per group, GRPO's); see :func:`dense_group_advantages`.
    """

    def __init__(self, *args: Any, std_of: str = "token", baseline: str = "position", **kwargs: Any) -> None:
        if std_of not in STD_OF:
            raise ValueError(f"std_of must be one of {STD_OF}, got {std_of!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.std_of = std_of
        self.baseline = baseline
        super().__init__(*args, **kwargs)
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
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        all_advantages = dense_group_advantages(
            all_rewards, all_lengths, num_generations, self.scale_rewards, self.std_of, self.baseline
        )

        # TRL logged the sequence advantages of r; log the advantage of each completion's first token instead
        n_all = all_advantages.shape[0]
        logged = self._logs["advantages"]
        for _ in range(min(n_all, len(logged))):
            logged.pop()
        logged.extend(all_advantages[:, 0].tolist() if all_advantages.shape[1] else [0.0] * n_all)

        return all_advantages[process_slice, :length].contiguous()
