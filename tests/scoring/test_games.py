"""``scar.scoring.games.share_prompts``: responses to one prompt merged into one tree keep every coalition's
sequence, and the scores go back to their responses."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scar.scoring.games as games_module
from scar.scoring.games import build_game, pack_games, share_prompts, split_shared


@st.composite
def game_batches(draw):
    prompts = [list(range(10, 10 + k)) for k in draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))]
    suffixes = [[], [2], [2, 3]]
    replace = draw(st.booleans())
    games = []
    for index in range(draw(st.integers(1, 6))):
        n_tokens = draw(st.integers(1, 8))
        cuts = sorted(draw(st.sets(st.integers(1, n_tokens), max_size=n_tokens)) | {n_tokens})
        bounds = [0, *cuts]
        ranges = list(zip(bounds, bounds[1:]))
        players = [r for i, r in enumerate(ranges) if i % 2 == 0 or not draw(st.booleans())]  # some gaps
        bits = torch.tensor(
            draw(
                st.lists(st.lists(st.booleans(), min_size=len(players), max_size=len(players)), min_size=1, max_size=5)
            ),
            dtype=torch.bool,
        )
        games.append(
            build_game(
                index,
                draw(st.sampled_from(prompts)),
                list(range(50, 50 + n_tokens)),
                players,
                bits,
                draw(st.sampled_from(suffixes)),
                vocab_size=None,
                filler_id=1 if replace else None,
            )
        )
    return games


@settings(max_examples=80, deadline=None)
@given(game_batches(), st.sampled_from([1, 40, 2**24]))
def test_merged_games_keep_every_sequence(games, cap) -> None:
    default, games_module.MERGE_MAX_ENTRIES = games_module.MERGE_MAX_ENTRIES, cap
    try:
        merged, members = share_prompts(games)
    finally:
        games_module.MERGE_MAX_ENTRIES = default
    assert sorted(r for m in members for r in m) == list(range(len(games)))
    for game, group in zip(merged, members):  # a merged game stays under the cap unless it is one response
        assert len(group) == 1 or game.bits.numel() <= cap
    for game, group in zip(merged, members):
        prompts = {tuple(games[r].source[: games[r].prompt_len].tolist()) for r in group}
        assert len(prompts) == 1  # only responses to the same prompt (and suffix) are merged
        keep = game.keep_mask()
        row = 0
        for r in group:
            own = games[r].keep_mask()
            for c in range(games[r].n_coalitions):
                assert torch.equal(game.sequence(keep[row + c]), games[r].sequence(own[c]))
            row += games[r].n_coalitions
    # scores travel back to their responses in order
    fake = [torch.arange(g.n_coalitions, dtype=torch.float64) + 100 * m for m, g in enumerate(merged)]
    back = split_shared(fake, members, games)
    assert [b.numel() for b in back] == [g.n_coalitions for g in games]
    # one prompt root per merged game, and never more tokens than one root per response
    assert pack_games(merged, [0] * len(merged)).n_tokens <= pack_games(games, [0] * len(games)).n_tokens


def test_different_prompts_or_suffixes_stay_apart() -> None:
    one = torch.ones(1, 1, dtype=torch.bool)
    games = [
        build_game(i, p, [50, 51], [(0, 2)], one, s, vocab_size=None, filler_id=None)
        for i, (p, s) in enumerate([([5], [2]), ([5], [2]), ([6], [2]), ([5], [3]), ([5, 6], [2])])
    ]
    merged, members = share_prompts(games)
    assert members == [[0, 1], [2], [3], [4]]
    assert merged[1] is games[2] and merged[0].prompt_len == 1 and merged[0].source.tolist() == [5, 50, 51, 50, 51, 2]


def test_a_large_group_is_merged_in_runs(monkeypatch) -> None:
    bits = torch.ones(3, 2, dtype=torch.bool)  # 3 coalitions x 2 segments per response
    games = [build_game(i, [5, 6], [50, 51, 52], [(0, 1), (1, 3)], bits, [2], vocab_size=None, filler_id=None)
             for i in range(5)]
    monkeypatch.setattr(games_module, "MERGE_MAX_ENTRIES", 6 * 4)  # two responses: 6 rows x 4 segments
    merged, members = share_prompts(games)
    assert members == [[0, 1], [2, 3], [4]]
    assert [g.bits.shape for g in merged[:2]] == [(6, 4), (6, 4)] and merged[2] is games[4]
