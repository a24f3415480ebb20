"""Tests for scar.game.players: segmentation into token / span / sentence players, validation, hierarchy."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from scar.game.players import (
    DEFAULT_MAX_SPAN_TOKENS,
    KINDS,
    Player,
    hierarchy,
    segment,
    segment_ids,
    segment_text,
    validate_players,
)


def gpt2_like(text: str) -> list[tuple[int, int]]:
    """GPT-2-style offsets: words and single punctuation marks, leading whitespace on the following token."""
    return [m.span() for m in re.finditer(r"\s?\w+|\s?[^\w\s]|\s+", text)]


def texts(players: list[Player]) -> list[str]:
    return [p.text for p in players]


def seg(text: str, kind: str, **kw) -> list[str]:
    return texts(segment(text, gpt2_like(text), kind, **kw))


# --------------------------------------------------------------------------------------------------------
# hand-written examples


def test_token_kind_is_one_player_per_token():
    text = "Hi, you."
    players = segment(text, gpt2_like(text), "token")
    assert [(p.start, p.end) for p in players] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert texts(players) == ["Hi", ",", " you", "."]
    assert [(p.char_start, p.char_end) for p in players] == [(0, 2), (2, 3), (3, 7), (7, 8)]


def test_spans_split_after_punctuation_whitespace_leads_next_piece():
    assert seg("Hello, world; fine: yes. Ok! Go? Now", "span") == [
        "Hello,", " world;", " fine:", " yes.", " Ok!", " Go?", " Now"]


def test_sentences_split_after_terminators_only():
    assert seg("Hi there, you. How are you? Fine! Bye", "sentence") == [
        "Hi there, you.", " How are you?", " Fine!", " Bye"]


def test_closing_quotes_and_brackets_stay_with_the_punctuation():
    assert seg('He said "stop." Then (he left.) Done', "sentence") == ['He said "stop."', " Then (he left.)", " Done"]
    assert seg('A "b," c', "span") == ['A "b,"', " c"]
    # a closing bracket without punctuation before it is no boundary
    assert seg("see (above) and more", "span", max_span_tokens=10) == ["see (above) and more"]


def test_punctuation_without_following_whitespace_is_no_boundary():
    assert seg("Pi is 3.14 and a,b stay. U.S.A is one", "sentence") == ["Pi is 3.14 and a,b stay.", " U.S.A is one"]


def test_abbreviations_do_not_end_sentences_but_other_words_do():
    assert seg("Mr. Smith met Dr. Who. Then Inc. Then", "sentence") == ["Mr. Smith met Dr. Who.", " Then Inc.", " Then"]
    assert seg("Mr. Smith met (e.g. Jones) there", "span", max_span_tokens=20) == ["Mr. Smith met (e.g. Jones) there"]


def test_newlines_split_spans_and_sentences_and_lead_the_next_piece():
    assert seg("item one\nitem two\n\n- three", "sentence") == ["item one", "\nitem two", "\n\n- three"]
    assert seg("item one\nitem two", "span") == ["item one", "\nitem two"]


def test_leading_and_trailing_whitespace_stay_in_the_first_and_last_piece():
    assert seg("  Hi. Bye.  ", "sentence") == ["  Hi.", " Bye.  "]


def test_token_straddling_a_boundary_stays_whole_in_the_earlier_piece():
    text = "Hi. You"
    offsets = [(0, 2), (2, 4), (4, 7)]  # ". " is one token, crossing the cut at the space
    assert texts(segment(text, offsets, "sentence")) == ["Hi. ", "You"]


def test_long_spans_are_split_evenly_at_word_starts():
    text = "one two three four five six seven eight nine ten"
    players = segment(text, gpt2_like(text), "span", max_span_tokens=4)
    assert [p.end - p.start for p in players] in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert "".join(texts(players)) == text
    assert all(p.text.startswith(" ") for p in players[1:])  # cut before a word, its space leading
    assert len(segment(text, gpt2_like(text), "span")) == -(-10 // DEFAULT_MAX_SPAN_TOKENS)


def test_word_longer_than_cap_is_cut_between_characters_not_inside_one():
    text = "ab" + "é" * 3
    # byte-level style: "é" is split over two tokens that share its character range
    offsets = [(0, 1), (1, 2)] + [(i, i + 1) for i in range(2, 5) for _ in range(2)]
    players = segment(text, offsets, "span", max_span_tokens=3)
    assert all(p.end - p.start <= 3 for p in players)
    bounds = {p.start for p in players}
    assert not bounds & {3, 5, 7}  # never between the two halves of one character
    assert "".join(texts(players)) == text


def test_character_split_over_more_tokens_than_cap_is_cut_between_tokens():
    text = "x😀"
    offsets = [(0, 1)] + [(1, 2)] * 4
    players = segment(text, offsets, "span", max_span_tokens=2)
    assert len(players) == 3 and all(p.end - p.start <= 2 for p in players)
    assert players[-1].end == 5


def test_empty_offset_tokens_join_the_next_token_with_text_or_the_last_player():
    text = "Hi. You"
    offsets = [(0, 0), (0, 2), (2, 3), (0, 0), (3, 7), (0, 0), (0, 0)]  # BOS, Hi, ., SEP, ' You', EOS, PAD
    sent = segment(text, offsets, "sentence")
    assert [(p.start, p.end) for p in sent] == [(0, 3), (3, 7)]
    assert texts(sent) == ["Hi.", " You"]
    tok = segment(text, offsets, "token")
    assert [(p.start, p.end) for p in tok] == [(0, 2), (2, 3), (3, 7)]


def test_offsets_that_skip_whitespace_give_player_text_without_it():
    text = "Hello, world. Bye"
    offsets = [(0, 5), (5, 6), (7, 12), (12, 13), (14, 17)]  # Whitespace pre-tokenizer: spaces in no token
    players = segment(text, offsets, "sentence")
    assert texts(players) == ["Hello, world.", "Bye"]
    assert [(p.char_start, p.char_end) for p in players] == [(0, 13), (14, 17)]


def test_tensor_offsets_are_accepted():
    text = "Hi. You"
    assert segment(text, torch.tensor(gpt2_like(text)), "sentence") == segment(text, gpt2_like(text), "sentence")


# --------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (("Hi", [(0, 2)], "word"), {}, r"unknown player kind 'word'; valid kinds are 'token', 'span', 'sentence'"),
        (("", [], "span"), {}, "empty response"),
        (("Hi", [], "span"), {}, "empty response"),
        (("Hi", [(0, 3)], "span"), {}, r"offsets\[0\] = \(0, 3\) is not a character range of the text"),
        (("Hi", [(1, 0)], "span"), {}, r"offsets\[0\] = \(1, 0\)"),
        (("Hi you", [(2, 6), (0, 2)], "span"), {}, r"offsets\[1\] = \(0, 2\) starts before"),
        (("Hi", [(0, 0), (0, 0)], "span"), {}, "no token has a non-empty character range"),
        (("Hi", [(0, 1, 2)], "span"), {}, r"shape \[T, 2\].*entry 0"),
        (("Hi", torch.tensor([[[0, 2]]]), "span"), {}, r"shape \[T, 2\].*\(1, 1, 2\)"),
        (("Hi", [(0, 2)], "sentence"), {"max_span_tokens": 3}, "max_span_tokens applies to kind='span' only"),
        (("Hi", [(0, 2)], "span"), {"max_span_tokens": 0}, "max_span_tokens must be a positive int"),
        (("Hi you", [(0, 2), (2, 6)], "span"), {"n_tokens": 3}, "offsets has 2 pairs but the response has n_tokens=3"),
    ],
)
def test_bad_segment_input_raises_value_error(args, kw, match):
    with pytest.raises(ValueError, match=match):
        segment(*args, **kw)


# --------------------------------------------------------------------------------------------------------
# validate_players


def test_validate_players_returns_gaps():
    assert validate_players([(0, 2), (2, 5)], 5) == []
    assert validate_players([(1, 2), (4, 5)], 7) == [(0, 1), (2, 4), (5, 7)]
    assert validate_players([], 3) == [(0, 3)]
    assert validate_players([Player(0, 2, 0, 4, "abcd"), Player(3, 4, 5, 6, "e")], 4) == [(2, 3)]
    assert validate_players(torch.tensor([[0, 1], [2, 3]]), 3) == [(1, 2)]


@pytest.mark.parametrize(
    ("ranges", "n", "match"),
    [
        ([(0, 2), (2, 2)], 4, r"player 1 \[2, 2\) is empty"),
        ([(0, 2), (1, 3)], 4, r"player 1 \[1, 3\) overlaps player 0 \[0, 2\)"),
        ([(2, 3), (0, 1)], 4, r"player 1 \[0, 1\) is out of order with player 0 \[2, 3\)"),
        ([(0, 2), (3, 5)], 4, r"player 1 \[3, 5\) is outside the response tokens \[0, 4\)"),
        ([(-1, 2)], 4, r"player 0 \[-1, 2\) is outside"),
        ([(0, 1)], -1, "n_tokens must be a non-negative int"),
    ],
)
def test_validate_players_names_the_offending_player(ranges, n, match):
    with pytest.raises(ValueError, match=match):
        validate_players(ranges, n)


def test_validate_players_rejects_non_ranges():
    with pytest.raises(TypeError, match=r"player 1 must be a Player or a \(start, end\) pair of ints"):
        validate_players([(0, 1), "ab"], 3)
    with pytest.raises(TypeError, match="integer with shape"):
        validate_players(torch.tensor([[0.0, 1.0]]), 3)


# --------------------------------------------------------------------------------------------------------
# hierarchy


def test_hierarchy_two_and_three_levels():
    text = "Hi, you. Go now, please!"
    off = gpt2_like(text)
    sents, spans, toks = (segment(text, off, k) for k in ("sentence", "span", "token"))
    assert texts(spans) == ["Hi,", " you.", " Go now,", " please!"]
    assert hierarchy(sents, spans) == [[0, 1], [2, 3]]
    assert hierarchy(sents, spans, toks) == [[[0, 1], [2, 3]], [[4, 5, 6], [7, 8]]]


def test_hierarchy_rejects_straddling_and_empty_groups():
    with pytest.raises(ValueError, match=r"span 1 \[2, 5\) straddles the end of sentence 0 \[0, 3\)"):
        hierarchy([(0, 3), (3, 6)], [(0, 2), (2, 5), (5, 6)])
    with pytest.raises(ValueError, match=r"sentence 1 \[3, 6\) holds no span"):
        hierarchy([(0, 3), (3, 6)], [(0, 3)])
    with pytest.raises(ValueError, match=r"span 1 \[4, 6\) starts outside every sentence"):
        hierarchy([(0, 3), (5, 6)], [(0, 3), (4, 6)])
    with pytest.raises(ValueError, match=r"spans: player 1 \[1, 3\) overlaps"):
        hierarchy([(0, 3)], [(0, 2), (1, 3)])


# --------------------------------------------------------------------------------------------------------
# real tokenizers built locally


CORPUS = [
    "Hello, world. This is a test of the players!",
    'Mr. Smith said: "hi." Then he left the room, quietly; nobody noticed.',
    "Shapley values assign credit to each piece of the response.\nThe reward is dense.",
]


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def wordlevel() -> PreTrainedTokenizerFast:
    words = sorted({w for line in CORPUS for w in re.findall(r"\w+|[^\w\s]", line)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_segment_text_with_bpe(bpe):
    text = "Hello, world. Mr. Smith said: \"hi.\" Then he left é 😀 quietly.<eos>"
    ids, spans = segment_text(bpe, text, "span")
    # response text is read literally: "<eos>" in it is five characters, not the special token
    enc = bpe(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    assert ids == enc["input_ids"] and bpe.eos_token_id not in ids
    assert validate_players(spans, len(ids)) == []
    assert "".join(texts(spans)) == text
    _, sents = segment_text(bpe, text, "sentence")
    assert texts(sents) == ["Hello, world.", ' Mr. Smith said: "hi."', " Then he left é 😀 quietly.<eos>"]
    assert segment_ids(bpe, ids, "sentence") == sents
    # ids that hold the special token itself (what a policy produced) keep it, and its text
    with_eos = bpe(text[:-5], add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]
    assert texts(segment_ids(bpe, with_eos, "sentence")) == texts(sents)
    assert [j for g in hierarchy(sents, spans) for j in g] == list(range(len(spans)))


def test_segment_ids_matches_segment_text_for_canonical_ids(bpe):
    text = "This is a test, of the players. The reward is dense!"
    ids, players = segment_text(bpe, text, "span")
    assert segment_ids(bpe, ids, "span") == players
    assert segment_ids(bpe, torch.tensor(ids), "span") == players


def test_segment_ids_handles_non_canonical_ids(bpe):
    # a policy can sample ids that are not the tokenizer's own split of their text: one id per byte here
    text = "The é, reward. 😀 is dense"
    ids = [i for ch in text for i in bpe.encode(ch, add_special_tokens=False)]
    assert bpe(text, add_special_tokens=False)["input_ids"] != ids  # really non-canonical
    for kind in KINDS:
        players = segment_ids(bpe, ids, kind)
        assert validate_players(players, len(ids)) == []
    sents = segment_ids(bpe, ids, "sentence")
    assert texts(sents) == ["The é, reward.", " 😀 is dense"]
    # the ids holding parts of a character have no characters of their own (scar.game.tokens): they join
    # the id that completes the character, so one token player per character
    toks = segment_ids(bpe, ids, "token")
    assert [p.text for p in toks] == list(text)
    e_players = [p for p in toks if p.text == "é"]
    assert len(e_players) == 1 and e_players[0].end - e_players[0].start == 2
    emoji = [p for p in toks if p.text == "😀"]
    assert len(emoji) == 1 and emoji[0].end - emoji[0].start == 4
    # a span never cuts a character's ids apart
    spans = segment_ids(bpe, ids, "span", max_span_tokens=2)
    assert e_players[0].start + 1 not in {p.start for p in spans}
    assert not {emoji[0].start + k for k in (1, 2, 3)} & {p.start for p in spans}


def test_segment_ids_with_wordlevel_tokenizer(wordlevel):
    ids = wordlevel("Hello, world. Then he left.", add_special_tokens=False)["input_ids"]
    sents = segment_ids(wordlevel, ids, "sentence")
    assert [(p.start, p.end) for p in sents] == [(0, 4), (4, 8)]
    assert validate_players(segment_ids(wordlevel, ids, "span"), len(ids)) == []


class _CharTokenizer(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer: it has no character offsets."""

    def __init__(self, **kw):
        self.vocab = {chr(i): i for i in range(32, 127)}
        super().__init__(**kw)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index)


