"""The benchmark's word-level vocabulary: its special ids and the tokenizer built locally over it.

Ids 0 ``[PAD]``, 1 ``[ABSENT]`` and 2 ``[EOS]`` are special; ids ``3 .. vocab_size - 1`` are synthetic
pronounceable words. Pre-tokenisation splits on whitespace, so one word is one token and text round trips
exactly: text-based peers (shap's Text masker) and id-based engines score identical sequences. The
random-weight workloads (:mod:`scar_bench.workloads`) and the trained lexicon world
(:mod:`scar_bench.lexicon`) share it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["PAD_ID", "ABSENT_ID", "EOS_ID", "N_SPECIAL", "VOCAB_SIZE", "build_tokenizer"]

PAD_ID, ABSENT_ID, EOS_ID = 0, 1, 2
"""Special ids: padding, the marker captum and shap put on absent tokens (deleted before scoring), and the
end-of-sequence suffix every coalition sequence ends with."""
N_SPECIAL = 3
VOCAB_SIZE = 1024


def _word(i: int) -> str:
    """Deterministic pronounceable word number ``i`` (two or three syllables)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syll = [c + v for c in consonants for v in vowels]
    a, rest = i % len(syll), i // len(syll)
    b, rest = rest % len(syll), rest // len(syll)
    return syll[a] + syll[b] + (syll[rest - 1] if rest else "")


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A word-level ``PreTrainedTokenizerFast`` built locally: ``[PAD]``, ``[ABSENT]``, ``[EOS]`` and
    ``vocab_size - 3`` synthetic words; whitespace pre-tokenisation, so one word is one token and
    ``decode`` joins tokens with spaces (text round trips exactly)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= N_SPECIAL:
        raise ValueError(f"vocab_size must be an int > {N_SPECIAL}, got {vocab_size!r}")
    vocab = {"[PAD]": PAD_ID, "[ABSENT]": ABSENT_ID, "[EOS]": EOS_ID}
    for i in range(vocab_size - N_SPECIAL):
        vocab[_word(i)] = N_SPECIAL + i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[ABSENT]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]",
                                   unk_token="[ABSENT]")
