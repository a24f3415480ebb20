"""Tests for scar.credit.rewards: DenseRewards, shape_rewards, sparse_rewards, map_to_tokens."""

from __future__ import annotations

import pytest
import torch

from scar.game.players import Player
from scar.credit.rewards import DenseRewards, place_credit, shape_rewards, sparse_rewards


def P(start: int, end: int) -> Player:
    """A player over tokens [start, end) (shape_rewards only reads start/end)."""
    return Player(start, end, 0, 0, "")


def test_sparse_rewards_puts_r_on_last_token():
    out = sparse_rewards(2.5, 4)
    assert out.dtype == torch.float64
    assert out.tolist() == [0.0, 0.0, 0.0, 2.5]


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_sparse_rewards_rejects_bad_length(bad):
    with pytest.raises(ValueError, match="n_tokens"):
        sparse_rewards(1.0, bad)


def test_shape_rewards_last_matches_formula_by_hand():
    players = [P(0, 2), P(2, 3), P(3, 6)]
    phi = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    r, alpha = 2.0, 0.75
    out = shape_rewards(phi, players, r, alpha=alpha, placement="last", n_tokens=6)
    expected = [0.0, 0.75 * 0.5, 0.75 * -0.25, 0.0, 0.0, 0.75 * 1.0 + 0.25 * 2.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("placement", ["last", "spread"])
def test_place_credit_is_the_credit_part_of_shape_rewards(placement):
    players = [P(0, 2), P(2, 3), P(3, 6)]
    phi = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    credit = place_credit(phi, players, placement=placement, n_tokens=7)
    assert credit.sum().item() == pytest.approx(1.25, abs=1e-12) and credit[6].item() == 0.0
    shaped = shape_rewards(phi, players, 2.0, alpha=0.75, placement=placement, n_tokens=7)
    expected = 0.75 * credit
    expected[-1] += 0.25 * 2.0
    torch.testing.assert_close(shaped, expected)
    with pytest.raises(ValueError, match="placement"):
        place_credit(phi, players, placement="first", n_tokens=7)


def test_shape_rewards_spread_splits_evenly():
    players = [P(0, 2), P(2, 5)]
    phi = torch.tensor([1.0, 3.0], dtype=torch.float64)
    out = shape_rewards(phi, players, 5.0, alpha=1.0, placement="spread", n_tokens=5)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("placement", ["last", "spread"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_shape_rewards_total_is_alpha_credit_plus_sparse(placement, alpha):
    # for exact Shapley values sum(phi) = r - v0, so the total is alpha*(r - v0) + (1-alpha)*r
    g = torch.Generator().manual_seed(0)
    r, v0 = 1.7, 0.4
    phi = torch.rand(4, generator=g, dtype=torch.float64)
    phi = phi / phi.sum() * (r - v0)
    players = [P(0, 1), P(1, 4), P(4, 5), P(5, 7)]
    out = shape_rewards(phi, players, r, alpha=alpha, placement=placement, n_tokens=8)
    assert out.sum().item() == pytest.approx(alpha * (r - v0) + (1 - alpha) * r, abs=1e-12)
    assert out[7].item() == pytest.approx((1 - alpha) * r, abs=1e-12)  # token 7 belongs to no player


def test_shape_rewards_alpha_zero_is_sparse():
    out = shape_rewards([3.0, -1.0], [P(0, 1), P(1, 3)], 0.9, alpha=0.0, n_tokens=3)
    torch.testing.assert_close(out, sparse_rewards(0.9, 3))


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan")])
def test_shape_rewards_rejects_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        shape_rewards([1.0], [P(0, 1)], 1.0, alpha=alpha, n_tokens=1)


def test_shape_rewards_rejects_unknown_placement():
    with pytest.raises(ValueError, match="placement"):
        shape_rewards([1.0], [P(0, 1)], 1.0, alpha=0.5, placement="first", n_tokens=1)


def test_shape_rewards_rejects_mismatched_values_and_players():
    with pytest.raises(ValueError, match="2 players"):
        shape_rewards([1.0], [P(0, 1), P(1, 2)], 1.0, alpha=0.5, n_tokens=2)


def test_shape_rewards_rejects_player_outside_response():
    with pytest.raises(ValueError, match="outside"):
        shape_rewards([1.0], [P(1, 4)], 1.0, alpha=0.5, n_tokens=3)


def test_shape_rewards_rejects_nan_values_and_reward():
    with pytest.raises(ValueError, match="NaN"):
        shape_rewards([float("nan")], [P(0, 1)], 1.0, alpha=0.5, n_tokens=1)
    with pytest.raises(ValueError, match="finite"):
        shape_rewards([1.0], [P(0, 1)], float("nan"), alpha=0.5, n_tokens=1)


def _dense(token_rewards):
    b = len(token_rewards)
    return DenseRewards(
        token_rewards=token_rewards,
        rewards=torch.arange(b, dtype=torch.float64),
        base_values=torch.full((b,), float("nan")),
        values=[torch.zeros(0)] * b,
        stderr=[None] * b,
        players=[[]] * b,
        method="sparse",
    )


def test_dense_rewards_to_tensor_pads_right_and_coerces_dtypes():
    d = _dense([torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([4.0])])
    assert len(d) == 2
    assert d.token_rewards[0].dtype == torch.float32 and d.values[0].dtype == torch.float64
    t = d.to_tensor()
    assert t.dtype == torch.float32
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]
    t = d.to_tensor(pad_value=-1.0, length=5)
    assert t.tolist() == [[1.0, 2.0, 3.0, -1.0, -1.0], [4.0, -1.0, -1.0, -1.0, -1.0]]
    with pytest.raises(ValueError, match="shorter"):
        d.to_tensor(length=2)


def test_dense_rewards_rejects_inconsistent_batch():
    with pytest.raises(ValueError, match="rewards has 3 entries"):
        DenseRewards(
            token_rewards=[torch.ones(2)],
            rewards=torch.ones(3),
            base_values=torch.ones(1),
            values=[torch.ones(1)],
            stderr=[None],
            players=[[P(0, 2)]],
            method="scar",
        )
    with pytest.raises(ValueError, match="1 players but 2 values"):
        DenseRewards(
            token_rewards=[torch.ones(2)],
            rewards=torch.ones(1),
            base_values=torch.ones(1),
            values=[torch.ones(2)],
            stderr=[None],
            players=[[P(0, 2)]],
            method="scar",
        )
