"""Dense per-token rewards: the data type every credit method returns, and the maths that builds it.

From per-player credit to per-token rewards, for response tokens ``t = 1..T``::

    R_t = alpha * phi_t + (1 - alpha) * 1[t == T] * r

where ``phi_t`` is the credit of the players placed on token ``t`` (``placement="last"``: all of a
player's credit on its last token; ``placement="spread"``: split evenly over its tokens). The KL part of
the reward is added by the trainer, not here. For exact Shapley values ``sum(phi) == r - v(∅)``, so
``sum_t R_t == alpha * (r - v(∅)) + (1 - alpha) * r``.

Rewards are computed on the reward model's tokenization; :func:`scar.game.tokens.map_to_tokens` moves them
onto the policy's tokenization through character offsets into the response text. ``T`` is the *last
completion token of the policy*: when the policy's completion ends in EOS (as TRL's completions do when the
policy stopped), EOS holds no text, so :class:`scar.SCAR` maps the credit ``alpha * phi_t``
(:func:`place_credit`) through the offsets and adds the sequence part ``(1 - alpha) * r`` to that final
token, the EOS.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scar._checks import as_int, as_real, check_choice, check_unit_interval
from scar.game.players import Player, as_ranges
from scar.shapley import ShapleyResult

__all__ = ["DenseRewards", "shape_rewards", "place_credit", "sparse_rewards", "PLACEMENTS"]

PLACEMENTS = ("last", "spread")


@dataclass
class DenseRewards:
    """Dense rewards for a batch of responses.

    Attributes:
        token_rewards: per response, float32 ``[T_i]``: the dense reward of each completion token, indexed
            by the *policy's* completion tokens (so :meth:`to_tensor` lines up with ``completion_ids``).
        rewards: ``[B]`` float64: the sequence reward ``r = v(N)``.
        base_values: ``[B]`` float64: ``v(∅)``; NaN where not defined (sparse, ABC).
        values: per response, float64 ``[n_i]``: the credit of each player (Shapley phi, ABC weight*r, ...).
        stderr: per response ``[n_i]`` float64 standard errors of ``values``, or None.
        players: per response, the players (:class:`scar.game.players.Player`) the values belong to.
        method: ``"scar"``, ``"abc"`` or ``"sparse"`` (free text for other credit methods).
        estimates: per response, the :class:`~scar.shapley.ShapleyResult` its ``values`` come from (what
            was spent: ``budget``, ``n_evals``, ``rounds``; what was achieved: ``stderr``, ``tol_met``), or
            None (an empty response); None for credit methods without one.

    Tensors are coerced to the documented dtypes on construction; inconsistent batch sizes raise
    ``ValueError``.
    """

    token_rewards: list[torch.Tensor]
    rewards: torch.Tensor
    base_values: torch.Tensor
    values: list[torch.Tensor]
    stderr: list[torch.Tensor | None]
    players: list[list[Player]]
    method: str
    estimates: list[ShapleyResult | None] | None = None

    def __post_init__(self) -> None:
        for name in ("token_rewards", "values", "stderr", "players"):
            setattr(self, name, _as_list(getattr(self, name), name, "one entry per response"))
        self.token_rewards = [_as_1d(t, torch.float32, f"token_rewards[{i}]") for i, t in enumerate(self.token_rewards)]
        self.values = [_as_1d(v, torch.float64, f"values[{i}]") for i, v in enumerate(self.values)]
        self.stderr = [
            None if s is None else _as_1d(s, torch.float64, f"stderr[{i}]") for i, s in enumerate(self.stderr)
        ]
        self.rewards = _as_1d(self.rewards, torch.float64, "rewards")
        self.base_values = _as_1d(self.base_values, torch.float64, "base_values")
        self.players = [_as_list(p, f"players[{i}]", "the players of one response") for i, p in enumerate(self.players)]
        b = len(self.token_rewards)
        for name in ("rewards", "base_values", "values", "stderr", "players"):
            if len(getattr(self, name)) != b:
                raise ValueError(
                    f"DenseRewards: {name} has {len(getattr(self, name))} entries but token_rewards has {b}"
                )
        if self.estimates is not None:
            self.estimates = _as_list(self.estimates, "estimates", "one entry per response")
            if len(self.estimates) != b:
                raise ValueError(f"DenseRewards: estimates has {len(self.estimates)} entries but token_rewards has {b}")
            for i, est in enumerate(self.estimates):
                if est is not None and not isinstance(est, ShapleyResult):
                    raise TypeError(
                        f"DenseRewards: estimates[{i}] must be a ShapleyResult or None, got {type(est).__name__}"
                    )
        for i in range(b):
            n = len(self.players[i])
            if self.values[i].numel() != n:
                raise ValueError(f"DenseRewards: response {i} has {n} players but {self.values[i].numel()} values")
            se = self.stderr[i]
            if se is not None and se.numel() != n:
                raise ValueError(f"DenseRewards: response {i} has {n} players but {se.numel()} stderrs")

    def __len__(self) -> int:
        return len(self.token_rewards)

    def to_tensor(self, pad_value: float = 0.0, length: int | None = None) -> torch.Tensor:
        """Stack the per-token rewards into a right-padded float32 ``[B, T]`` tensor.

        Args:
            pad_value: value of the padding positions after each response's last token: a real number
                within float32's range (NaN and infinities are taken as given).
            length: ``T``, an int; default the longest response. Must be at least the longest response:
                cutting a response would drop the reward on its last token, so that raises ``ValueError``.

        Raises:
            TypeError: ``length`` not an int, or ``pad_value`` not a number.
            ValueError: ``length`` shorter than the longest response or negative, or beyond int64;
                ``pad_value`` finite but beyond float32's range.
        """
        pad = as_real(pad_value, "pad_value")
        if math.isfinite(pad) and abs(pad) > torch.finfo(torch.float32).max:
            raise ValueError(f"pad_value={pad} is outside float32's range (the tensor is float32)")
        longest = max((t.numel() for t in self.token_rewards), default=0)
        if length is None:
            length = longest
        length = as_int(length, "length")
        if length < 0:
            raise ValueError(f"to_tensor: length must be >= 0, got {length}")
        if length < longest:
            raise ValueError(f"to_tensor: length={length} is shorter than the longest response ({longest} tokens)")
        if length >= 2**63:
            raise ValueError(f"to_tensor: length={length} is beyond int64")
        out = torch.full((len(self), length), pad, dtype=torch.float32)
        for i, t in enumerate(self.token_rewards):
            out[i, : t.numel()] = t
        return out


def _as_list(x: Any, name: str, what: str) -> list:
    """``list(x)`` for a sequence; TypeError naming ``name`` for text, mappings and what does not iterate."""
    if isinstance(x, (str, bytes, dict)) or not isinstance(x, Iterable):
        raise TypeError(f"DenseRewards: {name} must be a list ({what}), got {type(x).__name__}")
    try:
        return list(x)
    except TypeError as err:  # e.g. a 0-d tensor
        raise TypeError(f"DenseRewards: {name} must be a list ({what}): {err}") from None


def _as_1d(x: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    t = _as_real_tensor(x, dtype, f"DenseRewards: {name}").detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"DenseRewards: {name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _as_real_tensor(x: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    """``x`` (a tensor, array, number or sequence of numbers) as a ``dtype`` tensor; TypeError naming ``name``
    for strings, ragged or nested sequences, complex or bool tensors and arrays."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numbers (a tensor, array or list), got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
        return x.to(dtype)
    if isinstance(x, np.ndarray) and x.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise TypeError(f"{name} must be numbers (a tensor, array or list): {err}") from None


