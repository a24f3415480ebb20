"""Tests for scar.credit.rewards: DenseRewards, shape_rewards, sparse_rewards, map_to_tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scar.credit.rewards import DenseRewards, place_credit, shape_rewards, sparse_rewards
from scar.game.players import Player


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


@pytest.mark.parametrize(
    "kw,error,match",
    [
        ({"length": 30.0}, TypeError, "length must be an int"),
        ({"length": "30"}, TypeError, "length must be an int"),
        ({"length": True}, TypeError, "length must be an int"),
        ({"length": -1}, ValueError, "length must be >= 0, got -1"),
        ({"length": 2**70}, ValueError, "length"),
        ({"pad_value": "a"}, TypeError, "pad_value must be a number"),
        ({"pad_value": None}, TypeError, "pad_value must be a number"),
        ({"pad_value": [1.0]}, TypeError, "pad_value must be a number"),
        ({"pad_value": True}, TypeError, "pad_value must be a number"),
        ({"pad_value": 2**2000}, ValueError, "pad_value"),
        ({"pad_value": 1e39}, ValueError, "pad_value"),
    ],
)
def test_to_tensor_bad_arguments_are_clear(kw, error, match):
    with pytest.raises(error, match=match):
        _dense([torch.tensor([1.0, 2.0])]).to_tensor(**kw)
    with pytest.raises(ValueError, match="length must be >= 0, got -1"):
        _dense([]).to_tensor(length=-1)


def test_to_tensor_numpy_ints_and_explicit_non_finite_padding():
    d = _dense([torch.tensor([1.0, 2.0])])
    assert d.to_tensor(length=np.int64(3)).tolist() == [[1.0, 2.0, 0.0]]
    assert d.to_tensor(pad_value=float("-inf"), length=3)[0, 2] == float("-inf")
    assert d.to_tensor(pad_value=np.float32(0.5), length=3)[0, 2] == 0.5
    assert _dense([]).to_tensor(length=4).shape == (0, 4)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        ({"r": "1.0"}, TypeError, "r must be a number"),
        ({"r": None}, TypeError, "r must be a number"),
        ({"r": 2**2000}, ValueError, "r must be finite"),
        ({"values": [[1.0], [2.0, 3.0]]}, TypeError, "values must be"),
        ({"values": ["a", "b"]}, TypeError, "values must be"),
        ({"values": torch.ones(2, dtype=torch.complex64)}, TypeError, "values must be real"),
        ({"values": [1e308, 1e308], "players": [P(0, 2), P(1, 2)]}, ValueError, "values"),
        ({"players": 3}, TypeError, "players"),
        ({"players": [P(0, 1), (1, "x")]}, TypeError, r"player 1 must be a Player or a \(start, end\) pair"),
        ({"players": [Player(0.5, 1, 0, 0, ""), P(1, 3)]}, TypeError, "player 0"),
        ({"placement": ["last"]}, ValueError, "placement"),
        ({"n_tokens": 0}, ValueError, "n_tokens"),
        ({"alpha": "0.5"}, TypeError, "alpha"),
    ],
)
def test_shape_rewards_bad_arguments_are_clear(kw, error, match):
    args = dict(values=[0.5, -0.25], players=[P(0, 1), P(1, 3)], r=1.0, alpha=0.5, n_tokens=3)
    args.update(kw)
    values, players, r = args.pop("values"), args.pop("players"), args.pop("r")
    with pytest.raises(error, match=match):
        shape_rewards(values, players, r, **args)


def test_shape_rewards_accepts_ranges_numpy_and_zero_dim_tensors():
    want = shape_rewards([0.5, -0.25], [P(0, 1), P(1, 3)], 1.0, alpha=0.5, n_tokens=3)
    got = shape_rewards(np.array([0.5, -0.25]), [(0, 1), (1, 3)], torch.tensor(1.0), alpha=0.5, n_tokens=np.int64(3))
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("token_rewards", 5, "token_rewards must be a list"),
        ("token_rewards", [["a"]], r"token_rewards\[0\]"),
        ("values", [torch.ones(1, dtype=torch.complex64)], r"values\[0\]"),
        ("rewards", "x", "rewards"),
        ("players", [5], r"players\[0\]"),
        ("stderr", None, "stderr must be a list"),
    ],
)
def test_dense_rewards_bad_fields_name_the_field(field, value, match):
    kw = dict(
        token_rewards=[torch.ones(2)],
        rewards=torch.ones(1),
        base_values=torch.ones(1),
        values=[torch.ones(1)],
        stderr=[None],
        players=[[P(0, 2)]],
        method="scar",
    )
    kw[field] = value
    with pytest.raises((TypeError, ValueError), match=match):
        DenseRewards(**kw)