def test_slow_tokenizer_is_a_type_error():
    slow = _CharTokenizer()
    with pytest.raises(TypeError, match="_CharTokenizer cannot return character offsets"):
        segment_ids(slow, [104, 105], "span")
    with pytest.raises(TypeError, match="fast"):
        segment_text(slow, "hi", "span")


def test_segment_ids_bad_ids(bpe):
    with pytest.raises(ValueError, match="empty response"):
        segment_ids(bpe, [], "span")
    with pytest.raises(TypeError, match="1-D integer tensor"):
        segment_ids(bpe, torch.tensor([[1, 2]]), "span")


# --------------------------------------------------------------------------------------------------------
# properties on random texts

_PIECES = ["a", "bc", "def", "Mr", "3", "é", "😀", " ", "  ", "\n", ",", ".", "!", "?", ";", ":", '"', ")", "(", "'"]
_text = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=40).map("".join)


@st.composite
def _tokenised(draw):
    """A text and offsets: GPT-2-like tokens, randomly merged, split within a character, or padded with empty ones."""
    text = draw(_text)
    base = gpt2_like(text)
    offsets: list[tuple[int, int]] = []
    i = 0
    while i < len(base):
        a, b = base[i]
        if i + 1 < len(base) and draw(st.integers(0, 4)) == 0:  # merge with the next token
            b = base[i + 1][1]
            i += 1
        if b - a == 1 and draw(st.integers(0, 3)) == 0:  # one character over several tokens (byte-level style)
            offsets.extend([(a, b)] * draw(st.integers(2, 4)))
        else:
            offsets.append((a, b))
        if draw(st.integers(0, 6)) == 0:
            offsets.append((0, 0))
        i += 1
    if draw(st.booleans()):
        offsets.insert(0, (0, 0))
    return text, offsets


