"""The tokenization convention (:mod:`scar.game.tokens`): pairs, offsets, id checks, moving values between
tokenizations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scar.game.tokens import as_token_ids, encode_pair, encode_text, map_to_tokens, token_offsets

from tiny_tokenizers import build_tokenizer, word_level_tokenizer

PROMPTS = ["Review:", "Tell me what you think of the film. Answer:"]
RESPONSES = [" It was great, and lovely!", " Boring."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(300)


def test_token_offsets_cover_decoded_text(tokenizer):
    ids = tokenizer(" great, and lovely!", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    text, offs = token_offsets(tokenizer, ids, skip_special_tokens=True)
    assert text == " great, and lovely!"
    assert offs[0][0] == 0 and offs[-2][1] == len(text) and offs[-1] == (len(text), len(text))
    assert "".join(text[a:b] for a, b in offs) == text



def test_encode_pair_empty_response_only_when_allowed(tokenizer):
    enc = encode_pair(tokenizer, PROMPTS[0], "", allow_empty=True, suffix_ids=[1])
    assert (enc.response_ids, enc.text, enc.offsets) == ([], "", [])
    assert enc.ids == tokenizer(PROMPTS[0])["input_ids"] + [1]
    assert encode_pair(tokenizer, PROMPTS[0], [], allow_empty=True).response_ids == []
    # text that a word-level tokenizer drops entirely keeps its text (to be checked against the policy's ids)
    words = word_level_tokenizer(["review", "good"])
    blank = encode_pair(words, "review", "  ", allow_empty=True)
    assert blank.response_ids == [] and blank.text == "  "
    with pytest.raises(ValueError, match="no tokens"):
        encode_pair(words, "review", "  ")
    with pytest.raises(ValueError, match="response is empty"):
        encode_pair(tokenizer, PROMPTS[0], "")


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
    for (_a, b), rew in zip(src, rewards.tolist()):
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


# --------------------------------------------------------------------------------------------------------
# bad ids, bytes, special-token text


@pytest.mark.parametrize("value", [b"abc", bytearray(b"abc"), memoryview(b"abc"), "abc", {1: 2}, {3, 1}])
def test_as_token_ids_refuses_text_bytes_and_unordered_containers(value):
    with pytest.raises(TypeError, match="ids must be"):
        as_token_ids(value, "ids")


@pytest.mark.parametrize("bad", [-1, -(2**70), 2**63, 2**70])
def test_as_token_ids_refuses_ids_outside_int64_and_negative(bad):
    with pytest.raises(ValueError, match=rf"ids has token id {bad} outside"):
        as_token_ids([5, bad], "ids")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
        as_token_ids([5, 10], "ids", vocab_size=10)
    assert as_token_ids([0, 2**63 - 1], "ids") == [0, 2**63 - 1]


def test_as_token_ids_vocab_size_is_checked():
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        as_token_ids([1], "ids", vocab_size="10")


def test_bytes_prompt_or_response_is_refused_in_every_path(tokenizer):
    for prompt, response in ((b"Review:", " good"), ("Review:", b" good"), (bytearray(b"x"), " good")):
        with pytest.raises(TypeError, match=r"must be a str or token ids, got (bytes|bytearray)"):
            encode_pair(tokenizer, prompt, response)
    with pytest.raises(TypeError, match="ids must be"):
        token_offsets(tokenizer, b"abc")
    with pytest.raises(TypeError, match="text must be a str"):
        encode_text(tokenizer, b"abc")


@pytest.mark.parametrize("bad", [-1, 2**40, 2**63, 2**70])
def test_ids_the_tokenizer_cannot_decode_are_value_errors(tokenizer, bad):
    with pytest.raises(ValueError, match=rf"(ids|response) has token id {bad}"):
        token_offsets(tokenizer, [5, bad])
    with pytest.raises(ValueError, match=rf"response has token id {bad}"):
        encode_pair(tokenizer, "Review:", [5, bad])
    if bad < 0 or bad >= 2**63:  # prompt ids are not decoded: the scorer checks them against its vocabulary
        with pytest.raises(ValueError, match=rf"prompt has token id {bad}"):
            encode_pair(tokenizer, [5, bad], " good")


@pytest.mark.parametrize("kind", ["bpe", "words"])
def test_special_token_text_in_a_response_stays_text(kind):
    """Text that spells a special token is scored as that text: a policy cannot hide its response
    behind ``<pad>`` or ``<eos>``. The prompt keeps the tokenizer's own behaviour; ids stay ids."""
    tok = build_tokenizer(300) if kind == "bpe" else word_level_tokenizer(["review", "good", "x"])
    specials = {tok.pad_token_id, tok.eos_token_id}  # (a word-level tokenizer reads unknown words as <unk>)
    for text in (" <pad><pad>", "<eos>", " good <eos> x", "<pad>"):
        enc = encode_pair(tok, "review", text)
        assert not specials & set(enc.response_ids), (text, enc.response_ids)
        assert enc.text == text and len(enc.offsets) == len(enc.response_ids)
        ids, _offsets = encode_text(tok, text)
        assert ids == enc.response_ids and not specials & set(ids)
    # the prompt is the user's template: special-token text there is the special token
    assert tok.eos_token_id in encode_pair(tok, "review <eos>", " good").prompt_ids
    # a response given as ids is what the policy produced, special tokens included
    given = encode_pair(tok, "review", [tok.convert_tokens_to_ids("good"), tok.eos_token_id] if kind == "words"
                        else tok(" good", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert given.response_ids[-1] == tok.eos_token_id


def test_map_to_tokens_refuses_non_integer_offsets_and_non_real_values():
    with pytest.raises(TypeError, match="src_offsets"):
        map_to_tokens([1.0], [(0.5, 1.7)], [(0, 2)])
    with pytest.raises(TypeError, match="dst_offsets"):
        map_to_tokens([1.0], [(0, 1)], torch.tensor([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="src_offsets"):
        map_to_tokens([1.0], [(0, 2**70)], [(0, 2)])
    with pytest.raises(TypeError, match="token_rewards_src"):
        map_to_tokens(["a"], [(0, 1)], [(0, 2)])
    with pytest.raises(TypeError, match="token_rewards_src"):
        map_to_tokens(torch.ones(1, dtype=torch.complex64), [(0, 1)], [(0, 2)])
    with pytest.raises(TypeError, match="src_offsets"):
        map_to_tokens([1.0], None, [(0, 2)])
    with pytest.raises(ValueError, match="token_rewards_src"):
        map_to_tokens([1e308, 1e308], [(0, 1), (1, 2)], [(0, 2)])



def _prefix_decode_offsets(tokenizer, ids, skip):
    """The prefix-decode rule of token_offsets spelled out with ``tokenizer.decode`` alone."""
    text = tokenizer.decode(ids, skip_special_tokens=skip)
    offsets, prev = [], 0
    for i in range(len(ids)):
        part = tokenizer.decode(ids[: i + 1], skip_special_tokens=skip)
        k = 0
        while k < min(len(part), len(text)) and part[k] == text[k]:
            k += 1
        offsets.append((prev, max(prev, k)))
        prev = max(prev, k)
    return text, offsets


@pytest.mark.parametrize("skip", [True, False])
def test_token_offsets_of_sampled_ids_follow_the_prefix_decode_rule(tokenizer, skip):
    """Ids that are not the tokenizer's own split of their text (sampled ids, split multi-byte characters,
    special tokens mid-text) get the offsets of decoding every prefix with ``tokenizer.decode``."""
    gen = torch.Generator().manual_seed(0)
    text_ids = tokenizer(" Café naïve — 😀 great! 日本 🎬", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    cases = [text_ids + [eos], [eos] + text_ids[:5] + [0] + text_ids[5:], text_ids[3:] + text_ids[:3]]
    cases += [torch.randint(0, tokenizer.vocab_size, (12,), generator=gen).tolist() for _ in range(30)]
    words = word_level_tokenizer(["good", "film"])
    for tok, ids in [(tokenizer, ids) for ids in cases] + [(words, [3, 1, 4]), (words, [1, 1]), (words, [4, 3])]:
        text = tok.decode(ids, skip_special_tokens=skip)
        if not skip and tok(text, add_special_tokens=False)["input_ids"] == ids:
            continue  # the tokenizer's own split: its own offsets are used
        assert token_offsets(tok, ids, skip_special_tokens=skip) == _prefix_decode_offsets(tok, ids, skip)
    # a character split into its UTF-8 bytes: the pieces before the last get empty ranges
    byte_ids = [tokenizer.convert_tokens_to_ids(c) for c in "ðŁĺĢ"]  # the four bytes of 😀
    assert token_offsets(tokenizer, byte_ids + [eos], skip_special_tokens=True) == (
        "😀",
        [(0, 0), (0, 0), (0, 0), (0, 1), (1, 1)],
    )


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab cé—😀日!.,\n")), min_size=0, max_size=24),
    where=st.lists(st.integers(min_value=0, max_value=30), max_size=3),
)
def test_offsets_of_an_own_split_with_skipped_special_tokens_follow_the_prefix_decode_rule(tokenizer, text, where):
    """The tokenizer's own split of a text with special tokens anywhere (a completion ending in EOS): its own
    offsets, read as the prefix-decode rule reads them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for w in where:
        ids.insert(min(w, len(ids)), tokenizer.eos_token_id)
    if not ids:
        return
    assert token_offsets(tokenizer, ids, skip_special_tokens=True) == _prefix_decode_offsets(tokenizer, ids, True)
    words = word_level_tokenizer(["good", "film"])
    word_ids = [w % 5 for w in where] + [3, 4]
    assert token_offsets(words, word_ids, skip_special_tokens=True) == _prefix_decode_offsets(words, word_ids, True)
