"""Shared test helper: small fast tokenizers trained on a few sentences (no downloads)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# The training text of :func:`build_tokenizer`: short film reviews, so the test responses use merged tokens.
TEXTS = [
    "The movie was great, and the actors were wonderful.",
    "I did not like the ending; it was slow.",
    "What a terrible, boring film! Never again.",
    "The music is lovely. The plot is thin.",
]


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on :data:`TEXTS`.

    Special tokens: ``<pad>`` (id 0) and ``<eos>`` (id 1). Different vocabulary sizes give different
    merges, hence a second tokenization of the same text (a policy tokenizer unlike the reward model's).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


STORY_WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log",
    "red", "blue", "big", "small", "happy", "sad", "and", "then", "it", "was",
]
"""The vocabulary of the TRL and verl tests' word-level policies (:func:`word_level_tokenizer`)."""
WORD_PAD, WORD_EOS = 0, 1
""":func:`word_level_tokenizer`'s pad and EOS ids."""


def word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace-split word-level tokenizer: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, then ``words``.

    One token per word makes token ids easy to reason about (the TRL tests' policy vocabulary); text
    made of whitespace only encodes to no tokens at all.
    """
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