def _check_partition(players: list[Player], text: str, offsets: list[tuple[int, int]]) -> None:
    assert players[0].start == 0 and players[-1].end == len(offsets)
    assert all(p.start < p.end for p in players)
    assert all(p.end == q.start for p, q in zip(players, players[1:]))
    for p in players:
        nonempty = [(a, b) for a, b in offsets[p.start:p.end] if a < b]
        assert nonempty, "every player holds a token with text"
        assert p.char_start == nonempty[0][0] and p.char_end == max(b for _, b in nonempty)
        assert p.text == text[p.char_start:p.char_end]


@settings(max_examples=150, deadline=None)
@given(_tokenised(), st.integers(1, 8))
def test_players_partition_and_nest(data, cap):
    text, offsets = data
    sents = segment(text, offsets, "sentence")
    spans = segment(text, offsets, "span", max_span_tokens=cap)
    toks = segment(text, offsets, "token")
    for players in (sents, spans, toks):
        _check_partition(players, text, offsets)
        assert validate_players(players, len(offsets)) == []
    assert len(toks) == sum(a < b for a, b in offsets)
    # spans respect the cap unless one token with text and the empty tokens joining it exceed it
    assert all(p.end - p.start <= cap or sum(a < b for a, b in offsets[p.start:p.end]) == 1 for p in spans)
    groups = hierarchy(sents, spans)
    assert [j for g in groups for j in g] == list(range(len(spans)))
    for i, g in enumerate(groups):
        assert all(sents[i].start <= spans[j].start and spans[j].end <= sents[i].end for j in g)
    nested = hierarchy(sents, spans, toks)
    assert [k for g in nested for s in g for k in s] == list(range(len(toks)))
    assert [len(s) for g in nested for s in g] == [sum(1 for t in toks if sp.start <= t.start < sp.end) for sp in spans]


