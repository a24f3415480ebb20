"""The one tokenization convention: what the reward model scores, where each token's characters lie, and
how per-token values move between two tokenizations of the same text.

What the reward model scores for a (prompt, response) pair is ``prompt_ids ⊕ response_ids ⊕ suffix_ids``:

* ``prompt_ids``: the tokenizer's encoding of the prompt *with* its special tokens (BOS, or CLS ... SEP),
  or the given ids;
* ``response_ids``: the encoding of the response text *without* special tokens (its character offsets
  locate the players), or the given ids. Response text is read literally: text that spells a special
  token (``"<eos>"``) is encoded as those characters, so a policy cannot write text the reward model
  would not see;
* ``suffix_ids``: what the reward model's template appends after the response (e.g. ``[eos]``).

Prompt and response are tokenized separately, so the token boundary between them is where the strings
meet (give the response its leading space if the reward model expects one).

Character offsets (:func:`token_offsets`): token ``i`` covers ``text[a:b]``. A token that holds only part
of a multi-byte character, or decodes to nothing (a special token when special tokens are skipped), gets
the empty range ``(a, a)`` at its position; the token that completes the character carries it. So the
ranges of a response's tokens never overlap and their concatenation is the decoded text. Offsets given by a
fast tokenizer for text (byte-level tokenizers give every piece of a split character the whole
character's range) are brought to the same convention.

:func:`map_to_tokens` moves per-token values onto another tokenization through these offsets;
:func:`to_policy_tokens` does it for the policy's completion tokens, where dense rewards are consumed.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scar._checks import as_int

__all__ = [
    "MAX_TOKEN_ID",
    "Encoded",
    "IdsLike",
    "as_token_ids",
    "require_fast_tokenizer",
    "token_offsets",
    "encode_text",
    "encode_pair",
    "check_length",
    "map_to_tokens",
    "policy_offsets",
    "to_policy_tokens",
]

IdsLike = torch.Tensor | Sequence[int]
"""Token ids: a 1-D integer tensor or a sequence of ints."""


@dataclass
class Encoded:
    """One (prompt, response) pair tokenized for the reward model.

    ``offsets[t]`` is the character range of ``response_ids[t]`` in ``text`` (the response text).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    suffix_ids: list[int]
    text: str
    offsets: list[tuple[int, int]]

    @property
    def ids(self) -> list[int]:
        """The full sequence the reward model scores."""
        return self.prompt_ids + self.response_ids + self.suffix_ids


MAX_TOKEN_ID = 2**63 - 1
"""Largest token id accepted without a vocabulary: ids are int64 wherever they become tensors."""


def as_token_ids(value: Any, name: str, *, vocab_size: int | None = None, allow_empty: bool = True) -> list[int]:
    """Token ids as a list of ints, checked: a 1-D integer tensor, array or sequence of ints.

    Raises:
        TypeError: a string, bytes, a set or mapping, a float/bool tensor, a nested sequence, non-integers,
            or a ``vocab_size`` that is not an int.
        ValueError: an empty sequence when ``allow_empty`` is False, or an id outside ``[0, vocab_size)``
            (``[0, 2**63)`` without a vocabulary).
    """
    if isinstance(value, (str, bytes, bytearray, memoryview, AbstractSet, Mapping)):
        raise TypeError(
            f"{name} must be token ids (a 1-D integer tensor or a list of ints), got {type(value).__name__}"
        )
    if vocab_size is not None and as_int(vocab_size, "vocab_size") < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool or value.dim() != 1:
            raise TypeError(
                f"{name} must be a 1-D integer tensor or a list of ints, got a {value.dtype} tensor "
                f"of shape {tuple(value.shape)}"
            )
        ids = [int(v) for v in value.tolist()]
    elif type(value) is list and all(type(v) is int for v in value):  # already a list of ints (bools excluded)
        ids = list(value)
    else:
        if not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
            raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints, got {type(value).__name__}")
        ids = []
        for v in value:
            if isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must hold ints, got a bool")
            try:
                ids.append(operator.index(v))
            except TypeError:
                raise TypeError(
                    f"{name} must be a flat sequence of integer token ids, got an element of type {type(v).__name__}"
                ) from None
    if not ids and not allow_empty:
        raise ValueError(f"{name} is empty")
    if ids:
        low, high = min(ids), max(ids)
        if vocab_size is not None and (low < 0 or high >= vocab_size):
            raise ValueError(f"{name} has token id {low if low < 0 else high} outside the vocabulary [0, {vocab_size})")
        if low < 0 or high > MAX_TOKEN_ID:
            bad = low if low < 0 else high
            raise ValueError(f"{name} has token id {bad} outside the range of token ids [0, 2**63)")
    return ids


