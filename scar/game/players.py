"""Players: contiguous pieces of a response (tokens, spans, sentences) as half-open token ranges.

A *player* is a range ``[start, end)`` of response tokens. SCAR's game removes whole players from the
response (token-id deletion, see ``docs/design.md``), so every segmentation here works on the tokens the
policy produced and never splits a token. Character offsets follow :mod:`scar.game.tokens`.

Segmentation rules (``segment``):

* Boundaries are found in the text, then mapped to tokens. A token belongs to the piece in which its first
  character lies; a token that straddles a boundary therefore stays whole in the earlier piece.
* **Whitespace attaches to the following piece, punctuation to the preceding one.** A cut is placed at the
  start of a whitespace run when that run contains a newline, or when the text before it ends (ignoring
  closing brackets and quotes ``) ] } " ' ” ’ »``) in a terminator. Span terminators are ``, ; : . ! ?``;
  sentence terminators are ``. ! ?``. Punctuation not followed by whitespace (``3.14``, ``a,b``,
  ``U.S.A``) is not a boundary, and neither is the end of the text (nothing follows it).
* A period after one of a few abbreviations that almost never end a sentence (``Mr. Mrs. Ms. Dr. Prof. Sr.
  Jr. vs. e.g. i.e. cf.``, case-insensitive) is not a boundary for spans or sentences; any other
  ``word. Word`` is (so ``Inc. Then`` splits, and so does ``J. Smith``).
* Spans are then split further so that none has more than ``max_span_tokens`` tokens (default
  ``DEFAULT_MAX_SPAN_TOKENS`` = 5, about 4 words: 64-token windows of English prose with GPT-2-like
  tokens give 10 to 17 spans, 14 on average). Cuts go at word starts (a word starts at a whitespace run),
  into as few pieces as possible with sizes as even as possible; a word longer than the limit is cut
  between characters, a character split over more tokens than the limit between tokens. Span boundaries
  include every sentence boundary, so spans nest inside sentences. (A span exceeds the limit only when it is
  a single token with text plus empty tokens joining it, see below.)
* Tokens with an empty character range (special tokens whose offsets are ``(0, 0)``, or any ``(a, a)``)
  join the player of the next token that has text; trailing ones join the last player. This holds for
  every kind, so ``"token"`` gives one player per token that has text.

The players returned always partition ``[0, T)``: sorted, non-overlapping, non-empty, covering every token.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scar._checks import as_int
from scar.game.tokens import as_token_ids, encode_text, require_fast_tokenizer, token_offsets

__all__ = [
    "DEFAULT_MAX_SPAN_TOKENS",
    "KINDS",
    "Player",
    "hierarchy",
    "segment",
    "segment_ids",
    "segment_text",
    "validate_players",
    "as_ranges",
]

KINDS: tuple[str, ...] = ("token", "span", "sentence")
DEFAULT_MAX_SPAN_TOKENS = 5

_SPAN_TERMINATORS = frozenset(",;:.!?")
_SENTENCE_TERMINATORS = frozenset(".!?")
_CLOSERS = frozenset(")]}\"'\u201d\u2019\u00bb")
_OPENERS = "([{\"'\u201c\u2018\u00ab"
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "vs", "e.g", "i.e", "cf"})
_WHITESPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Player:
    """One player: response tokens ``[start, end)`` whose text is ``text == response[char_start:char_end]``.

    ``char_start`` is the first character of the first token that has text and ``char_end`` the largest
    character end among the player's tokens, both taken from the tokenizer's offsets.
    """

    start: int
    end: int
    char_start: int
    char_end: int
    text: str


def segment(
    text: str,
    offsets: Sequence[tuple[int, int]] | torch.Tensor,
    kind: str = "span",
    *,
    max_span_tokens: int | None = None,
    n_tokens: int | None = None,
) -> list[Player]:
    """Split a response into players (see the module docstring for the exact rules).

    Args:
        text: the response text the offsets refer to.
        offsets: ``T`` pairs ``(char_start, char_end)``, one per response token, as returned by a fast
            tokenizer with ``return_offsets_mapping=True`` on ``text`` (list of pairs or a ``[T, 2]`` tensor).
        kind: ``"token"``, ``"span"`` or ``"sentence"``.
        max_span_tokens: largest span in tokens (``kind="span"`` only); default ``DEFAULT_MAX_SPAN_TOKENS``.
        n_tokens: the number of response tokens, when known (e.g. ``len(response_ids)``): the offsets must
            have exactly one pair per token, which catches offsets of a different tokenisation.

    Returns:
        Players sorted by position that partition ``[0, T)``.

    Raises:
        ValueError: unknown kind, empty response, malformed offsets (wrong shape, not ``n_tokens`` pairs,
            outside the text, starts going backwards, no token with text), or a bad ``max_span_tokens``.
        TypeError: ``text`` not a str, ``offsets`` not a sequence of pairs, ``n_tokens`` not an int.
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown player kind {kind!r}; valid kinds are {', '.join(map(repr, KINDS))}")
    if max_span_tokens is None:
        max_span_tokens = DEFAULT_MAX_SPAN_TOKENS
    elif kind != "span":
        raise ValueError(f"max_span_tokens applies to kind='span' only, got kind={kind!r}")
    elif isinstance(max_span_tokens, bool) or not isinstance(max_span_tokens, int) or max_span_tokens < 1:
        raise ValueError(f"max_span_tokens must be a positive int, got {max_span_tokens!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    pairs = _as_pairs(offsets)
    if n_tokens is not None:
        n_tokens = as_int(n_tokens, "n_tokens")
    if n_tokens is not None and len(pairs) != n_tokens:
        raise ValueError(
            f"offsets has {len(pairs)} pairs but the response has n_tokens={n_tokens} tokens; "
            "offsets must come from tokenising this response"
        )
    if not text or not pairs:
        raise ValueError(f"empty response: text has {len(text)} characters and there are {len(pairs)} tokens")
    keys = _token_keys(text, pairs)

    if kind == "token":
        piece = list(range(len(keys)))  # every token with text is its own piece
    else:
        cuts = _char_cuts(text, _SENTENCE_TERMINATORS if kind == "sentence" else _SPAN_TERMINATORS)
        piece = [0 if k is None else bisect.bisect_right(cuts, k) for k in keys]
    bounds = _piece_bounds(keys, piece)
    if kind == "span":
        bounds = _cap_spans(text, pairs, keys, bounds, max_span_tokens)
    return [_make_player(text, pairs, s, e) for s, e in zip(bounds[:-1], bounds[1:])]


def segment_text(
    tokenizer: Any, text: str, kind: str = "span", *, max_span_tokens: int | None = None
) -> tuple[list[int], list[Player]]:
    """Tokenize ``text`` (no special tokens) and split it into players.

    Returns ``(input_ids, players)``. ``tokenizer`` must be a fast (``tokenizers``-backed) tokenizer, since
    the players come from its character offsets.
    """
    ids, offsets = encode_text(tokenizer, text)
    return ids, segment(text, offsets, kind, max_span_tokens=max_span_tokens)


def segment_ids(
    tokenizer: Any,
    response_ids: Sequence[int] | torch.Tensor,
    kind: str = "span",
    *,
    max_span_tokens: int | None = None,
) -> list[Player]:
    """Players for a response given as token ids (e.g. sampled by a policy).

    The ids are decoded (special tokens kept) and each token's character range comes from
    :func:`scar.game.tokens.token_offsets`; players always refer to the given ids. Pass one response
    without padding: pad ids would decode to text and become part of the last player.

    Raises:
        TypeError: the tokenizer cannot return offsets (not a fast tokenizer), or the ids are not a flat
            sequence of ints.
        ValueError: ``response_ids`` is empty; bad ``kind``.
    """
    require_fast_tokenizer(tokenizer)
    ids = as_token_ids(response_ids, "response_ids")
    if not ids:
        raise ValueError("empty response: response_ids has no tokens")
    text, offsets = token_offsets(tokenizer, ids)
    return segment(text, offsets, kind, max_span_tokens=max_span_tokens, n_tokens=len(ids))


def validate_players(
    players_or_ranges: Iterable[Player | tuple[int, int]] | torch.Tensor, n_tokens: int
) -> list[tuple[int, int]]:
    """Check players against a response of ``n_tokens`` tokens and return the gaps.

    Players (``Player`` objects, ``(start, end)`` pairs, or a ``[n, 2]`` integer tensor) must be sorted,
    non-overlapping, non-empty and inside ``[0, n_tokens)``. Gaps are allowed: tokens in no player are
    always kept by the scorer.

    Returns:
        The gaps as sorted ``(start, end)`` ranges of tokens that belong to no player (``[]`` for a partition).

    Raises:
        ValueError: naming the first offending player (index and range) and what is wrong with it.
        TypeError: an entry is neither a ``Player`` nor a pair of ints.
    """
    try:
        if isinstance(n_tokens, (bool, np.bool_)):
            raise TypeError
        n_tokens = operator.index(n_tokens)
    except TypeError:
        raise ValueError(f"n_tokens must be a non-negative int, got {n_tokens!r}") from None
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be a non-negative int, got {n_tokens!r}")
    ranges = as_ranges(players_or_ranges)
    gaps: list[tuple[int, int]] = []
    prev_end = 0
    for i, (s, e) in enumerate(ranges):
        if s >= e:
            raise ValueError(f"player {i} [{s}, {e}) is empty (start must be < end)")
        if s < 0 or e > n_tokens:
            raise ValueError(f"player {i} [{s}, {e}) is outside the response tokens [0, {n_tokens})")
        if s < prev_end:
            ps, pe = ranges[i - 1]
            what = "is out of order with" if s < ps else "overlaps"
            raise ValueError(
                f"player {i} [{s}, {e}) {what} player {i - 1} [{ps}, {pe}); players must be sorted and non-overlapping"
            )
        if s > prev_end:
            gaps.append((prev_end, s))
        prev_end = e
    if prev_end < n_tokens:
        gaps.append((prev_end, n_tokens))
    return gaps


def hierarchy(
    sentences: Sequence[Player | tuple[int, int]],
    spans: Sequence[Player | tuple[int, int]],
    tokens: Sequence[Player | tuple[int, int]] | None = None,
) -> list[list[int]] | list[list[list[int]]]:
    """Nested player indices for Owen values: sentence > span (> token).

    Without ``tokens``: ``[[span indices in sentence 0], [span indices in sentence 1], ...]`` over the
    indices of ``spans``. With ``tokens``: ``[[[token indices in span a of sentence 0], ...], ...]`` over
    the indices of ``tokens``, grouped by span and then by sentence.

    Every inner player must lie inside one outer player, and every outer player must hold at least one
    inner player (an empty group is no coalition). Outer tokens that no inner player covers are allowed.

    Raises:
        ValueError: an inner player straddles or lies outside the outer players, or an outer player holds
            no inner player; or a level is not sorted and non-overlapping.
        TypeError: a level is not a sequence of players or ranges (the message names the level).
    """
    sent_r, span_r = _level_ranges("sentences", sentences), _level_ranges("spans", spans)
    for name, level in (("sentences", sent_r), ("spans", span_r)):
        _check_sorted(name, level)
    by_sentence = _group(sent_r, span_r, "span", "sentence")
    if tokens is None:
        return by_sentence
    tok_r = _level_ranges("tokens", tokens)
    _check_sorted("tokens", tok_r)
    by_span = _group(span_r, tok_r, "token", "span")
    return [[by_span[j] for j in group] for group in by_sentence]


# ---------------------------------------------------------------------------------------------------------
# helpers


def _as_pairs(offsets: Sequence[tuple[int, int]] | torch.Tensor) -> list[tuple[int, int]]:
    """Offsets as a list of int pairs; ValueError unless they have shape ``[T, 2]``."""
    if isinstance(offsets, torch.Tensor) and (offsets.dim() != 2 or offsets.shape[1] != 2):
        raise ValueError(
            f"offsets must have shape [T, 2] (one (char_start, char_end) pair per token of one "
            f"response), got a tensor of shape {tuple(offsets.shape)}"
        )
    if isinstance(offsets, (str, bytes)) or not (hasattr(offsets, "tolist") or hasattr(offsets, "__iter__")):
        raise TypeError(
            "offsets must be a sequence of (char_start, char_end) pairs or a [T, 2] tensor, got "
            f"{type(offsets).__name__}"
        )
    raw = offsets.tolist() if hasattr(offsets, "tolist") else list(offsets)
    pairs = []
    for i, p in enumerate(raw):
        try:
            a, b = p
            pairs.append((operator.index(a), operator.index(b)))
        except (TypeError, ValueError):
            raise ValueError(
                f"offsets must have shape [T, 2] (one (char_start, char_end) pair of ints per "
                f"token); entry {i} is {p!r}"
            ) from None
    return pairs


def _token_keys(text: str, pairs: list[tuple[int, int]]) -> list[int | None]:
    """The first character of each token that has text (None for empty tokens), after checking offsets."""
    n = len(text)
    keys: list[int | None] = []
    last = -1
    for i, (a, b) in enumerate(pairs):
        if a < 0 or b > n or a > b:
            raise ValueError(
                f"offsets[{i}] = ({a}, {b}) is not a character range of the text "
                f"(length {n}); were the offsets computed on this text?"
            )
        if a == b:
            keys.append(None)
            continue
        if a < last:
            raise ValueError(
                f"offsets[{i}] = ({a}, {b}) starts before the previous token with text "
                f"(at {last}); offsets must follow the text in order"
            )
        keys.append(a)
        last = a
    if last < 0:
        raise ValueError("no token has a non-empty character range; offsets do not describe this text")
    return keys


def _char_cuts(text: str, terminators: frozenset[str]) -> list[int]:
    """Character positions where a new piece starts (the start of a whitespace run; see module docstring)."""
    cuts = []
    for m in _WHITESPACE_RUN.finditer(text):
        ws, we = m.span()
        if ws == 0 or we == len(text):  # leading/trailing whitespace: nothing on one side to cut from
            continue
        if "\n" in m.group() or _ends_in_terminator(text, ws, terminators):
            cuts.append(ws)
    return cuts


def _ends_in_terminator(text: str, ws: int, terminators: frozenset[str]) -> bool:
    """Whether the non-whitespace text ending at ``ws`` ends in a terminator (closers skipped)."""
    j = ws - 1
    while j >= 0 and text[j] in _CLOSERS:
        j -= 1
    if j < 0 or text[j] not in terminators:
        return False
    if text[j] != ".":
        return True
    k = j
    while k > 0 and not text[k - 1].isspace():
        k -= 1
    return text[k:j].lstrip(_OPENERS).lower() not in _ABBREVIATIONS


def as_ranges(players: Iterable[Player | tuple[int, int]] | torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` ranges from Players, int pairs or an ``[n, 2]`` integer tensor (not validated:
    :func:`validate_players` checks them against a response).

    Raises:
        TypeError: ``players`` is not a sequence, a tensor is not integer ``[n, 2]``, or an entry (or a
            Player's ``start``/``end``) is not an int.
    """
    if isinstance(players, torch.Tensor):
        if (
            players.dim() != 2
            or players.shape[1] != 2
            or players.dtype.is_floating_point
            or players.dtype.is_complex
            or players.dtype == torch.bool
        ):
            raise TypeError(
                f"player ranges as a tensor must be integer with shape [n, 2], got "
                f"{players.dtype} of shape {tuple(players.shape)}"
            )
        return [(a, b) for a, b in players.tolist()]
    if isinstance(players, (str, bytes, Player)) or not isinstance(players, Iterable):
        raise TypeError(f"players must be a sequence of Players or (start, end) pairs, got {type(players).__name__}")
    ranges = []
    for i, p in enumerate(players):
        try:
            a, b = (p.start, p.end) if isinstance(p, Player) else p
            if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
                raise TypeError
            ranges.append((operator.index(a), operator.index(b)))
        except (TypeError, ValueError):
            raise TypeError(f"player {i} must be a Player or a (start, end) pair of ints, got {p!r}") from None
    return ranges


def _level_ranges(name: str, players: Any) -> list[tuple[int, int]]:
    """:func:`as_ranges` of one level of :func:`hierarchy`, its TypeError prefixed with the level's name."""
    try:
        return as_ranges(players)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None


def _check_sorted(name: str, ranges: list[tuple[int, int]]) -> None:
    try:
        validate_players(ranges, max((e for _, e in ranges), default=0))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _group(
    outer: list[tuple[int, int]], inner: list[tuple[int, int]], inner_name: str, outer_name: str
) -> list[list[int]]:
    """Indices of the inner ranges inside each outer range (both sorted and non-overlapping)."""
    groups: list[list[int]] = [[] for _ in outer]
    o = 0
    for j, (s, e) in enumerate(inner):
        while o < len(outer) and outer[o][1] <= s:
            o += 1
        if o == len(outer) or s < outer[o][0]:
            raise ValueError(f"{inner_name} {j} [{s}, {e}) starts outside every {outer_name}")
        if e > outer[o][1]:
            a, b = outer[o]
            raise ValueError(
                f"{inner_name} {j} [{s}, {e}) straddles the end of {outer_name} {o} [{a}, {b}); "
                f"{inner_name}s must nest inside {outer_name}s"
            )
        groups[o].append(j)
    for i, g in enumerate(groups):
        if not g:
            a, b = outer[i]
            raise ValueError(f"{outer_name} {i} [{a}, {b}) holds no {inner_name}")
    return groups


def _piece_bounds(keys: list[int | None], piece: list[int]) -> list[int]:
    """Token boundaries ``[0, b1, ..., T]`` where the piece changes; empty tokens join the next token with text."""
    t = len(keys)
    owner = [0] * t  # piece of each token, empty tokens take the next token's piece
    nxt = None
    for i in range(t - 1, -1, -1):
        if keys[i] is not None:
            nxt = piece[i]
        owner[i] = nxt if nxt is not None else -1  # -1: trailing empty token, joins the last player
    bounds = [0]
    prev = None
    for i in range(t):
        if owner[i] == -1:
            break
        if prev is not None and owner[i] != prev:
            bounds.append(i)
        prev = owner[i]
    bounds.append(t)
    return bounds


def _cap_spans(
    text: str, pairs: list[tuple[int, int]], keys: list[int | None], bounds: list[int], cap: int
) -> list[int]:
    """Split every piece longer than ``cap`` tokens, evenly and into as few pieces as possible.

    Cuts go at word starts; inside a word longer than ``cap`` tokens, between characters; inside a character
    split over more than ``cap`` tokens, between tokens. A word starts at a whitespace run (whitespace
    attaches to the following piece) or at the start of the text. A cut before a token with text moves left
    over the empty tokens just before it (they join that token), so every piece keeps a token with text.
    """
    ws_starts = [m.start() for m in _WHITESPACE_RUN.finditer(text)]
    run_start = list(range(len(keys)))  # run_start[i]: first of the empty tokens directly before i
    for i in range(1, len(keys)):
        if keys[i - 1] is None:
            run_start[i] = run_start[i - 1]
    out = [0]
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e - s <= cap:
            out.append(e)
            continue
        legal, chars, words = [s], [s], [s]
        prev_key = -1
        for i in range(s, e):
            k = keys[i]
            if k is None:
                continue
            if i > s and run_start[i] > s:
                legal.append(run_start[i])
                if k != prev_key:
                    chars.append(run_start[i])
                    if bisect.bisect_right(ws_starts, k) > bisect.bisect_right(ws_starts, prev_key):
                        words.append(run_start[i])
            prev_key = k
        for level in (legal, chars, words):
            level.append(e)
        allowed = _fill_long_gaps(_fill_long_gaps(words, chars, cap), legal, cap)
        out.extend(_even_cuts(allowed, cap)[1:])
    return out


def _fill_long_gaps(coarse: list[int], fine: list[int], cap: int) -> list[int]:
    """``coarse`` cuts plus every ``fine`` cut inside the gaps of ``coarse`` that are longer than ``cap``."""
    filled = [coarse[0]]
    for a, b in zip(coarse[:-1], coarse[1:]):
        if b - a > cap:
            filled.extend(fine[bisect.bisect_right(fine, a) : bisect.bisect_left(fine, b)])
        filled.append(b)
    return filled


def _even_cuts(allowed: list[int], cap: int) -> list[int]:
    """Choose cuts among ``allowed`` (first..last) with pieces <= cap: fewest pieces, then least sum of squares.

    A gap between neighbouring allowed cuts wider than ``cap`` (only a run of empty tokens can cause one)
    is kept as one piece.
    """
    best: list[tuple[int, int]] = [(0, 0)] * len(allowed)
    back = [0] * len(allowed)
    for j in range(1, len(allowed)):
        best_j = None
        i = j - 1
        while i >= 0 and (i == j - 1 or allowed[j] - allowed[i] <= cap):
            size = allowed[j] - allowed[i]
            cand = (best[i][0] + 1, best[i][1] + size * size)
            if best_j is None or cand < best_j:
                best_j, back[j] = cand, i
            i -= 1
        assert best_j is not None  # the neighbouring cut is always allowed
        best[j] = best_j
    cuts = [allowed[-1]]
    j = len(allowed) - 1
    while j > 0:
        j = back[j]
        cuts.append(allowed[j])
    return cuts[::-1]


def _make_player(text: str, pairs: list[tuple[int, int]], s: int, e: int) -> Player:
    spans = [(a, b) for a, b in pairs[s:e] if a < b]
    cs = spans[0][0]
    ce = max(b for _, b in spans)
    return Player(s, e, cs, ce, text[cs:ce])
