"""One response's coalitions in source-buffer form: the inputs of every backend, normalised once.

A coalition of response players is scored as the reward model's scalar on
``prompt ⊕ (tokens of the kept players and of the gaps, in order) ⊕ suffix``. A :class:`Game` holds the
response as ``source = prompt ⊕ segments ⊕ suffix``, each segment a player's tokens or an always-kept gap,
and the coalitions as bits over the segments' players; :func:`pack_games` turns a forest of games into the
packed prefix-tree layout. :func:`share_prompts` merges the games of responses to the same prompt (a GRPO
group) into one tree, so that the prompt is computed once for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scar.game.players import as_ranges, validate_players
from scar.game.tokens import as_token_ids
from scar_kernels.ops import PackLayout, build_pack

__all__ = ["Game", "build_game", "pack_games", "MERGE_MAX_ENTRIES", "share_prompts", "split_shared"]


@dataclass
class Game:
    """One response's coalitions in the layout contract's source-buffer form.

    ``source`` = prompt ⊕ segments ⊕ suffix; a segment belongs to a (virtual) player or is an always-kept
    gap (player -1). With ``removal="replace"`` each player j becomes two virtual players: 2j (its real
    tokens) and 2j+1 (as many filler tokens), exactly one of which is kept, so positions stay uncompacted.
    """

    source: torch.Tensor
    prompt_len: int
    suffix_len: int
    seg_player: list[int]
    seg_len: list[int]
    bits: torch.Tensor

    @property
    def n_coalitions(self) -> int:
        """Number of coalitions (rows of ``bits``)."""
        return int(self.bits.shape[0])

    def keep_mask(self) -> torch.Tensor:
        """bool ``[C, len(source)]``: which source tokens each coalition keeps."""
        n_c = self.bits.shape[0]
        players = torch.repeat_interleave(
            torch.tensor(self.seg_player, dtype=torch.int64), torch.tensor(self.seg_len, dtype=torch.int64)
        )
        if self.bits.shape[1]:
            seg_keep = self.bits[:, players.clamp(min=0)] | (players == -1)[None, :]
        else:
            seg_keep = (players == -1)[None, :].expand(n_c, -1)
        return torch.cat(
            [
                torch.ones(n_c, self.prompt_len, dtype=torch.bool),
                seg_keep,
                torch.ones(n_c, self.suffix_len, dtype=torch.bool),
            ],
            dim=1,
        )

    def sequence(self, keep: torch.Tensor) -> torch.Tensor:
        """The token ids of one coalition, given its row of :meth:`keep_mask`."""
        return self.source[keep]


def build_game(
    index: int,
    prompt: object,
    response: object,
    players: object,
    coalitions: object,
    suffix: object,
    *,
    vocab_size: int | None,
    filler_id: int | None,
) -> Game:
    """Check one response's inputs and build its :class:`Game`; errors name ``response {index}``.

    ``filler_id`` set means ``removal="replace"``.

    Raises:
        TypeError / ValueError: malformed ids, players or coalitions.
    """
    try:
        prompt_t = torch.tensor(
            as_token_ids(prompt, "prompt", vocab_size=vocab_size, allow_empty=False), dtype=torch.int64
        )
        response_t = torch.tensor(
            as_token_ids(response, "response", vocab_size=vocab_size, allow_empty=False), dtype=torch.int64
        )
        suffix_t = torch.tensor(
            as_token_ids([] if suffix is None else suffix, "suffix", vocab_size=vocab_size), dtype=torch.int64
        )
        validate_players(players, response_t.numel())  # type: ignore[arg-type]
        ranges = as_ranges(players)  # type: ignore[arg-type]
        if not ranges:
            raise ValueError("no players")
        if not isinstance(coalitions, torch.Tensor) or coalitions.dtype != torch.bool:
            got = coalitions.dtype if isinstance(coalitions, torch.Tensor) else type(coalitions).__name__
            raise TypeError(f"coalitions must be a bool tensor, got {got}")
        if coalitions.dim() != 2 or coalitions.shape[1] != len(ranges):
            raise ValueError(
                f"coalitions must have shape [C, {len(ranges)}] (one column per player), got {tuple(coalitions.shape)}"
            )
    except (TypeError, ValueError) as err:
        raise type(err)(f"response {index}: {err}") from None
    coalitions = coalitions.cpu()
    replace = filler_id is not None
    seg_player: list[int] = []
    seg_len: list[int] = []
    pieces = [prompt_t]
    cursor = 0
    for j, (s, e) in enumerate(ranges):
        if s > cursor:
            seg_player.append(-1)
            seg_len.append(s - cursor)
            pieces.append(response_t[cursor:s])
        seg_player.append(2 * j if replace else j)
        seg_len.append(e - s)
        pieces.append(response_t[s:e])
        if replace:
            seg_player.append(2 * j + 1)
            seg_len.append(e - s)
            pieces.append(torch.full((e - s,), int(filler_id), dtype=torch.int64))  # type: ignore[arg-type]
        cursor = e
    if cursor < response_t.numel():
        seg_player.append(-1)
        seg_len.append(response_t.numel() - cursor)
        pieces.append(response_t[cursor:])
    pieces.append(suffix_t)
    if replace:
        bits = torch.stack([coalitions, ~coalitions], dim=2).reshape(coalitions.shape[0], -1)
    else:
        bits = coalitions.clone()
    return Game(torch.cat(pieces), prompt_t.numel(), suffix_t.numel(), seg_player, seg_len, bits)


def pack_games(games: Sequence[Game], cached: Sequence[int]) -> PackLayout:
    """The packed prefix-tree layout of a forest of games (``cached[r]`` prompt tokens left to a KV cache)."""
    n_max = max(g.bits.shape[1] for g in games)
    coal = torch.zeros(sum(g.n_coalitions for g in games), n_max, dtype=torch.bool)
    row = 0
    for g in games:
        coal[row : row + g.n_coalitions, : g.bits.shape[1]] = g.bits
        row += g.n_coalitions
    owner = torch.repeat_interleave(torch.arange(len(games)), torch.tensor([g.n_coalitions for g in games]))
    seg_offsets = torch.tensor([0] + [len(g.seg_player) for g in games]).cumsum(0)
    return build_pack(
        coal,
        owner,
        seg_offsets,
        torch.tensor([p for g in games for p in g.seg_player], dtype=torch.int64),
        torch.tensor([s for g in games for s in g.seg_len], dtype=torch.int64),
        torch.tensor([g.prompt_len for g in games], dtype=torch.int64),
        torch.tensor([g.suffix_len for g in games], dtype=torch.int64),
        torch.tensor(list(cached), dtype=torch.int64),
    )


MERGE_MAX_ENTRIES = 2**24
"""Most entries (coalitions x segments) of one merged game's coalition matrix in :func:`share_prompts`: 16
MiB of bools, far above a GRPO group's (8 responses of 50 players with 2,000 coalitions each hold 6.4
million)."""


def share_prompts(games: Sequence[Game]) -> tuple[list[Game], list[list[int]]]:
    """Merge the games with the same prompt and suffix into one game each, whose tree has one prompt root.

    A merged game's source is ``prompt ⊕ segments of its first member ⊕ segments of the next ⊕ ... ⊕ suffix``;
    every segment becomes a player of its own (the contract numbers them 0, 1, 2, ... in order). A member's
    coalition keeps its own players as before and its own gaps, and no segment of the other members, so its
    kept sequence (and, positions being counted over kept tokens, its positions) is exactly the member's:
    the coalitions' sequences, hence their scores, do not change; only the prompt's tokens are shared.

    The merged coalition matrix is block-diagonal but stored dense (``[sum C, sum segments]``), so a group
    is merged in runs of consecutive members whose matrix holds at most :data:`MERGE_MAX_ENTRIES` entries;
    each run shares one root.

    Returns ``(merged, members)``: ``members[m]`` lists the indices of the games in ``merged[m]``, in order
    (a game that shares its prompt with no other stays as it is). Scores of the merged games go back to the
    original games with :func:`split_shared`.
    """
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    for r, g in enumerate(games):
        prompt = g.source[: g.prompt_len].numpy().tobytes()
        suffix = g.source[g.source.numel() - g.suffix_len :].numpy().tobytes()
        groups.setdefault((prompt, suffix), []).append(r)
    members: list[list[int]] = []
    for group in groups.values():
        run: list[int] = []
        rows = segments = 0
        for r in group:
            more_rows, more_segments = rows + games[r].n_coalitions, segments + len(games[r].seg_player)
            if run and more_rows * more_segments > MERGE_MAX_ENTRIES:
                members.append(run)
                run, more_rows, more_segments = [], games[r].n_coalitions, len(games[r].seg_player)
            run.append(r)
            rows, segments = more_rows, more_segments
        members.append(run)
    members.sort()
    return [games[m[0]] if len(m) == 1 else _merge([games[r] for r in m]) for m in members], members


def _merge(games: Sequence[Game]) -> Game:
    first = games[0]
    pieces = [first.source[: first.prompt_len]]
    n_segments = sum(len(g.seg_player) for g in games)
    bits = torch.zeros(sum(g.n_coalitions for g in games), n_segments, dtype=torch.bool)
    row = column = 0
    for g in games:
        pieces.append(g.source[g.prompt_len : g.source.numel() - g.suffix_len])
        seg_player = torch.tensor(g.seg_player, dtype=torch.int64)
        owned = seg_player >= 0
        block = torch.ones(g.n_coalitions, len(g.seg_player), dtype=torch.bool)  # gaps: kept by its coalitions only
        block[:, owned] = g.bits[:, seg_player[owned]]
        bits[row : row + g.n_coalitions, column : column + len(g.seg_player)] = block
        row += g.n_coalitions
        column += len(g.seg_player)
    pieces.append(first.source[first.source.numel() - first.suffix_len :])
    seg_len = [length for g in games for length in g.seg_len]
    return Game(torch.cat(pieces), first.prompt_len, first.suffix_len, list(range(n_segments)), seg_len, bits)


def split_shared(
    scores: Sequence[torch.Tensor], members: Sequence[Sequence[int]], games: Sequence[Game]
) -> list[torch.Tensor]:
    """The scores of :func:`share_prompts`'s merged games, back per original game (in ``games``' order)."""
    out: list[torch.Tensor | None] = [None] * len(games)
    for values, group in zip(scores, members):
        for r, part in zip(group, values.split([games[r].n_coalitions for r in group])):
            out[r] = part
    return out  # type: ignore[return-value]
