"""The user-facing rewarder: prompts and responses in, dense per-token rewards out.

``SCAR(reward_model, tokenizer, ...)(prompts, responses)`` tokenizes each pair, splits the response into
players (:mod:`scar.players`), estimates their Shapley values with the reward model as the game
(:class:`scar.scorer.CoalitionScorer` + :func:`scar.attribution.shapley_values_many`: the coalitions of
``batch_size`` responses at a time are scored in one call, one packed forest), turns them into
per-token rewards (:func:`scar.rewards.shape_rewards`) and maps those onto the policy's tokens. The
``credit`` argument switches the same object to the baselines (``"abc"``, ``"sparse"``) so experiments
change credit method with one argument.

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

Where the sequence reward goes: DESIGN.md's ``R_t = alpha * phi_t + (1 - alpha) * 1[t == T] * r`` with
``T`` the policy's *last completion token*. A trainer's completion ends in EOS when the policy stopped
(TRL's completion mask ends on it); EOS maps to no text, so the credit ``alpha * phi_t`` lands on the text
tokens and the ``(1 - alpha) * r`` part on the EOS -- the token whose choice ended the response the reward
model scored, and the one GRPO's sequence reward sits on (so ``alpha=0`` is exactly the sparse reward).
Without ``completion_ids`` ``T`` is the last token of the response.

Empty completions: a completion that is only EOS decodes to ``""``. Given with its ``completion_ids`` (as
a trainer calls a credit provider), it is scored: ``r = v(∅)`` = the score of ``prompt ⊕ suffix``, there
are no players, and the dense reward is ``(1 - alpha) * r`` on its last completion token (``r`` for the
sparse and ABC credit). A direct call with an empty response and no ``completion_ids`` raises
``ValueError``: there is no token to put its reward on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from scar.attribution import ResponseError, shapley_values_many
from scar.estimators import DEFAULT_METHOD, METHODS
from scar.players import KINDS, hierarchy, segment
from scar.rewards import PLACEMENTS, DenseRewards, check_unit_interval, map_to_tokens, place_credit
from scar.scorer import CoalitionScorer, ScorerStats

__all__ = [
    "SCAR", "CREDITS", "Encoded", "encode_pair", "token_offsets", "check_length", "check_finite", "to_policy_tokens",
]


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
    kw = dict(skip_special_tokens=skip_special_tokens)  # the tokenizer's own clean-up setting, as TRL decodes
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
    allow_empty: bool = False,
) -> Encoded:
    """Tokenize one (prompt, response) pair by the module's convention (see the module docstring).

    Args:
        allow_empty: accept an empty response (``""``, no ids, or text the tokenizer encodes to no
            tokens, e.g. whitespace a word-level tokenizer drops): it encodes to no response tokens, and
            the reward model scores ``prompt ⊕ suffix``. The credit methods allow it only for a
            completion given with the policy's ``completion_ids`` (a trainer's completion that is only
            EOS decodes to ``""``).

    Raises:
        TypeError: the tokenizer is not a fast tokenizer (no offsets), or an input has the wrong type.
        ValueError: the prompt is empty, or the response is empty (as text, or tokenizes to no tokens)
            and ``allow_empty`` is False.
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
    suffix = [] if suffix_ids is None else _as_ids(list(suffix_ids), "suffix_ids")
    if allow_empty and (response == "" if response_ids is None else not response_ids):
        return Encoded(prompt_ids, [], suffix, "", [])
    if response_ids is None:
        if not response:
            raise ValueError(
                "response is empty (an empty completion can be scored only with the policy's completion_ids, "
                "as a trainer passes them)"
            )
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        response_ids = list(enc["input_ids"])
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        text = response
    else:
        text, offsets = token_offsets(tokenizer, response_ids)
    if not response_ids:
        if allow_empty:  # text the reward model's tokenizer drops entirely (e.g. only whitespace)
            return Encoded(prompt_ids, [], suffix, text, [])
        raise ValueError(f"response is empty (no tokens): {response!r}")
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
    *,
    final_reward: float = 0.0,
) -> torch.Tensor:
    """Move rewards on the reward model's response tokens onto the policy's completion tokens.

    ``final_reward`` is then added to the *last* policy token -- the sequence part ``1[t == T] * ...`` of
    the shaping, with ``T`` the last completion token: the EOS when ``completion_ids`` end in one (TRL's
    completion mask ends there), the last text token otherwise.

    * ``completion_ids`` given: they are the policy's tokens; their text is decoded with
      ``policy_tokenizer`` skipping special tokens (as TRL decodes completions, so EOS gets a zero-width
      range at the end) and must equal the response text the reward model scored.
    * only ``policy_tokenizer`` given: the response text is tokenized with it (no special tokens).
    * neither: the rewards are returned as they are (the policy shares the reward model's tokenization).

    Each reward-model token's reward goes to the policy token containing its last character
    (:func:`scar.rewards.map_to_tokens`), so the total is preserved.

    Raises:
        ValueError: ``completion_ids`` without ``policy_tokenizer``, ids whose text is not the response,
            or a nonzero ``final_reward`` and no completion token to carry it.
        TypeError: ``policy_tokenizer`` cannot return offsets (only needed without ``completion_ids``).
    """
    if completion_ids is None and policy_tokenizer is None:
        out = token_rewards.clone()
    else:
        out = map_to_tokens(token_rewards, enc.offsets, _policy_offsets(enc, policy_tokenizer, completion_ids))
    if final_reward:
        if not out.numel():
            raise ValueError(f"the completion has no tokens to carry its sequence reward {final_reward}")
        out[-1] += final_reward
    return out