def _refuse_bytes(value: Any, name: str) -> None:
    """TypeError for bytes given where text or token ids are expected (bytes would iterate as ids)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a str or token ids, got {type(value).__name__}: decode it to str first")


def require_fast_tokenizer(tokenizer: Any, role: str = "") -> None:
    """TypeError unless ``tokenizer`` is a fast (``tokenizers``-backed) tokenizer, which can give offsets."""
    if not getattr(tokenizer, "is_fast", False):
        what = f"the {role} tokenizer ({type(tokenizer).__name__})" if role else type(tokenizer).__name__
        raise TypeError(
            f"{what} cannot return character offsets (return_offsets_mapping needs a fast, tokenizers-backed "
            "tokenizer such as PreTrainedTokenizerFast); load it with AutoTokenizer.from_pretrained(..., "
            "use_fast=True)"
        )


def _one_owner_per_character(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Tokenizer offsets in this module's convention: of consecutive tokens reporting the same non-empty
    range (pieces of one split character), all but the last get the empty range at its start."""
    out = list(pairs)
    for i in range(len(out) - 1):
        a, b = out[i]
        if a < b and out[i + 1] == (a, b):
            out[i] = (a, a)
    return out


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The ids of ``text`` without special tokens, and each token's character range (module convention).

    The text is read literally: a piece of it that spells a special token (``"<eos>"``, ``"<pad>"``) is
    encoded as those characters, never as the special token (``split_special_tokens=True``), so a response
    cannot hide text from the reward model or end itself early.

    Raises:
        TypeError: ``text`` is not a str, or the tokenizer is not a fast tokenizer.
    """
    require_fast_tokenizer(tokenizer)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _encode(tokenizer, text, literal=True)


def _encode(tokenizer: Any, text: str, *, literal: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and offsets of ``text`` without added special tokens; ``literal``: special-token text stays text."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=literal)
    ids = [int(i) for i in enc["input_ids"]]
    return ids, _one_owner_per_character([(int(a), int(b)) for a, b in enc["offset_mapping"]])


def token_offsets(
    tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` and give each token its character range in the decoded text.

    The tokenizer's own offsets are used when re-encoding the text gives back exactly ``ids`` (one encode).
    Otherwise (sampled ids are often not the tokenizer's own split of their text) token ``i`` ends where
    the decoding of ``ids[:i+1]`` stops agreeing with the full text (``T`` prefix decodes). Either way the
    offsets follow the module's convention (pieces of a character and tokens that decode to nothing get an
    empty range).

    Args:
        tokenizer: a tokenizer with ``decode`` (a fast one for the single-encode path).
        ids: the token ids (:func:`as_token_ids`).
        skip_special_tokens: decode without special tokens (as TRL decodes completions); they then get
            empty ranges.

    Returns:
        ``(text, offsets)`` with ``text = tokenizer.decode(ids, skip_special_tokens=...)``.

    Raises:
        TypeError: ``ids`` are not token ids (text, bytes, floats...).
        ValueError: a negative id, or one the tokenizer cannot decode.
    """
    return _offsets_of_ids(tokenizer, ids, "ids", skip_special_tokens)


