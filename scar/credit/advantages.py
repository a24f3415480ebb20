"""Per-token GRPO advantages from per-token rewards: returns-to-go minus a group baseline, scaled.

For completion ``i`` of a group ``g`` (the
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

The token that ends a completion (``ended``): per-token credit that depends on later tokens, as Shapley
credit does, makes the return-to-go of the end-of-sequence token its own credit only (0 at SCAR's
``alpha=1``, since the suffix is not a player), while the position baseline there holds the reward the
longer completions of the group still had to come. Every ending token is then pushed down and the policy
learns to continue, whatever the sequence reward says about length. Stopping changes the credit of every
earlier token, so the unbiased signal for it is the sequence's: with ``ended`` given, the last token of each
ended row gets the row's sequence advantage ``(G_{i,1} - mean_{j in g} G_{j,1}) / (s + 1e-4)`` (GRPO's
advantage, with the same ``s``); every other token keeps its return-to-go advantage.

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

Why the defaults: ``docs/design.md`` (section "Per-token advantages") gives the derivation and the
simulation behind ``baseline="position"``; ``tests/credit/test_advantages.py`` reruns it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

from scar._checks import check_choice, check_positive_int

__all__ = ["dense_group_advantages", "SCALE_REWARDS", "STD_OF", "BASELINES"]

SCALE_REWARDS = ("group", "batch", "none")
"""``GRPOConfig.scale_rewards``: the pool whose std divides the advantages, or no division."""
STD_OF = ("token", "sequence")
"""What that std is taken of: the centred returns-to-go (each completion weighing 1) or the sequence returns."""
BASELINES = ("position", "group")
"""The baseline: the group's mean return-to-go at each position, or one group mean of the sequence returns."""