def _policy_offsets(
    enc: Encoded, policy_tokenizer: Any | None, completion_ids: Sequence[int] | None
) -> list[tuple[int, int]]:
    """Character ranges of the policy's tokens in ``enc.text`` (see :func:`to_policy_tokens`)."""
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
    return dst


CREDITS = ("scar", "abc", "sparse")


class SCAR:
    """Dense per-token rewards from a sequence-classification reward model.

    Args:
        reward_model: a ``transformers`` ``*ForSequenceClassification`` model (decoder or encoder).
        tokenizer: its *fast* tokenizer (character offsets locate the players).
        players: ``"token"``, ``"span"`` or ``"sentence"`` (:func:`scar.players.segment`).
        method: Shapley estimator, one of :data:`scar.estimators.METHODS` (default ``"kernel"``, the
            lowest error per token computed in ``bench/RESULTS.md``); ``"owen"`` uses the
            sentence > span (> token) hierarchy of each response.
        budget: the estimator's sampling budget (its default when None).
        alpha: weight of the Shapley credit in ``R_t = alpha*phi_t + (1-alpha)*1[t==T]*r``, in ``[0, 1]``;
            default 1 (pure credit: the rewards sum to ``r - v(∅)``, which differs from ``r`` by a
            prompt-only constant and so keeps the optimal policy).
        placement: ``"last"`` (a player's credit on its last token) or ``"spread"`` (evenly over its tokens).
        backend: the coalition scorer's backend (``"auto"``, ``"trie"``, ``"batched"``, ``"loop"``).
        seed: seeds a private generator that draws one estimator seed per response (reproducible
            sequence of calls); None draws fresh entropy.
        max_tokens_per_pass: the scorer's token budget per forward pass (None: the scorer's default).
        policy_tokenizer: the policy's tokenizer when it differs from the reward model's; rewards are then
            returned on the policy's tokens (:func:`to_policy_tokens`).
        progress: show a tqdm progress bar over responses.
        credit: ``"scar"`` (Shapley), ``"abc"`` (:func:`scar.baselines.attention_credit`) or ``"sparse"``.
        beta: the ABC weight (``credit="abc"`` only), in ``[0, 1]``.
        suffix_ids: tokens the reward model's template appends after each response (e.g. EOS).
        score_fn: maps ``[B, K]`` logits to scores for reward models with more than two labels.
        removal: the scorer's removal mode (``"delete"`` or ``"replace"``).
        max_span_tokens: the span length cap of ``players="span"`` (the segmenter's default when None).
        batch_size: ``credit="scar"``: responses whose coalitions are scored in one scorer call (one packed
            forest, split into passes by ``max_tokens_per_pass``); the baselines: sequences per forward pass.

    Attributes:
        last_stats: after a ``credit="scar"`` call, one entry per response: the
            :class:`scar.scorer.ScorerStats` of the scorer call that scored it. The responses of one chunk of
            ``batch_size`` share that call, so they share one stats object (count distinct objects, never
            sum over responses); an empty response's single forward of prompt + suffix has its own stats
            with backend ``"plain"``.

    Raises:
        ValueError / TypeError on bad settings (unknown credit, player kind, method or placement; alpha or
        beta outside ``[0, 1]``; batch_size not a positive int; a tokenizer without offsets), naming the problem.
    """

    def __init__(
        self,
        reward_model: Any,
        tokenizer: Any,
        *,
        players: str = "span",
        method: str = DEFAULT_METHOD,
        budget: int | None = None,
        alpha: float = 1.0,
        placement: str = "last",
        backend: str = "auto",
        seed: int | None = None,
        max_tokens_per_pass: int | None = None,
        policy_tokenizer: Any | None = None,
        progress: bool = True,
        credit: str = "scar",
        beta: float = 1.0,
        suffix_ids: Sequence[int] | None = None,
        score_fn: Any | None = None,
        removal: str = "delete",
        max_span_tokens: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if credit not in CREDITS:
            raise ValueError(f"unknown credit {credit!r}; expected one of {CREDITS}")
        if players not in KINDS:
            raise ValueError(f"unknown player kind {players!r}; expected one of {KINDS}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        _require_fast(tokenizer, "reward-model")
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.players = players
        self.method = method
        self.budget = budget
        self.alpha = check_unit_interval(alpha, "alpha")
        self.beta = check_unit_interval(beta, "beta")
        self.placement = placement
        self.policy_tokenizer = policy_tokenizer
        self.progress = progress
        self.credit = credit
        self.suffix_ids = None if suffix_ids is None else list(suffix_ids)
        self.score_fn = score_fn
        self.max_span_tokens = max_span_tokens
        self.batch_size = batch_size
        self._rng = None if seed is None else torch.Generator().manual_seed(seed)
        self.scorer: CoalitionScorer | None = None
        if credit == "scar":
            self.scorer = CoalitionScorer(
                reward_model, backend=backend, removal=removal, score_fn=score_fn,
                max_tokens_per_pass=max_tokens_per_pass,
            )
        # see the class docstring (credit="scar" only; for cost reporting)
        self.last_stats: list[Any] = []

    def __call__(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> DenseRewards:
        """Dense rewards for a batch (the credit-provider signature of :mod:`scar.integrations.trl`).

        Args:
            prompts, responses: one entry per response, each a string or token ids of the reward model.
            completion_ids: the policy's token ids of each response; when given, the rewards are indexed
                by them (decoded with ``policy_tokenizer``, or the reward model's tokenizer when None).

        Returns:
            :class:`scar.rewards.DenseRewards` with ``method`` = the credit method. An empty response
            (allowed only with ``completion_ids``; see the module docstring) has no players, no values,
            ``stderr`` None and ``rewards == base_values == v(∅)``.
        """
        for name, seq in (("prompts", prompts), ("responses", responses)):
            if isinstance(seq, (str, torch.Tensor)) or not isinstance(seq, Sequence):
                raise TypeError(f"{name} must be a list (one entry per response), got {type(seq).__name__}")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if completion_ids is not None and len(completion_ids) != len(responses):
            raise ValueError(f"got {len(completion_ids)} completion_ids but {len(responses)} responses")
        policy_tokenizer = self.policy_tokenizer
        if policy_tokenizer is None and completion_ids is not None:
            policy_tokenizer = self.tokenizer  # the policy shares the reward model's tokenizer
        if self.credit != "scar":
            from scar.baselines import attention_credit, sparse_credit  # noqa: PLC0415 - baselines import this module

            kw = dict(suffix_ids=self.suffix_ids, score_fn=self.score_fn, batch_size=self.batch_size,
                      policy_tokenizer=policy_tokenizer, completion_ids=completion_ids)
            if self.credit == "abc":
                return attention_credit(self.reward_model, self.tokenizer, prompts, responses, beta=self.beta, **kw)
            return sparse_credit(self.reward_model, self.tokenizer, prompts, responses, **kw)
        return self._shapley_credit(prompts, responses, completion_ids, policy_tokenizer)

    def _shapley_credit(
        self,
        prompts: Sequence[str | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        completion_ids: Sequence[Sequence[int]] | None,
        policy_tokenizer: Any | None,
    ) -> DenseRewards:
        n = len(responses)
        # per response: (token rewards, r, v(∅), values, stderr, players)
        out: list[tuple[Any, ...]] = [()] * n
        self.last_stats = [None] * n
        with tqdm(total=n, desc="SCAR credit", unit="response", disable=not self.progress) as bar:
            for start in range(0, n, self.batch_size):
                chunk = range(start, min(n, start + self.batch_size))
                pending = []  # (index, encoding, players, hierarchy, seed) of the chunk's non-empty responses
                for i in chunk:
                    ids = None if completion_ids is None else completion_ids[i]
                    # a trainer's completion that is only EOS decodes to "": legitimate with its ids, an
                    # error without
                    enc = encode_pair(self.tokenizer, prompts[i], responses[i], suffix_ids=self.suffix_ids,
                                      allow_empty=ids is not None)
                    check_length(self.scorer.info.max_positions, enc, i)
                    if not enc.response_ids:
                        v0 = self._empty_value(enc, i)
                        out[i] = (to_policy_tokens(torch.zeros(0, dtype=torch.float64), enc, policy_tokenizer, ids,
                                                   final_reward=(1.0 - self.alpha) * v0),
                                  v0, v0, torch.zeros(0, dtype=torch.float64), None, [])
                        continue
                    players = self._segment(enc)
                    tree = self._hierarchy(enc, players) if self.method == "owen" else None
                    seed = None if self._rng is None else int(torch.randint(0, 2**31 - 1, (1,), generator=self._rng))
                    pending.append((i, enc, players, tree, seed))
                if pending:
                    results = self._shapley_chunk(pending)
                    for (i, enc, players, _, _), res in zip(pending, results):
                        self.last_stats[i] = self.scorer.stats
                        ids = None if completion_ids is None else completion_ids[i]
                        out[i] = self._shaped(i, enc, players, res, policy_tokenizer, ids)
                bar.update(len(chunk))
        columns = [list(col) for col in zip(*out)] if n else [[] for _ in range(6)]
        token_rewards, rewards, base_values, values, stderr, all_players = columns
        return DenseRewards(token_rewards, torch.tensor(rewards, dtype=torch.float64),
                            torch.tensor(base_values, dtype=torch.float64), values, stderr, all_players, "scar")

    def _shapley_chunk(self, pending: list[tuple[int, Encoded, list[Any], Any, int | None]]) -> list[Any]:
        """Shapley values of a chunk's non-empty responses, all scored in ONE scorer call (one forest)."""
        try:
            return shapley_values_many(
                self.scorer, [p[1].prompt_ids for p in pending], [p[1].response_ids for p in pending],
                [p[2] for p in pending], method=self.method, budget=self.budget, seed=[p[4] for p in pending],
                hierarchies=[p[3] for p in pending], suffixes_ids=[p[1].suffix_ids or None for p in pending],
            )
        except ResponseError as err:  # e.g. NaN scores from the reward model: say which response
            raise ValueError(f"Shapley credit of response {pending[err.index][0]}: {err.reason}") from err
        except ValueError as err:
            raise ValueError(f"Shapley credit of responses {[p[0] for p in pending]}, scored together (a "
                             f"'response k' below is the k-th of them): {err}") from err

    def _shaped(self, i: int, enc: Encoded, players: list[Any], res: Any, policy_tokenizer: Any | None,
                ids: Sequence[int] | None) -> tuple[Any, ...]:
        """Response ``i``'s ``(token rewards, r, v(∅), values, stderr, players)`` from its Shapley result."""
        r = check_finite(res.full_value, f"response {i} (full response, v(N))")
        v0 = check_finite(res.base_value, f"response {i} (prompt only, v(empty))")
        # shape_rewards' R_t with the 1[t == T] part on the policy's last completion token (the EOS
        # when the completion ends in one), not on the last reward-model token
        credit = self.alpha * place_credit(res.values, players, placement=self.placement,
                                           n_tokens=len(enc.response_ids))
        token_rewards = to_policy_tokens(credit, enc, policy_tokenizer, ids, final_reward=(1.0 - self.alpha) * r)
        return token_rewards, r, v0, res.values, res.stderr, players

    def _empty_value(self, enc: Encoded, index: int) -> float:
        """``r = v(∅)`` of an empty response: one plain forward of ``prompt ⊕ suffix``."""
        from scar.baselines import sequence_scores  # noqa: PLC0415 - baselines import this module

        score = sequence_scores(self.reward_model, [enc], score_fn=self.score_fn)[0]
        n = len(enc.ids)
        self.last_stats[index] = ScorerStats(backend="plain", coalitions=1, distinct_coalitions=1, tokens_computed=n,
                                             passes=1, trie_tokens=n, peak_pack_tokens=n, plain_tokens=n)
        return check_finite(score, f"response {index} (empty response, v(empty))")

    def _segment(self, enc: Encoded) -> list[Any]:
        if self.players == "span":
            return segment(enc.text, enc.offsets, "span", max_span_tokens=self.max_span_tokens)
        return segment(enc.text, enc.offsets, self.players)

    def _hierarchy(self, enc: Encoded, players: list[Any]) -> list[Any]:
        """Owen groups: spans within sentences, tokens within spans within sentences, sentences flat."""
        sentences = segment(enc.text, enc.offsets, "sentence")
        if self.players == "sentence":
            return list(range(len(players)))
        if self.players == "span":
            return hierarchy(sentences, players)
        spans = segment(enc.text, enc.offsets, "span", max_span_tokens=self.max_span_tokens)
        return hierarchy(sentences, spans, players)
