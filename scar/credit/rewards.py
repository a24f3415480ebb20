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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from scar._checks import check_unit_interval

if TYPE_CHECKING:  # the players are only needed for the annotation
    from scar.game.players import Player

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

    def __post_init__(self) -> None:
        self.token_rewards = [_as_1d(t, torch.float32, f"token_rewards[{i}]") for i, t in enumerate(self.token_rewards)]
        self.values = [_as_1d(v, torch.float64, f"values[{i}]") for i, v in enumerate(self.values)]
        self.stderr = [
            None if s is None else _as_1d(s, torch.float64, f"stderr[{i}]") for i, s in enumerate(self.stderr)
        ]
        self.rewards = _as_1d(self.rewards, torch.float64, "rewards")
        self.base_values = _as_1d(self.base_values, torch.float64, "base_values")
        self.players = [list(p) for p in self.players]
        b = len(self.token_rewards)
        for name in ("rewards", "base_values", "values", "stderr", "players"):
            if len(getattr(self, name)) != b:
                raise ValueError(
                    f"DenseRewards: {name} has {len(getattr(self, name))} entries but token_rewards has {b}"
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
            pad_value: value of the padding positions after each response's last token.
            length: ``T``; default the longest response. Must be at least the longest response: cutting
                a response would drop the reward on its last token, so that raises ``ValueError``.
        """
        longest = max((t.numel() for t in self.token_rewards), default=0)
        if length is None:
            length = longest
        if length < longest:
            raise ValueError(f"to_tensor: length={length} is shorter than the longest response ({longest} tokens)")
        out = torch.full((len(self), length), float(pad_value), dtype=torch.float32)
        for i, t in enumerate(self.token_rewards):
            out[i, : t.numel()] = t
        return out


def _as_1d(x: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype).detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"DenseRewards: {name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _check_reward(r: float) -> float:
    r = float(r)
    if not math.isfinite(r):
        raise ValueError(f"the sequence reward r must be finite, got {r}")
    return r


def _check_n_tokens(n_tokens: int) -> int:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int (the response's token count), got {n_tokens!r}")
    return n_tokens


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
        players: the ``n`` players; only ``start``/``end`` (half-open token range in the response) are used.
        r: the sequence reward ``v(N)``.
        alpha: weight of the dense part, in ``[0, 1]`` (1: only credit, 0: the sparse reward).
        placement: ``"last"`` puts a player's credit on its last token, ``"spread"`` splits it evenly
            over its tokens. Both preserve the player's total.
        n_tokens: ``T``, the number of response tokens (reward-model tokenization).

    Returns:
        float64 ``[T]`` rewards; their sum is ``alpha * sum(values) + (1 - alpha) * r``.
    """
    alpha = check_unit_interval(alpha, "alpha")
    r = _check_reward(r)
    out = alpha * place_credit(values, players, placement=placement, n_tokens=n_tokens)
    out[-1] += (1.0 - alpha) * r
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
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    phi = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if phi.dim() != 1 or phi.numel() != len(players):
        raise ValueError(f"values has shape {tuple(phi.shape)} but there are {len(players)} players")
    if not bool(torch.isfinite(phi).all()):
        raise ValueError("values contain NaN or infinity")
    credit = torch.zeros(n_tokens, dtype=torch.float64)
    for k, p in enumerate(players):
        start, end = int(p.start), int(p.end)
        if not (0 <= start < end <= n_tokens):
            raise ValueError(f"player {k} covers tokens [{start}, {end}) outside the response's {n_tokens} tokens")
        if placement == "last":
            credit[end - 1] += phi[k]
        else:
            credit[start:end] += phi[k] / (end - start)
    return credit
