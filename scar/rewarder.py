"""The user-facing rewarder: prompts and responses in, dense per-token rewards out.

Tokenization convention (shared by every credit method so their rewards are comparable): the reward
model scores ``prompt_ids ⊕ response_ids ⊕ suffix_ids`` where

* ``prompt_ids`` = the tokenizer's encoding of the prompt *with* its special tokens (BOS, or CLS ... SEP),
  or the given ids;
* ``response_ids`` = the encoding of the response text *without* special tokens (its character offsets
  locate the players), or the given ids (offsets then come from decoding growing prefixes);
* ``suffix_ids`` = what the reward model's template appends after the response (default none; pass e.g.
  ``[tokenizer.eos_token_id]`` for a reward model trained on EOS-terminated text).

Prompt and response are tokenized separately, so the token boundary between them is where the strings
meet (give the response its leading space if the reward model expects one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scar.rewards import map_to_tokens

__all__ = ["Encoded", "encode_pair", "token_offsets", "check_length", "check_finite", "to_policy_tokens"]


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


def _require_fast(tokenizer: Any, role: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the {role} tokenizer ({type(tokenizer).__name__}) cannot return character offsets: "
            "a fast (tokenizers-backed) tokenizer is required, e.g. AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def _as_ids(x: Any, what: str) -> list[int] | None:
    """Token ids as a list of ints, or None when ``x`` is a string."""
    if isinstance(x, str):
        return None
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"{what} as a tensor must be 1-D token ids, got shape {tuple(x.shape)}")
        return [int(v) for v in x.tolist()]
    if isinstance(x, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        return [int(v) for v in x]
    raise TypeError(f"{what} must be a str or a sequence of token ids, got {type(x).__name__}")


def token_offsets(
    tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` and give each token its character range in the decoded text.

    Token ``i`` ends where the decoding of ``ids[:i+1]`` stops agreeing with the full text (``T`` prefix
    decodes; exact for tokens that are not the tokenizer's own tokenization of the text). Ends never go
    backwards; a token holding only part of a multi-byte character gets no characters (zero width), the
    token that completes it gets the character. Tokens that decode to nothing (special tokens with
    ``skip_special_tokens=True``) get a zero-width range at their position.

    Returns:
        ``(text, offsets)`` with ``text = tokenizer.decode(ids, skip_special_tokens=...)``.
    """
    ids = list(ids)
    kw = dict(skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    text = tokenizer.decode(ids, **kw)
    offsets: list[tuple[int, int]] = []
    prev = 0
    for i in range(len(ids)):
        part = tokenizer.decode(ids[: i + 1], **kw)
        k, limit = 0, min(len(part), len(text))
        while k < limit and part[k] == text[k]:
            k += 1
        k = max(prev, k)
        offsets.append((prev, k))
        prev = k
    return text, offsets


def encode_pair(
    tokenizer: Any,
    prompt: str | Sequence[int],
    response: str | Sequence[int],
    *,
    suffix_ids: Sequence[int] | None = None,
) -> Encoded:
    """Tokenize one (prompt, response) pair by the module's convention (see the module docstring).

    Raises:
        TypeError: the tokenizer is not a fast tokenizer (no offsets), or an input has the wrong type.
        ValueError: the prompt or the response is empty (as text, or tokenizes to no tokens).
    """
    _require_fast(tokenizer, "reward-model")
    prompt_ids = _as_ids(prompt, "prompt")
    if prompt_ids is None:
        if not prompt:
            raise ValueError("prompt is empty")
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not prompt_ids:
        raise ValueError("prompt is empty (no tokens)")
    response_ids = _as_ids(response, "response")
    if response_ids is None:
        if not response:
            raise ValueError("response is empty")
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        response_ids = list(enc["input_ids"])
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        text = response
    else:
        text, offsets = token_offsets(tokenizer, response_ids)
    if not response_ids:
        raise ValueError(f"response is empty (no tokens): {response!r}")
    suffix = [] if suffix_ids is None else _as_ids(list(suffix_ids), "suffix_ids")
    return Encoded(prompt_ids, response_ids, suffix, text, offsets)


def check_length(max_positions: int | None, enc: Encoded, index: int) -> None:
    """ValueError when prompt + response + suffix is longer than the reward model's ``max_positions``."""
    n = len(enc.ids)
    if max_positions is not None and n > max_positions:
        raise ValueError(
            f"response {index} is too long for the reward model: prompt {len(enc.prompt_ids)} + response "
            f"{len(enc.response_ids)} + suffix {len(enc.suffix_ids)} = {n} tokens > {max_positions} positions"
        )


def check_finite(value: float, what: str) -> float:
    """ValueError when the reward model produced NaN or infinity (never turned into a silent zero)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the reward model returned {value} for {what}")
    return value


def to_policy_tokens(
    token_rewards: torch.Tensor,
    enc: Encoded,
    policy_tokenizer: Any | None,
    completion_ids: Sequence[int] | None,
) -> torch.Tensor:
    """Move rewards on the reward model's response tokens onto the policy's completion tokens.

    * ``completion_ids`` given: they are the policy's tokens; their text is decoded with
      ``policy_tokenizer`` skipping special tokens (as TRL decodes completions, so EOS gets a zero-width
      range at the end) and must equal the response text the reward model scored.
    * only ``policy_tokenizer`` given: the response text is tokenized with it (no special tokens).
    * neither: the rewards are returned as they are (the policy shares the reward model's tokenization).

    Raises:
        ValueError: ``completion_ids`` without ``policy_tokenizer``, or ids whose text is not the response.
        TypeError: ``policy_tokenizer`` cannot return offsets (only needed without ``completion_ids``).

    Each reward-model token's reward goes to the policy token containing its last character
    (:func:`scar.rewards.map_to_tokens`), so the total is preserved.
    """
    if completion_ids is None and policy_tokenizer is None:
        return token_rewards
    if completion_ids is not None:
        if policy_tokenizer is None:
            raise ValueError("completion_ids need the policy tokenizer (policy_tokenizer=...) to locate their text")
        ids = _as_ids(completion_ids, "completion_ids")
        text, dst = token_offsets(policy_tokenizer, ids, skip_special_tokens=True)
        if text != enc.text:
            raise ValueError(
                f"completion_ids decode to {text!r} but the response scored was {enc.text!r}; "
                "pass the completion text exactly as the policy tokenizer decodes it"
            )
    else:
        _require_fast(policy_tokenizer, "policy")
        enc_p = policy_tokenizer(enc.text, add_special_tokens=False, return_offsets_mapping=True)
        dst = [(int(a), int(b)) for a, b in enc_p["offset_mapping"]]
    return map_to_tokens(token_rewards, enc.offsets, dst)