def _check_reward(r: Any) -> float:
    r = as_real(r, "the sequence reward r")
    if not math.isfinite(r):
        raise ValueError(f"the sequence reward r must be finite, got {r}")
    return r


def _check_n_tokens(n_tokens: Any) -> int:
    try:
        if isinstance(n_tokens, (bool, np.bool_)):
            raise TypeError
        n = operator.index(n_tokens)
    except TypeError:
        n = 0
    if not 1 <= n < 2**63:
        raise ValueError(f"n_tokens must be a positive int (the response's token count), got {n_tokens!r}")
    return n


def sparse_rewards(r: float, n_tokens: int) -> torch.Tensor:
    """The ordinary sparse reward: ``r`` on the last of ``n_tokens`` tokens, zero elsewhere (float64)."""
    r = _check_reward(r)
    out = torch.zeros(_check_n_tokens(n_tokens), dtype=torch.float64)
    out[-1] = r
    return out


def shape_rewards(
    values: torch.Tensor | Sequence[float],
    players: Sequence[Player],
    r: float,
    *,
    alpha: float,
    placement: str = "last",
    n_tokens: int,
) -> torch.Tensor:
    """Turn per-player credit into per-token rewards: ``R_t = alpha*phi_t + (1-alpha)*1[t==T]*r``.

    Args:
        values: ``[n]`` credit of each player (Shapley values).
        players: the ``n`` players (``Player`` objects or ``(start, end)`` pairs); only the half-open token
            range in the response is used.
        r: the sequence reward ``v(N)``.
        alpha: weight of the dense part, in ``[0, 1]`` (1: only credit, 0: the sparse reward).
        placement: ``"last"`` puts a player's credit on its last token, ``"spread"`` splits it evenly
            over its tokens. Both preserve the player's total.
        n_tokens: ``T``, the number of response tokens (reward-model tokenization).

    Returns:
        float64 ``[T]`` rewards; their sum is ``alpha * sum(values) + (1 - alpha) * r``.

    Raises:
        TypeError: ``values``, ``players``, ``r`` or ``alpha`` of the wrong kind (text, bools, complex,
            ragged sequences...).
        ValueError: NaN or infinite ``values`` or ``r``, ``alpha`` outside ``[0, 1]``, an unknown
            placement, a bad ``n_tokens``, a player outside the response, or values so large that a
            token's reward overflows.
    """
    alpha = check_unit_interval(alpha, "alpha")
    r = _check_reward(r)
    out = alpha * place_credit(values, players, placement=placement, n_tokens=n_tokens)
    out[-1] += (1.0 - alpha) * r
    if not math.isfinite(float(out[-1])):
        raise ValueError(f"values and r are too large: the reward on the last token overflows ({float(out[-1])})")
    return out


