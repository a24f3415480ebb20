"""Tests for scar.rewards: DenseRewards, shape_rewards, sparse_rewards, map_to_tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scar.players import Player
from scar.rewards import DenseRewards, map_to_tokens, place_credit, shape_rewards, sparse_rewards


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


def test_map_to_tokens_same_tokenization_is_identity():
    rewards = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    offs = [(0, 3), (3, 7), (7, 8)]
    assert torch.equal(map_to_tokens(rewards, offs, offs), rewards)


def test_map_to_tokens_different_tokenizers_by_hand():
    text = "Hello world, fine."
    # source: words and punctuation (reward-model side); destination: coarser and finer pieces
    src = [(0, 5), (5, 11), (11, 12), (12, 17), (17, 18)]  # "Hello" " world" "," " fine" "."
    dst = [(0, 3), (3, 8), (8, 12), (12, 18)]  # "Hel" "lo wo" "rld," " fine."
    assert [text[a:b] for a, b in dst] == ["Hel", "lo wo", "rld,", " fine."]
    rewards = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    out = map_to_tokens(rewards, src, dst)
    # last chars: 'o'@4 -> dst1, 'd'@10 -> dst2, ','@11 -> dst2, 'e'@16 -> dst3, '.'@17 -> dst3
    assert out.tolist() == [0.0, 1.0, 6.0, 24.0]
    assert out.sum().item() == rewards.sum().item()


def test_map_to_tokens_gaps_and_zero_width_tokens_keep_mass():
    # destination drops the spaces (gaps) and has a zero-width EOS at the end
    src = [(0, 2), (2, 3), (3, 5), (5, 6)]  # "ab" " " "cd" " "
    dst = [(0, 2), (3, 5), (6, 6)]
    rewards = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    out = map_to_tokens(rewards, src, dst)
    # the space at 2 goes to the next token "cd"; the trailing space at 5 goes to the next token, the EOS
    assert out.tolist() == [1.0, 110.0, 1000.0]


def test_map_to_tokens_past_the_end_goes_to_last_token():
    out = map_to_tokens([1.0, 2.0], [(0, 1), (1, 9)], [(0, 1), (1, 4)])
    assert out.tolist() == [1.0, 2.0]


def test_map_to_tokens_random_preserves_mass():
    g = torch.Generator().manual_seed(1)
    n = 200

    def random_cuts(k: int) -> list[tuple[int, int]]:
        cuts = sorted(set(torch.randint(1, n, (k,), generator=g).tolist()) | {0, n})
        return list(zip(cuts[:-1], cuts[1:]))

    src, dst = random_cuts(60), random_cuts(25)
    rewards = torch.randn(len(src), generator=g, dtype=torch.float64)
    out = map_to_tokens(rewards, src, dst)
    assert out.shape == (len(dst),)
    assert out.sum().item() == pytest.approx(rewards.sum().item(), abs=1e-12)
    # each source reward sits in the destination token that contains its last character
    expected = torch.zeros(len(dst), dtype=torch.float64)
    for (a, b), rew in zip(src, rewards.tolist()):
        j = next(j for j, (c, d) in enumerate(dst) if c <= b - 1 < d)
        expected[j] += rew
    torch.testing.assert_close(out, expected)


def test_map_to_tokens_bad_input():
    with pytest.raises(ValueError, match="src_offsets"):
        map_to_tokens([1.0, 2.0], [(0, 1)], [(0, 1)])
    with pytest.raises(ValueError, match="text order"):
        map_to_tokens([1.0], [(0, 1)], [(0, 3), (1, 2)])
    with pytest.raises(ValueError, match="pairs"):
        map_to_tokens([1.0], [(0, 1, 2)], [(0, 1)])
    with pytest.raises(ValueError, match="empty"):
        map_to_tokens([1.0], [(0, 1)], [])


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


@settings(max_examples=60, deadline=None)
@given(
    n_chars=st.integers(1, 80),
    src_cuts=st.sets(st.integers(1, 79), max_size=30),
    dst_cuts=st.sets(st.integers(1, 79), max_size=30),
    seed=st.integers(0, 2**16),
)
def test_map_to_tokens_property_mass_and_containment(n_chars, src_cuts, dst_cuts, seed):
    def tokens(cuts):
        c = sorted({x for x in cuts if x < n_chars} | {0, n_chars})
        return list(zip(c[:-1], c[1:]))

    src, dst = tokens(src_cuts), tokens(dst_cuts)
    rewards = torch.randn(len(src), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = map_to_tokens(rewards, src, dst)
    assert out.sum().item() == pytest.approx(rewards.sum().item(), abs=1e-9)
    assert torch.equal(map_to_tokens(rewards, src, src), rewards)
    # a destination token gets reward only if some source token ends inside it
    ends = {b - 1 for _, b in src}
    for (c, d), value in zip(dst, out.tolist()):
        if not any(c <= e < d for e in ends):
            assert value == 0.0