def dense_group_advantages(
    token_rewards: torch.Tensor,
    lengths: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    std_of: str = "token",
    baseline: str = "position",
    ended: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token GRPO advantages from per-token rewards (formula in the module docstring).

    Args:
        token_rewards: ``[N, T]`` right-padded per-token rewards of all completions, grouped: rows
            ``g*num_generations .. (g+1)*num_generations - 1`` are the completions of prompt ``g``.
            Values past ``lengths`` are ignored. A row with a NaN reward is unscorable: it is left out
            of the means and stds, and its advantages are 0 (as TRL does for NaN rewards). A float or
            int tensor.
        lengths: ``[N]`` number of completion tokens of each row (``<= T``): an integer tensor or
            sequence.
        num_generations: completions per prompt (the group size).
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (``GRPOConfig.scale_rewards``): the pool
            whose std divides the advantages, or no division.
        std_of: ``"token"`` (default): the std of the centred returns-to-go over the pool, each
            completion weighing 1 (each of its tokens ``1/T_i``); ``"sequence"``: the std of the
            sequence returns over the pool (GRPO's; unbounded when the totals are nearly equal).
        baseline: ``"position"`` (default): ``b_t`` = the group's mean return-to-go at position ``t``
            (a completion that has ended counts with the return-to-go of its last token); ``"group"``:
            one baseline per group, the mean sequence return.
        ended: optional ``[N]`` bool: the rows whose last token (at ``lengths - 1``) ends the completion
            (an end-of-sequence token, not a cut at the length limit). That token gets the row's sequence
            advantage instead of its return-to-go advantage (module docstring). ``None``: no such token.

    Returns:
        float32 ``[N, T]`` advantages, zero on padding and wherever the dividing std is zero (an empty
        tensor when ``N`` or ``T`` is 0).

    Raises:
        TypeError: ``token_rewards`` not a real tensor, ``lengths`` not integers, ``num_generations``
            not an int.
        ValueError: bad shapes or lengths, an unknown option, an infinite reward inside a completion
            (the message names its row and position), or rewards so large that the returns-to-go,
            their spread or the float32 advantages overflow.
    """
    if not isinstance(token_rewards, torch.Tensor):
        raise TypeError(f"token_rewards must be a torch.Tensor [N, T], got {type(token_rewards).__name__}")
    if token_rewards.dtype == torch.bool or token_rewards.is_complex():
        raise TypeError(f"token_rewards must be real (a float or int tensor), got dtype {token_rewards.dtype}")
    if token_rewards.dim() != 2:
        raise ValueError(f"token_rewards must be [N, T], got shape {tuple(token_rewards.shape)}")
    n, length = token_rewards.shape
    lengths = _as_lengths(lengths, n, token_rewards.device)
    if bool((lengths < 0).any()) or bool((lengths > length).any()):
        raise ValueError(f"lengths must be in [0, {length}]")
    num_generations = check_positive_int(num_generations, "num_generations")
    if n % num_generations:
        raise ValueError(f"{n} completions do not split into groups of num_generations={num_generations}")
    check_choice(scale_rewards, "scale_rewards", SCALE_REWARDS)
    check_choice(std_of, "std_of", STD_OF)
    check_choice(baseline, "baseline", BASELINES)
    ended = _as_ended(ended, n, token_rewards.device)
    if length == 0 or n == 0:  # no token or no completion: nothing to centre or scale
        return torch.zeros(n, length, dtype=torch.float32, device=token_rewards.device)

    device = token_rewards.device
    valid = torch.arange(length, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = token_rewards.to(torch.float64).masked_fill(~valid, 0.0)
    infinite = torch.isinf(rewards)
    if bool(infinite.any()):
        i, t = (int(k) for k in torch.nonzero(infinite)[0])
        raise ValueError(
            f"token_rewards[{i}, {t}] is {float(rewards[i, t])}: rewards inside a completion must be finite "
            "(a NaN marks a whole completion as unscorable)"
        )
    unscorable = torch.isnan(rewards).any(dim=1)
    # returns-to-go: reversed cumulative sum along the completion (padding holds 0, so it adds nothing)
    returns = rewards.flip(1).cumsum(1).flip(1)
    _check_no_overflow(returns[~unscorable], "the returns-to-go")
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
    _check_no_overflow(centre, "the group means of the returns-to-go")
    advantages = returns - centre
    seq_advantages = seq_returns - seq_centre
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
        _check_no_overflow(std, "the spread of the returns-to-go")
        advantages = advantages / (std.unsqueeze(1) + 1e-4)
        seq_advantages = seq_advantages / (std + 1e-4)
        # no spread, no scale: GRPO's advantage is 0 there, and dividing by 1e-4 would blow up the credit
        flat = torch.isclose(std, torch.zeros_like(std))
        advantages = advantages.masked_fill(flat.unsqueeze(1), 0.0)
        seq_advantages = seq_advantages.masked_fill(flat, 0.0)
    if ended is not None:
        rows = torch.nonzero(ended & (lengths > 0)).squeeze(1)
        advantages[rows, lengths[rows] - 1] = seq_advantages[rows]
    advantages = advantages.masked_fill(~valid, 0.0)
    out = torch.nan_to_num(advantages, nan=0.0, posinf=torch.inf, neginf=-torch.inf).to(torch.float32)
    _check_no_overflow(out, "the advantages (float32)")
    return out


def _as_lengths(lengths: Any, n: int, device: torch.device) -> torch.Tensor:
    """``lengths`` as an integer tensor ``[n]`` on ``device``: TypeError for non-integers, ValueError for a
    wrong shape or values beyond int64."""
    if isinstance(lengths, (str, bytes)):
        raise TypeError(f"lengths must hold integers (one completion length per row), got {type(lengths).__name__}")
    if isinstance(lengths, (list, tuple)) and not any(isinstance(v, (list, tuple)) for v in lengths):
        values = []
        for v in lengths:
            try:
                if isinstance(v, (bool, np.bool_)):
                    raise TypeError
                values.append(operator.index(v))
            except TypeError:
                raise TypeError(f"lengths must hold integers (one completion length per row), got {v!r}") from None
        if any(not -(2**63) <= v < 2**63 for v in values):
            raise ValueError(f"lengths must be in [0, T]; got a value beyond int64: {max(values, key=abs)}")
        lengths = torch.tensor(values, dtype=torch.int64).reshape(-1)
    elif not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise TypeError(f"lengths must hold integers (one completion length per row): {err}") from None
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise TypeError(f"lengths must hold integers (one completion length per row), got dtype {lengths.dtype}")
    if lengths.shape != (n,):
        raise ValueError(f"lengths must be [{n}], got shape {tuple(lengths.shape)}")
    return lengths.to(device=device, dtype=torch.int64)


def _as_ended(ended: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """``ended`` as a bool tensor ``[n]`` on ``device`` (None stays None): TypeError for non-bool values,
    ValueError for a wrong shape."""
    if ended is None:
        return None
    if not isinstance(ended, torch.Tensor):
        try:
            ended = torch.as_tensor(ended)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise TypeError(f"ended must be a bool tensor (one flag per row): {err}") from None
    ended = ended.to(device)
    if ended.dtype != torch.bool:
        raise TypeError(f"ended must be a bool tensor (one flag per row), got dtype {ended.dtype}")
    if ended.shape != (n,):
        raise ValueError(f"ended must be [{n}], got shape {tuple(ended.shape)}")
    return ended


def _check_no_overflow(values: torch.Tensor, what: str) -> None:
    """ValueError when finite rewards were too large for ``what``: an infinity there would silently turn
    into zero or infinite advantages."""
    if bool(torch.isinf(values).any()):
        raise ValueError(f"token_rewards are too large: {what} overflow")
