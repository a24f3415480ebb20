"""Per-token GRPO advantages (:func:`scar.credit.advantages.dense_group_advantages`) against the plain
reference, GRPO for sparse credit, and the simulation behind the default baseline."""

from __future__ import annotations

import math

import pytest
import torch

from scar.credit.advantages import dense_group_advantages

from advantage_reference import padded, reference_advantages

NUM_GENERATIONS = 4


@pytest.mark.parametrize("baseline", ["position", "group"])
@pytest.mark.parametrize("std_of", ["sequence", "token"])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_dense_group_advantages_matches_reference(scale_rewards, std_of, baseline):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 5, 1, 4, 2, 5, 5, 3]
    rows = [torch.randn(n, generator=g, dtype=torch.float64).tolist() for n in lengths]
    got = dense_group_advantages(padded(rows, 6), torch.tensor(lengths), 4, scale_rewards, std_of, baseline)
    want = padded(reference_advantages(rows, 4, scale_rewards, std_of, baseline), 6)
    assert got.dtype == torch.float32 and got.shape == (8, 6)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # padding is exactly zero
    for i, n in enumerate(lengths):
        assert bool((got[i, n:] == 0).all())


@pytest.mark.parametrize("baseline", ["position", "group"])
@pytest.mark.parametrize("std_of", ["sequence", "token"])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_ended_rows_match_reference(scale_rewards, std_of, baseline):
    """The last token of an ended row gets the row's sequence advantage; cut rows and other tokens do not
    change."""
    g = torch.Generator().manual_seed(1)
    lengths = [3, 5, 1, 4, 2, 5, 5, 3]
    ended = [True, False, True, True, True, True, False, True]
    rows = [torch.randn(n, generator=g, dtype=torch.float64).tolist() for n in lengths]
    args = (padded(rows, 6), torch.tensor(lengths), 4, scale_rewards, std_of, baseline)
    got = dense_group_advantages(*args, ended=torch.tensor(ended))
    want = padded(reference_advantages(rows, 4, scale_rewards, std_of, baseline, ended), 6)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    plain = dense_group_advantages(*args)
    changed = (got != plain).nonzero().tolist()
    assert changed and all(ended[i] and t == lengths[i] - 1 for i, t in changed)


def test_ending_tokens_are_judged_by_the_sequence_reward_not_by_length():
    """Credit spread over the tokens with a sequence reward independent of length: without ``ended`` the
    ending token of a short completion is compared with the credit its longer siblings still had to come,
    so ending earlier looks worse (its advantage grows with length); with ``ended`` it is GRPO's advantage of
    the sequence reward, unrelated to length."""
    gen = torch.Generator().manual_seed(3)
    n, groups = 8, 400
    lengths = torch.randint(3, 16, (n * groups,), generator=gen)
    r = 3.0 + 0.5 * torch.randn(n * groups, generator=gen, dtype=torch.float64)
    valid = torch.arange(16).unsqueeze(0) < lengths.unsqueeze(1)
    noise = torch.randn(valid.shape, generator=gen, dtype=torch.float64) * valid
    noise = (noise - noise.sum(1, keepdim=True) / lengths.unsqueeze(1)) * valid  # sums to 0 over the row
    rewards = (r / lengths).unsqueeze(1) * valid + 0.2 * noise
    rows = torch.arange(n * groups)

    def end_vs_length(ended):
        a = dense_group_advantages(rewards, lengths, n, ended=ended).double()[rows, lengths - 1]
        return float(torch.corrcoef(torch.stack([a, lengths.double()]))[0, 1])

    assert end_vs_length(None) > 0.5
    assert abs(end_vs_length(torch.ones(n * groups, dtype=torch.bool))) < 0.1