@settings(max_examples=60, deadline=None)
@given(_text, st.sampled_from(KINDS))
def test_bpe_players_partition_and_cover_the_text(bpe, text, kind):
    ids, players = segment_text(bpe, text, kind)
    offsets = bpe(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    _check_partition(players, text, offsets)
    if kind != "token":  # byte-level offsets cover the text without overlap between players
        assert "".join(texts(players)) == text
    assert segment_ids(bpe, ids, kind) == players
    # sampled ids need not be the tokenizer's own split: one id per character (per byte for non-ASCII)
    split_ids = [i for ch in text for i in bpe.encode(ch, add_special_tokens=False)]
    split_players = segment_ids(bpe, split_ids, kind)
    assert validate_players(split_players, len(split_ids)) == []
    assert all(p.text == text[p.char_start:p.char_end] for p in split_players)
    if kind != "token":
        assert "".join(texts(split_players)) == text
        # the same text gives the same pieces whatever the tokenisation, when no cap is involved
        if kind == "sentence":
            assert texts(split_players) == texts(players)


# --------------------------------------------------------------------------------------------------------
# arguments of the wrong kind name the argument


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: segment("Hi", None), TypeError, "offsets must be"),
        (lambda: segment("Hi", 5), TypeError, "offsets must be"),
        (lambda: segment("Hi", [(0, 2)], n_tokens="1"), TypeError, "n_tokens must be an int"),
        (lambda: validate_players(5, 3), TypeError, "players must be"),
        (lambda: validate_players(None, 3), TypeError, "players must be"),
        (lambda: validate_players([Player(0.5, 1, 0, 0, "")], 3), TypeError, "player 0"),
        (lambda: validate_players(torch.tensor([[False, True]]), 3), TypeError, "integer with shape"),
        (lambda: validate_players(torch.zeros(1, 2, dtype=torch.complex64), 3), TypeError, "integer with shape"),
        (lambda: hierarchy(None, [(0, 1)]), TypeError, "sentences: players must be"),
        (lambda: hierarchy([(0, 3)], [(0, 1), "x"]), TypeError, "spans: player 1 must be"),
        (lambda: hierarchy([(0, 3)], [(0, 1)], tokens=[[0]]), TypeError, "tokens: player 0 must be"),
    ],
)
def test_bad_argument_kinds_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_validate_players_accepts_numpy_ints():
    import numpy as np

    assert validate_players([(np.int64(0), np.int32(1))], np.int64(3)) == [(1, 3)]