def _offsets_of_ids(
    tokenizer: Any, ids: Any, name: str, skip_special_tokens: bool
) -> tuple[str, list[tuple[int, int]]]:
    ids = as_token_ids(ids, name)
    try:
        text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    except OverflowError:  # tokenizers-backed tokenizers hold ids as u32
        raise ValueError(f"{name} has token id {max(ids)} outside what the tokenizer can decode") from None
    if getattr(tokenizer, "is_fast", False):
        # the tokenizer's own reading of the text: ids holding special tokens come back as such, and special
        # tokens that the decoding skipped come back as nothing
        skipped = set(getattr(tokenizer, "all_special_ids", ()) or ()) if skip_special_tokens else set()
        kept = [i for i in ids if i not in skipped]
        enc_ids, enc_offsets = _encode(tokenizer, text, literal=False)
        if enc_ids == kept:
            if not skip_special_tokens:
                return text, enc_offsets
            if kept:
                return text, _prefix_ranges(ids, skipped, enc_offsets, len(text))
    backend = _plain_backend(tokenizer)
    if backend is not None:  # what tokenizer.decode returns, without its per-call Python overhead
        decode = backend.decode
    else:
        decode = tokenizer.decode
    offsets: list[tuple[int, int]] = []
    prev = 0
    for i in range(len(ids)):
        part = decode(ids[: i + 1], skip_special_tokens=skip_special_tokens)
        if text.startswith(part):  # the common case: the prefix decodes to a prefix of the text
            k = len(part)
        else:
            k, limit = 0, min(len(part), len(text))
            while k < limit and part[k] == text[k]:
                k += 1
        k = max(prev, k)
        offsets.append((prev, k))
        prev = k
    return text, offsets


def _prefix_ranges(
    ids: list[int], skipped: set[int], own: list[tuple[int, int]], n_chars: int
) -> list[tuple[int, int]]:
    """The prefix-decode ranges of ``ids`` when their non-skipped tokens are the tokenizer's own split of the
    text (offsets ``own``, one per such token): each token starts where the one before it ends (a character
    no token owns, e.g. a space a word-level tokenizer drops, goes to the token after it), the last
    non-skipped token ends the text, and skipped special tokens get the empty range where they stand."""
    last = max(i for i, t in enumerate(ids) if t not in skipped)
    spans = iter(own)
    out, end = [], 0
    for i, t in enumerate(ids):
        if t in skipped:
            out.append((end, end))
            continue
        stop = n_chars if i == last else max(end, next(spans)[1])
        out.append((end, stop))
        end = stop
    return out


def _stock_decode_methods() -> tuple[Any, ...]:
    """transformers' own ``decode`` and fast ``_decode`` (empty when transformers lacks them)."""
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        return ()
    decode = PreTrainedTokenizerBase.__dict__.get("decode")
    fast = next((c.__dict__["_decode"] for c in PreTrainedTokenizerFast.__mro__ if "_decode" in c.__dict__), None)
    return () if decode is None or fast is None else (decode, fast)


_STOCK_DECODE: tuple[Any, ...] | None = None


def _plain_backend(tokenizer: Any) -> Any | None:
    """The ``tokenizers.Tokenizer`` whose ``decode`` gives exactly what ``tokenizer.decode`` gives, or None.

    That is a transformers fast tokenizer whose ``decode`` and ``_decode`` are transformers' own (no
    subclass overrides them) and that does not clean up tokenization spaces: its ``decode`` then returns
    the backend's decoding unchanged.
    """
    global _STOCK_DECODE
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or type(backend).__module__.split(".")[0] != "tokenizers" or not hasattr(backend, "decode"):
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", True) is not False:
        return None
    if _STOCK_DECODE is None:
        _STOCK_DECODE = _stock_decode_methods()
    if not _STOCK_DECODE:
        return None
    cls = type(tokenizer)
    decode = next((c.__dict__["decode"] for c in cls.__mro__ if "decode" in c.__dict__), None)
    private = next((c.__dict__["_decode"] for c in cls.__mro__ if "_decode" in c.__dict__), None)
    if (decode, private) != _STOCK_DECODE or "decode" in vars(tokenizer) or "_decode" in vars(tokenizer):
        return None
    return backend