@pytest.mark.parametrize("baseline", ["position", "group"])
@pytest.mark.parametrize("std_of", ["sequence", "token"])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_dense_group_advantages_sparse_is_grpo(scale_rewards, std_of, baseline):
    """Sparse credit (r on the last token) gives GRPO's advantage on every token of the completion, for
    unequal lengths too (the position baseline holds a finished completion's last return-to-go, its r)."""
    r = torch.tensor([1.0, -0.5, 2.0, 0.25, 3.0, 3.5, -1.0, 0.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    lengths = torch.tensor([2, 4, 1, 3, 4, 4, 2, 3, 1, 2, 3, 4])
    rewards = torch.zeros(12, 4, dtype=torch.float64)
    rewards[torch.arange(12), lengths - 1] = r
    got = dense_group_advantages(rewards, lengths, 4, scale_rewards, std_of, baseline)
    ended = dense_group_advantages(rewards, lengths, 4, scale_rewards, std_of, baseline, ended=lengths > 2)
    torch.testing.assert_close(ended, got)
    # GRPO's formula, as in trl's GRPOTrainer (sum_then_normalize); the last group has zero spread
    grouped = r.view(3, 4)
    grpo = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        grpo = grpo / (grouped.std(1, keepdim=True).expand(3, 4).reshape(-1) + 1e-4)
    elif scale_rewards == "batch":
        grpo = grpo / (r.std() + 1e-4)
    valid = torch.arange(4) < lengths.unsqueeze(1)
    want = torch.where(valid, grpo.unsqueeze(1).expand(12, 4), torch.zeros(()))
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert bool((got[8:] == 0).all())


def simulate_advantages(baseline, std_of, n_groups, varied_lengths=False, seed=0):
    """:func:`dense_group_advantages` on simulated groups, against the true per-token credit.

    Each group has 8 completions of 10 tokens (5..15 with ``varied_lengths``) whose per-token rewards are
    ``R_t = 0.3 + e_t`` with ``e_t ~ N(0, 0.5 / sqrt(10))`` (so ``r ~ N(3, 0.5)`` at 10 tokens); ``e_t`` is
    the true centred credit of token ``t``. Returns the correlation of ``A_t`` with ``e_t`` over all
    tokens, the mean advantage of the last token and the mean advantage over all tokens.
    """
    g = torch.Generator().manual_seed(seed)
    n = 8 * n_groups
    lengths = torch.randint(5, 16, (n,), generator=g) if varied_lengths else torch.full((n,), 10)
    valid = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
    credit = torch.randn(valid.shape, generator=g, dtype=torch.float64) * 0.5 / math.sqrt(10)
    advantages = dense_group_advantages((0.3 + credit) * valid, lengths, 8, "group", std_of, baseline).double()
    corr = float(torch.corrcoef(torch.stack([advantages[valid], credit[valid]]))[0, 1])
    last = float(advantages[torch.arange(n), lengths - 1].mean())
    return corr, last, float(advantages[valid].mean())


@pytest.mark.parametrize("std_of", ["token", "sequence"])
@pytest.mark.parametrize("varied_lengths", [False, True])
def test_position_baseline_tracks_token_credit_better(std_of, varied_lengths):
    """The measurement behind the default: the per-position baseline has no late-token drift and follows
    the per-token credit more closely than the single group baseline."""
    corr_p, last_p, mean_p = simulate_advantages("position", std_of, 300, varied_lengths)
    corr_g, last_g, mean_g = simulate_advantages("group", std_of, 300, varied_lengths)
    assert corr_p > corr_g + 0.02
    assert mean_g < -0.5 and abs(mean_p) < 0.2  # the group baseline drifts later tokens down
    assert last_g < -1.0
    if not varied_lengths:
        # (with varied lengths a last token is rightly compared with the longer completions' reward to come)
        assert abs(last_p) < 0.1


def test_token_std_keeps_nearly_equal_totals_bounded():
    """Nearly equal group totals with uneven credit: GRPO's sequence std divides the credit by ~1e-6, the
    default token std keeps every advantage within sqrt((n - 1) * T), the bound its unit mean square implies."""
    rows = [[3.0, -1.0, 0.0], [0.0, 1.0, 1.0 + 1e-6], [-2.0, 4.0, 0.0], [1.0, 1.0, -1e-6]]
    rewards, lengths = padded(rows, 3), torch.full((4,), 3)
    blown = dense_group_advantages(rewards, lengths, 4, "group", "sequence")
    assert float(blown.abs().max()) > 1e4
    default = dense_group_advantages(rewards, lengths, 4)
    assert float(default.abs().max()) <= math.sqrt(3 * 3)
    mean_square = sum(float((default[i] ** 2).mean()) for i in range(4))
    assert mean_square == pytest.approx(3.0, rel=1e-3)
    torch.testing.assert_close(default, dense_group_advantages(rewards, lengths, 4, "group", "token", "position"))


def test_dense_group_advantages_flat_group():
    # all four completions return 2.0 in total, with the credit split differently over their tokens
    rows = [[1.0, 1.0], [0.5, 1.5], [2.0], [-2.0, 4.0]]
    lengths = torch.tensor([len(r) for r in rows])
    rewards = padded(rows, 2)
    # the sequence std is 0: no scale, advantages 0 (as GRPO) instead of credit / 1e-4
    assert bool((dense_group_advantages(rewards, lengths, 4, "group", "sequence") == 0).all())
    # unscaled, group baseline: the return-to-go minus the common total, i.e. minus the credit earned before
    # each token
    none = dense_group_advantages(rewards, lengths, 4, "none", baseline="group")
    torch.testing.assert_close(none, torch.tensor([[0.0, -1.0], [0.0, -0.5], [0.0, 0.0], [0.0, 2.0]]))
    # position baseline: at t=2 the mean of the returns-to-go 1, 1.5, 4 and the ended row's last one, 2
    none = dense_group_advantages(rewards, lengths, 4, "none", baseline="position")
    torch.testing.assert_close(none, torch.tensor([[0.0, -1.125], [0.0, -0.625], [0.0, 0.0], [0.0, 1.875]]))
    # the token std sees the spread of the credit and keeps the advantages at unit scale
    token = dense_group_advantages(rewards, lengths, 4, "group", "token")
    want = padded(reference_advantages(rows, 4, "group", "token"), 2)
    torch.testing.assert_close(token.double(), want, rtol=1e-5, atol=1e-6)
    mean_square = sum(float((token[i, :n] ** 2).mean()) for i, n in enumerate(lengths.tolist()))
    assert mean_square == pytest.approx(3.0, rel=1e-3)  # n - 1, Bessel


def test_dense_group_advantages_nan_rows():
    # group 1 has an unscorable row: left out of the mean and std, advantage 0
    rows = [[1.0, 1.0], [0.5, 2.5], [2.0], [0.0, 1.0], [1.0, float("nan")], [1.0], [2.0, 1.0], [0.5]]
    lengths = torch.tensor([len(r) for r in rows])
    got = dense_group_advantages(padded(rows, 2), lengths, 4, "group")
    assert bool((got[4] == 0).all())
    want = padded(reference_advantages([rows[5], rows[6], rows[7]], 3, "group"), 2)
    torch.testing.assert_close(got[5:].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        got[:4].double(), padded(reference_advantages(rows[:4], 4, "group"), 2), rtol=1e-5, atol=1e-6
    )


def test_dense_group_advantages_bad_input():
    with pytest.raises(ValueError, match="groups of num_generations"):
        dense_group_advantages(torch.zeros(6, 3), torch.ones(6, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        dense_group_advantages(torch.zeros(4, 3), torch.ones(4, dtype=torch.long), 4, "sometimes")
    with pytest.raises(ValueError, match="lengths"):
        dense_group_advantages(torch.zeros(4, 3), torch.full((4,), 5), 4)
    with pytest.raises(ValueError, match="std_of"):
        dense_group_advantages(torch.zeros(4, 3), torch.ones(4, dtype=torch.long), 4, "group", "tokens")
    with pytest.raises(ValueError, match="baseline"):
        dense_group_advantages(torch.zeros(4, 3), torch.ones(4, dtype=torch.long), 4, baseline="prompt")
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        dense_group_advantages(torch.zeros(4), torch.ones(4, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="ended must be a bool"):
        dense_group_advantages(torch.zeros(4, 3), torch.ones(4, dtype=torch.long), 4, ended=torch.ones(4))
    with pytest.raises(ValueError, match=r"ended must be \[4\]"):
        dense_group_advantages(torch.zeros(4, 3), torch.ones(4, dtype=torch.long), 4, ended=torch.ones(3).bool())


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_dense_group_advantages_refuses_infinite_rewards(value, scale_rewards):
    """An infinite reward inside a completion is an error naming where it is, never a group of zeros or
    infinite advantages; past the completion's length it is padding and ignored."""
    rewards = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    rewards[1, 1] = value
    with pytest.raises(ValueError, match=rf"token_rewards\[1, 1\] is {value}"):
        dense_group_advantages(rewards, torch.tensor([3, 3, 3, 1]), 2, scale_rewards)
    ignored = dense_group_advantages(rewards, torch.tensor([3, 1, 3, 1]), 2, scale_rewards)
    assert bool(torch.isfinite(ignored).all()) and bool((ignored[1, 1:] == 0).all())


def test_dense_group_advantages_nan_row_is_unscorable_but_inf_is_not():
    rewards = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0]])
    got = dense_group_advantages(rewards, torch.tensor([2, 2, 2, 2]), 2, "none")
    assert bool((got[0] == 0).all()) and bool(torch.isfinite(got).all())


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("n,t", [(0, 0), (4, 0), (0, 3)])
def test_dense_group_advantages_without_tokens_or_completions(n, t, scale_rewards):
    got = dense_group_advantages(torch.zeros(n, t), torch.zeros(n, dtype=torch.long), 2, scale_rewards)
    assert got.shape == (n, t) and got.dtype == torch.float32


def test_dense_group_advantages_no_tokens_needs_zero_lengths():
    with pytest.raises(ValueError, match="lengths"):
        dense_group_advantages(torch.zeros(2, 0), torch.tensor([1, 0]), 2)


def test_dense_group_advantages_huge_rewards_are_an_error_not_garbage():
    """Rewards whose returns-to-go or spread overflow float64, or advantages beyond float32, raise."""
    rewards = torch.tensor([[1e308, 1e308], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="token_rewards"):
        dense_group_advantages(rewards, torch.tensor([2, 2, 2, 2]), 2)
    rewards = torch.tensor([[1e200, 0.0], [-1e200, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="token_rewards"):
        dense_group_advantages(rewards, torch.tensor([2, 2]), 2)
    with pytest.raises(ValueError, match="token_rewards"):
        dense_group_advantages(torch.tensor([[1e39], [0.0]], dtype=torch.float64), torch.tensor([1, 1]), 2, "none")


@pytest.mark.parametrize(
    "rewards,lengths,error,match",
    [
        ([[0.0, 1.0], [1.0, 2.0]], [2, 2], TypeError, "token_rewards must be a torch.Tensor"),
        (torch.zeros(2, 2, dtype=torch.complex64), [2, 2], TypeError, "token_rewards must be real"),
        (torch.zeros(2, 2, dtype=torch.bool), [2, 2], TypeError, "token_rewards must be real"),
        (torch.zeros(2, 2), torch.tensor([1.5, 2.0]), TypeError, "lengths must hold integers"),
        (torch.zeros(2, 2), [True, False], TypeError, "lengths must hold integers"),
        (torch.zeros(2, 2), [2**70, 2], ValueError, "lengths"),
        (torch.zeros(2, 2), "ab", TypeError, "lengths"),
        (torch.zeros(2, 2), [[1, 2]], ValueError, r"lengths must be \[2\]"),
    ],
)
def test_dense_group_advantages_bad_types(rewards, lengths, error, match):
    with pytest.raises(error, match=match):
        dense_group_advantages(rewards, lengths, 2)


def test_dense_group_advantages_accepts_int_rewards_and_list_lengths():
    got = dense_group_advantages(torch.tensor([[1, 2], [3, 0]]), [2, 1], 2)
    want = dense_group_advantages(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([2, 1]), 2)
    assert torch.equal(got, want)