def place_credit(
    values: torch.Tensor | Sequence[float],
    players: Sequence[Player],
    *,
    placement: str = "last",
    n_tokens: int,
) -> torch.Tensor:
    """The per-token credit ``phi_t`` of :func:`shape_rewards`: each player's credit on its tokens.

    Args:
        values, players, placement, n_tokens: as :func:`shape_rewards`.

    Returns:
        float64 ``[T]``; its sum is ``sum(values)``.
    """
    n_tokens = _check_n_tokens(n_tokens)
    check_choice(placement, "placement", PLACEMENTS)
    ranges = as_ranges(players)
    phi = _as_real_tensor(values, torch.float64, "values").detach().cpu()
    if phi.dim() != 1 or phi.numel() != len(ranges):
        raise ValueError(f"values has shape {tuple(phi.shape)} but there are {len(ranges)} players")
    if not bool(torch.isfinite(phi).all()):
        raise ValueError("values contain NaN or infinity")
    credit = torch.zeros(n_tokens, dtype=torch.float64)
    for k, (start, end) in enumerate(ranges):
        if not (0 <= start < end <= n_tokens):
            raise ValueError(f"player {k} covers tokens [{start}, {end}) outside the response's {n_tokens} tokens")
        if placement == "last":
            credit[end - 1] += phi[k]
        else:
            credit[start:end] += phi[k] / (end - start)
    if not bool(torch.isfinite(credit).all()):
        raise ValueError("values are too large: the credit placed on a token overflows float64")
    return credit