def encode_pair(
    tokenizer: Any,
    prompt: str | IdsLike,
    response: str | IdsLike,
    *,
    suffix_ids: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> Encoded:
    """Tokenize one (prompt, response) pair by the module's convention.

    Args:
        tokenizer: the reward model's fast tokenizer.
        prompt, response: text (``str``), or token ids of the reward model; bytes are refused. Prompt text
            is encoded as the tokenizer does by default (special-token text in it is the special token: the
            prompt is the caller's template); response text literally (:func:`encode_text`).
        suffix_ids: tokens appended after the response.
        allow_empty: accept an empty response (``""``, no ids, or text the tokenizer encodes to no tokens):
            the reward model then scores ``prompt ⊕ suffix``. Credit methods allow it only for a completion
            given with the policy's ``completion_ids`` (a trainer's completion that is only EOS decodes to
            ``""``).

    Raises:
        TypeError: the tokenizer is not a fast tokenizer, or an input has the wrong type (bytes included).
        ValueError: the prompt is empty, or the response is empty and ``allow_empty`` is False; an id
            that is negative or that the tokenizer cannot decode.
    """
    require_fast_tokenizer(tokenizer, "reward-model")
    _refuse_bytes(prompt, "prompt")
    _refuse_bytes(response, "response")
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty")
        prompt_ids = [int(i) for i in tokenizer(prompt, add_special_tokens=True)["input_ids"]]
    else:
        prompt_ids = as_token_ids(prompt, "prompt")
    if not prompt_ids:
        raise ValueError("prompt is empty (no tokens)")
    suffix = [] if suffix_ids is None else as_token_ids(suffix_ids, "suffix_ids")
    if isinstance(response, str):
        if not response and not allow_empty:
            raise ValueError(
                "response is empty (an empty completion can be scored only with the policy's "
                "completion_ids, as a trainer passes them)"
            )
        response_ids, offsets = encode_text(tokenizer, response) if response else ([], [])
        text = response
    else:
        response_ids = as_token_ids(response, "response")
        text, offsets = _offsets_of_ids(tokenizer, response_ids, "response", False) if response_ids else ("", [])
    if not response_ids and not allow_empty:
        raise ValueError(f"response is empty (no tokens): {response!r}")
    return Encoded(prompt_ids, response_ids, suffix, text, offsets)


def check_length(max_positions: int | None, enc: Encoded, index: int, vocab_size: int | None = None) -> None:
    """ValueError when prompt + response + suffix is longer than the reward model's ``max_positions``, or
    (with ``vocab_size``) holds an id outside its vocabulary."""
    if vocab_size is not None:
        for name, ids in (("prompt", enc.prompt_ids), ("response", enc.response_ids), ("suffix", enc.suffix_ids)):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(
                    f"response {index}: the {name} has token id {bad[0]} outside the reward model's vocabulary "
                    f"[0, {vocab_size})"
                )
    n = len(enc.ids)
    if max_positions is not None and n > max_positions:
        raise ValueError(
            f"response {index} is too long for the reward model: prompt {len(enc.prompt_ids)} + response "
            f"{len(enc.response_ids)} + suffix {len(enc.suffix_ids)} = {n} tokens > {max_positions} positions"
        )


def _offsets_tensor(offsets: Any, name: str) -> torch.Tensor:
    """``[T, 2]`` int64 offsets: TypeError for non-integers (never truncated), ValueError for a wrong shape,
    a value beyond int64, ``char_end < char_start`` or a negative offset."""
    if isinstance(offsets, torch.Tensor):
        if offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer character offsets, got a {offsets.dtype} tensor")
        t = offsets.to(torch.long)
    else:
        if isinstance(offsets, (str, bytes)) or not hasattr(offsets, "__iter__"):
            raise TypeError(f"{name} must be a list of (char_start, char_end) pairs, got {type(offsets).__name__}")
        rows = list(offsets.tolist() if isinstance(offsets, np.ndarray) else offsets)
        pairs = _int_pairs(rows)
        if pairs is None:
            pairs = _checked_pairs(rows, name)
        t = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    if t.numel() == 0:
        return t.reshape(0, 2)
    if t.dim() != 2 or t.shape[1] != 2:
        raise ValueError(f"{name} must be a list of (char_start, char_end) pairs, got shape {tuple(t.shape)}")
    if bool((t[:, 1] < t[:, 0]).any()) or bool((t < 0).any()):
        raise ValueError(f"{name} has a pair with char_end < char_start or a negative offset")
    return t


def _int_pairs(rows: list[Any]) -> list[Any] | None:
    """``rows`` when every entry is a tuple of two ints within int64 (what this module's offsets are), so
    they need no per-entry checks; None otherwise."""
    for pair in rows:
        if type(pair) is not tuple or len(pair) != 2:
            return None
        a, b = pair
        if type(a) is not int or type(b) is not int or not (-(2**63) <= a < 2**63 and -(2**63) <= b < 2**63):
            return None
    return rows


def _checked_pairs(rows: list[Any], name: str) -> list[tuple[int, int]]:
    """``rows`` as ``(int, int)`` pairs, each entry checked (see :func:`_offsets_tensor`)."""
    checked: list[tuple[int, int]] = []
    for i, pair in enumerate(rows):
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            width = len(pair) if hasattr(pair, "__len__") else "no"
            raise ValueError(f"{name} must be a list of (char_start, char_end) pairs; entry {i} has {width} values")
        try:
            if any(isinstance(x, (bool, np.bool_)) for x in pair):
                raise TypeError
            a, b = (operator.index(x) for x in pair)
        except TypeError:
            raise TypeError(f"{name} must hold integer character offsets; entry {i} is {pair!r}") from None
        if not (-(2**63) <= a < 2**63 and -(2**63) <= b < 2**63):
            raise ValueError(f"{name} entry {i} = ({a}, {b}) is beyond int64")
        checked.append((a, b))
    return checked


def map_to_tokens(
    token_rewards_src: torch.Tensor | Sequence[float],
    src_offsets: Any,
    dst_offsets: Any,
) -> torch.Tensor:
    """Move per-token values from one tokenization of a text onto another through character offsets.

    Each source token's value goes to the destination token that contains the source token's last
    character (``char_end - 1``; an empty source range uses its position ``char_start``). When that
    character lies in no destination token (a gap, e.g. whitespace the destination tokenizer drops), it
    goes to the next destination token, and past the last destination token to the last one. Every
    source value lands on exactly one destination token, so the total is preserved (up to float
    summation order); with identical tokenizations the values are returned unchanged.

    Args:
        token_rewards_src: ``[S]`` values on the source tokens.
        src_offsets: ``[S, 2]`` ``(char_start, char_end)`` of each source token in the text.
        dst_offsets: ``[D, 2]`` the same for the destination tokens; ``char_end`` must be non-decreasing
            (tokens in text order; empty ranges such as a decoded-away EOS are allowed).

    Returns:
        ``[D]`` values in the dtype of ``token_rewards_src`` (float64 if it is not a float tensor).

    Raises:
        TypeError: values that are not real numbers, offsets that are not integer pairs.
        ValueError: mismatched lengths, offsets out of order or negative, a nonzero value and no
            destination token, or finite values whose sums overflow.
    """
    if isinstance(token_rewards_src, (str, bytes)):
        raise TypeError(f"token_rewards_src must be numbers, got {type(token_rewards_src).__name__}")
    if isinstance(token_rewards_src, np.ndarray) and token_rewards_src.dtype.kind not in "iuf":
        raise TypeError(f"token_rewards_src must be real numbers, got dtype {token_rewards_src.dtype}")
    try:  # a list or array keeps float64 (torch would read a list of floats as float32)
        src = torch.as_tensor(
            token_rewards_src, dtype=None if isinstance(token_rewards_src, torch.Tensor) else torch.float64
        )
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise TypeError(f"token_rewards_src must be numbers (a tensor or a list of floats): {err}") from None
    if src.is_complex() or src.dtype == torch.bool:
        raise TypeError(f"token_rewards_src must be real numbers, got dtype {src.dtype}")
    if not src.is_floating_point():
        src = src.to(torch.float64)
    src = src.detach().cpu()
    so = _offsets_tensor(src_offsets, "src_offsets")
    do = _offsets_tensor(dst_offsets, "dst_offsets")
    if src.dim() != 1 or src.numel() != so.shape[0]:
        raise ValueError(f"token_rewards_src has shape {tuple(src.shape)} but src_offsets has {so.shape[0]} tokens")
    if do.shape[0] == 0:
        if src.numel() and bool((src != 0).any()):
            raise ValueError("dst_offsets is empty: there is no destination token to carry the reward")
        return torch.zeros(0, dtype=src.dtype)
    ends = do[:, 1].contiguous()
    if bool((ends[1:] < ends[:-1]).any()):
        raise ValueError("dst_offsets must be in text order (non-decreasing char_end)")
    last_char = torch.where(so[:, 1] > so[:, 0], so[:, 1] - 1, so[:, 0])
    # first destination token that ends after the character: it contains it, or is the next one after a gap
    idx = torch.searchsorted(ends, last_char, right=True).clamp_(max=do.shape[0] - 1)
    out = torch.zeros(do.shape[0], dtype=src.dtype)
    out.index_add_(0, idx, src)
    if bool(torch.isfinite(src).all()) and not bool(torch.isfinite(out).all()):
        raise ValueError(f"token_rewards_src values are too large: their sums overflow {src.dtype}")
    return out


def policy_offsets(
    enc: Encoded, policy_tokenizer: Any | None, completion_ids: Sequence[int] | None
) -> list[tuple[int, int]]:
    """Character ranges of the policy's tokens in ``enc.text``.

    * ``completion_ids`` given: they are the policy's tokens, decoded with ``policy_tokenizer`` skipping
      special tokens (as TRL decodes completions, so EOS gets an empty range at the end); their text must
      equal the response text the reward model scored.
    * otherwise the response text is tokenized with ``policy_tokenizer`` (no special tokens).

    Raises:
        ValueError: ``completion_ids`` without ``policy_tokenizer``, or ids whose text is not the response.
        TypeError: ``policy_tokenizer`` cannot return offsets (only needed without ``completion_ids``).
    """
    if completion_ids is not None:
        if policy_tokenizer is None:
            raise ValueError("completion_ids need the policy tokenizer (policy_tokenizer=...) to locate their text")
        ids = as_token_ids(completion_ids, "completion_ids")
        text, dst = token_offsets(policy_tokenizer, ids, skip_special_tokens=True)
        if text != enc.text:
            raise ValueError(
                f"completion_ids decode to {text!r} but the response scored was {enc.text!r}; "
                "pass the completion text exactly as the policy tokenizer decodes it"
            )
        return dst
    require_fast_tokenizer(policy_tokenizer, "policy")
    return encode_text(policy_tokenizer, enc.text)[1]


def to_policy_tokens(
    token_rewards: torch.Tensor,
    enc: Encoded,
    policy_tokenizer: Any | None,
    completion_ids: Sequence[int] | None,
    *,
    final_reward: float = 0.0,
) -> torch.Tensor:
    """Move rewards on the reward model's response tokens onto the policy's completion tokens.

    ``final_reward`` is then added to the *last* policy token: the EOS when ``completion_ids`` end in one
    (TRL's completion mask ends there), the last text token otherwise. With neither ``completion_ids`` nor
    ``policy_tokenizer`` the rewards stay on the reward model's tokens (the policy shares its tokenization).
    Each reward-model token's reward goes to the policy token containing its last character
    (:func:`map_to_tokens`), so the total is preserved.

    Raises:
        ValueError: as :func:`policy_offsets`, or a nonzero ``final_reward`` and no completion token.
    """
    if completion_ids is None and policy_tokenizer is None:
        out = token_rewards.clone()
    else:
        out = map_to_tokens(token_rewards, enc.offsets, policy_offsets(enc, policy_tokenizer, completion_ids))
    if final_reward:
        if not out.numel():
            raise ValueError(f"the completion has no tokens to carry its sequence reward {final_reward}")
        out[-1] += final_reward
    return out
