""":class:`SCAR`: prompts and responses in, dense per-token rewards out, by Shapley credit assignment.

``SCAR(reward_model, tokenizer, ...)(prompts, responses)`` tokenizes each pair (:mod:`scar.game.tokens`),
splits the response into players (:mod:`scar.game.players`), estimates their Shapley values with the reward
model as the game (:class:`scar.scoring.CoalitionScorer` and
:func:`scar.credit.attribution.shapley_values_many`: the coalitions of ``batch_size`` responses at a time
are scored in one call, one packed forest), turns them into per-token rewards
(:func:`scar.credit.rewards.place_credit`) and maps those onto the policy's tokens.

Where the sequence reward goes: ``R_t = alpha * phi_t + (1 - alpha) * 1[t == T] * r`` with ``T`` the
policy's *last completion token*. A trainer's completion ends in EOS when the policy stopped (TRL's
completion mask ends on it); EOS maps to no text, so the credit ``alpha * phi_t`` lands on the text tokens
and the ``(1 - alpha) * r`` part on the EOS -- the token whose choice ended the response the reward model
scored, and the one GRPO's sequence reward sits on (so ``alpha=0`` is exactly the sparse reward). Without
``completion_ids`` ``T`` is the last token of the response.

Empty completions: a completion that is only EOS decodes to ``""``. Given with its ``completion_ids`` (as a
trainer calls a credit provider), it is scored: ``r = v(∅)`` = the score of ``prompt ⊕ suffix``, there are
no players, and the dense reward is ``(1 - alpha) * r`` on its last completion token. A direct call with an
empty response and no ``completion_ids`` raises ``ValueError``: there is no token to put its reward on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from scar._checks import check_batch, check_finite
from scar.credit.attribution import ResponseError, shapley_values_many
from scar.credit.config import CreditConfig
from scar.credit.rewards import DenseRewards, place_credit
from scar.game.players import Player, hierarchy, segment
from scar.game.tokens import Encoded, check_length, encode_pair, require_fast_tokenizer, to_policy_tokens
from scar.scoring import CoalitionScorer, ScorerConfig, ScorerStats
from scar.scoring.padded import score_padded
from scar.scoring.precision import CastCopy, resolve_score_dtype
from scar.shapley import ShapleyResult

__all__ = ["SCAR", "response_seed", "total_stats"]

_SCORER_FIELDS = frozenset(f.name for f in dataclasses.fields(ScorerConfig))


def response_seed(seed: int, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> int:
    """The estimator seed of one response: a 63-bit hash of ``(seed, prompt ids, response ids)``.

    The same response gets the same sampling alone, in any batch, in any process.
    """
    h = hashlib.blake2b(digest_size=8)
    for part in (seed, len(prompt_ids), *prompt_ids, len(response_ids), *response_ids):
        h.update(int(part).to_bytes(9, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1


def total_stats(calls: Sequence[ScorerStats], backend: str) -> ScorerStats:
    """The cost of several scorer calls as one :class:`~scar.scoring.ScorerStats`: counts summed, the longest
    pass and the largest verification error kept (``backend`` when there are no calls)."""
    out = ScorerStats(backend=calls[0].backend if calls else backend)
    for call in calls:
        for field in dataclasses.fields(ScorerStats):
            name = field.name
            if name == "backend":
                continue
            mine, theirs = getattr(out, name), getattr(call, name)
            keep_max = name in ("peak_pack_tokens", "verify_max_error")
            setattr(out, name, max(mine, theirs) if keep_max else mine + theirs)
    return out


class SCAR:
    """Dense per-token rewards from a sequence-classification reward model by Shapley credit.

    ``SCAR(reward_model, tokenizer, players="span", backend="trie")`` is the short form of
    ``SCAR(reward_model, tokenizer, CreditConfig(players="span"), scorer=ScorerConfig(backend="trie"))``:
    keyword arguments are routed to :class:`~scar.credit.config.CreditConfig` or
    :class:`~scar.scoring.ScorerConfig` by name.

    Args:
        reward_model: a ``transformers`` ``*ForSequenceClassification`` model (decoder or encoder).
        tokenizer: its *fast* tokenizer (character offsets locate the players).
        config: the credit settings (defaults when None).
        scorer: the coalition scorer's settings (defaults when None).
        policy_tokenizer: the policy's tokenizer when it differs from the reward model's; rewards are then
            returned on the policy's tokens (:func:`scar.game.tokens.to_policy_tokens`).
        **overrides: fields of either config.

    Attributes:
        config, scorer: the settings and the :class:`~scar.scoring.CoalitionScorer` of the reward model
            (:attr:`credit_scorer` scores the coalitions).
        last_stats: after a call, one entry per response: the :class:`~scar.scoring.ScorerStats` of the
            scorer call that scored it. The responses of one chunk of ``batch_size`` share that call, so
            they share one stats object (count distinct objects, never sum over responses); an empty
            response's single forward of prompt + suffix has its own stats with backend ``"plain"``. With
            adaptive stopping (``tol``) a chunk makes one scorer call per round, and its stats object is
            the total over the rounds (passes, tokens and coalitions summed; the longest pass). What each
            response spent and achieved is in :attr:`DenseRewards.estimates
            <scar.credit.rewards.DenseRewards.estimates>` (``budget``, ``n_evals``, ``rounds``,
            ``stderr``, ``tol_met``).

    Raises:
        TypeError / ValueError: on bad settings (naming the problem) or a tokenizer without offsets.
    """

    def __init__(
        self,
        reward_model: Any,
        tokenizer: Any,
        config: CreditConfig | None = None,
        *,
        scorer: ScorerConfig | None = None,
        policy_tokenizer: Any | None = None,
        **overrides: Any,
    ) -> None:
        unknown = set(overrides) - CreditConfig.field_names() - _SCORER_FIELDS
        if unknown:
            raise TypeError(
                f"SCAR got unknown settings {sorted(unknown)}; CreditConfig takes "
                f"{sorted(CreditConfig.field_names())}, ScorerConfig {sorted(_SCORER_FIELDS)}"
            )
        credit_kw = {k: v for k, v in overrides.items() if k in CreditConfig.field_names()}
        scorer_kw = {k: v for k, v in overrides.items() if k in _SCORER_FIELDS}
        self.config = dataclasses.replace(config, **credit_kw) if config is not None else CreditConfig(**credit_kw)
        scorer_config = dataclasses.replace(scorer, **scorer_kw) if scorer is not None else ScorerConfig(**scorer_kw)
        require_fast_tokenizer(tokenizer, "reward-model")
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.policy_tokenizer = policy_tokenizer
        self.scorer = CoalitionScorer(reward_model, scorer_config)
        # "auto" lowers the precision of sampled estimates only: exact values stay exact
        choice = (
            None if self.config.score_dtype == "auto" and self.config.method == "exact" else self.config.score_dtype
        )
        dtype = resolve_score_dtype(choice, reward_model)
        self._cast = None if dtype is None else CastCopy(reward_model, dtype)
        self._cast_scorer = None if self._cast is None else CoalitionScorer(self._cast.model, scorer_config)
        self._cast_lock = threading.Lock()
        self.last_stats: list[ScorerStats | None] = []
        self._local = threading.local()  # the last chunk's cost, per thread (as the scorer's stats)

    @property
    def credit_scorer(self) -> CoalitionScorer:
        """The scorer of the coalitions: :attr:`scorer`, or the one over the copy of the reward model in
        :attr:`CreditConfig.score_dtype <scar.credit.config.CreditConfig.score_dtype>`, brought up to the
        model's current weights first (:class:`~scar.scoring.precision.CastCopy`)."""
        if self._cast is None or self._cast_scorer is None:
            return self.scorer
        with self._cast_lock:  # the copy follows the reward model's current weights
            if self._cast.sync():
                self._cast_scorer = CoalitionScorer(self._cast.model, self.scorer.config)
            return self._cast_scorer

    TRAINING_SETTINGS: ClassVar[dict[str, Any]] = {
        "players": "span",
        "method": "permutation",
        "budget": 2,
        "score_dtype": "auto",
        "batch_size": 64,
    }
    """What :meth:`for_training` sets unless overridden: span players, one antithetic pair of permutations, the
    coalitions scored in bfloat16 where that is faster (``r`` stays the reward model's own), and up to 64
    responses per scorer call (a trainer's batch in one packed forest: one exactness check and one set of
    per-call costs per batch instead of one per 8 responses; the scorer's token budget still splits the forest
    into passes)."""

    @classmethod
    def for_training(cls, reward_model: Any, tokenizer: Any, **overrides: Any) -> SCAR:
        """SCAR configured for credit inside an RL loop: :data:`TRAINING_SETTINGS`, then ``overrides``.

        RL needs credit that is cheap per step and unbiased, not precise per response: the policy gradient
        averages the noise of many responses and steps away. One antithetic pair of permutations gives
        every player an unbiased value whose sum is exactly ``v(N) - v(empty)``, at a few plain reward-model
        passes per batch; scoring those coalitions in bfloat16 (where the device computes it faster than
        float32, ``score_dtype="auto"``) changes the values by rounding far below that sampling noise, and
        ``r`` stays the reward model's own. The budget sweep behind these choices (estimators, budgets,
        amortised credit, precision, their cost per batch, correlation with exact values and steps and wall
        time to a reward threshold in GRPO) is ``bench/RESULTS_training.md`` in the repository. Pass a seed
        (``seed=0``) for credit that does not depend on the process or batch that computes it.
        """
        return cls(reward_model, tokenizer, **{**cls.TRAINING_SETTINGS, **overrides})

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
            :class:`~scar.credit.rewards.DenseRewards` with ``method="scar"`` and ``estimates`` (each
            response's :class:`~scar.shapley.ShapleyResult`). An empty response (allowed only with
            ``completion_ids``; see the module docstring) has no players, no values, ``stderr`` None,
            ``estimates`` None and ``rewards == base_values == v(∅)``.
        """
        check_batch(prompts, responses, completion_ids)
        policy_tokenizer = self.policy_tokenizer
        if policy_tokenizer is None and completion_ids is not None:
            policy_tokenizer = self.tokenizer  # the policy shares the reward model's tokenizer
        cfg = self.config
        n = len(responses)
        # per response: (token rewards, r, v(∅), values, stderr, players, Shapley result)
        out: list[tuple[Any, ...]] = [()] * n
        self.last_stats = [None] * n
        prompt_ids: dict[str, list[int]] = {}  # a prompt text repeated in the batch (GRPO groups) is encoded once
        with tqdm(total=n, desc="SCAR credit", unit="response", disable=not cfg.progress) as bar:
            for start in range(0, n, cfg.batch_size):
                pending = []  # (index, encoding, players, hierarchy, seed) of the chunk's non-empty responses
                for i in range(start, min(n, start + cfg.batch_size)):
                    ids = None if completion_ids is None else completion_ids[i]
                    prompt = prompts[i]
                    known = prompt_ids.get(prompt) if isinstance(prompt, str) else None
                    enc = encode_pair(
                        self.tokenizer,
                        prompt if known is None else known,
                        responses[i],
                        suffix_ids=cfg.suffix_ids,
                        allow_empty=ids is not None,
                    )
                    if isinstance(prompt, str):
                        prompt_ids.setdefault(prompt, list(enc.prompt_ids))
                    check_length(self.scorer.info.max_positions, enc, i, self.scorer.info.vocab_size)
                    if not enc.response_ids:
                        v0 = self._empty_value(enc, i)
                        rewards = to_policy_tokens(
                            torch.zeros(0, dtype=torch.float64),
                            enc,
                            policy_tokenizer,
                            ids,
                            final_reward=(1.0 - cfg.alpha) * v0,
                        )
                        out[i] = (rewards, v0, v0, torch.zeros(0, dtype=torch.float64), None, [], None)
                        continue
                    players = self._segment(enc)
                    tree = self._hierarchy(enc, players) if cfg.method == "owen" else None
                    seed = None if cfg.seed is None else response_seed(cfg.seed, enc.prompt_ids, enc.response_ids)
                    pending.append((i, enc, players, tree, seed))
                if pending:
                    results = self._shapley_chunk(pending)
                    for (i, enc, players, _, _), res, stats in zip(pending, results, self._chunk_stats(len(pending))):
                        self.last_stats[i] = stats
                        ids = None if completion_ids is None else completion_ids[i]
                        out[i] = self._shaped(i, enc, players, res, policy_tokenizer, ids)
                bar.update(min(n, start + cfg.batch_size) - start)
        columns = [list(col) for col in zip(*out)] if n else [[] for _ in range(7)]
        token_rewards, seq_rewards, empty_values, values, stderr, all_players, estimates = columns
        return DenseRewards(
            token_rewards,
            torch.tensor(seq_rewards, dtype=torch.float64),
            torch.tensor(empty_values, dtype=torch.float64),
            values,
            stderr,
            all_players,
            "scar",
            estimates,
        )

    def _chunk_stats(self, n: int) -> list[ScorerStats]:
        """The cost of the last :meth:`_shapley_chunk` per response: here the scorer call (or, with ``tol``,
        the total of the rounds' calls) they shared."""
        return [getattr(self._local, "chunk_cost", None) or self.credit_scorer.stats] * n

    def _shapley_chunk(self, pending: list[tuple[int, Encoded, list[Player], Any, int | None]]) -> list[ShapleyResult]:
        """Shapley values of a chunk's non-empty responses, all scored in ONE scorer call (one forest)."""
        cfg = self.config
        adaptive: dict[str, Any] = {}
        if cfg.tol is not None:
            adaptive = dict(
                tol=cfg.tol, tol_absolute=cfg.tol_absolute, max_budget=[cfg.max_budget_for(len(p[2])) for p in pending]
            )
        scorer = self.credit_scorer  # brought up to the model's weights once per chunk
        calls: list[ScorerStats] = []
        ends = self._ends(pending, calls) if self._cast_scorer is not None else None
        try:
            results = shapley_values_many(
                scorer,
                [p[1].prompt_ids for p in pending],
                [p[1].response_ids for p in pending],
                [p[2] for p in pending],
                method=cfg.method,
                budget=[cfg.budget_for(len(p[2])) for p in pending],
                seed=[p[4] for p in pending],
                hierarchies=[p[3] for p in pending],
                suffixes_ids=[p[1].suffix_ids or None for p in pending],
                round_stats=calls,
                ends=ends,
                **adaptive,
            )
        except ResponseError as err:  # e.g. NaN scores from the reward model: say which response
            raise ValueError(f"Shapley credit of response {pending[err.index][0]}: {err.reason}") from err
        self._local.chunk_cost = calls[0] if len(calls) == 1 else total_stats(calls, scorer.backend)
        return results

    def _ends(
        self, pending: list[tuple[int, Encoded, list[Player], Any, int | None]], calls: list[ScorerStats]
    ) -> list[tuple[float, float]]:
        """Each response's ``(v(∅), v(N))`` from the reward model itself (:attr:`scorer`, in the model's dtype):
        one call over every response's empty and full coalitions, its cost appended to ``calls``. The
        coalitions scored in another dtype take these as their plans' ends, so ``r`` and ``v(∅)`` are the
        model's own and the values sum to ``r - v(∅)``."""
        players = [p[2] for p in pending]
        scores = self.scorer.score_many(
            [p[1].prompt_ids for p in pending],
            [p[1].response_ids for p in pending],
            players,
            [torch.tensor([[False] * len(ps), [True] * len(ps)]) for ps in players],
            [p[1].suffix_ids or None for p in pending],
        )
        calls.append(self.scorer.stats)
        return [(float(v[0]), float(v[1])) for v in scores]

    def _shaped(
        self,
        i: int,
        enc: Encoded,
        players: list[Player],
        res: ShapleyResult,
        policy_tokenizer: Any | None,
        ids: Sequence[int] | None,
    ) -> tuple[Any, ...]:
        """Response ``i``'s ``(token rewards, r, v(∅), values, stderr, players, result)`` from its Shapley
        result."""
        alpha = self.config.alpha
        r = check_finite(res.full_value, f"response {i} (full response, v(N))")
        v0 = check_finite(res.base_value, f"response {i} (prompt only, v(empty))")
        # R_t with the 1[t == T] part on the policy's last completion token (the EOS when the completion
        # ends in one), not on the last reward-model token
        credit = alpha * place_credit(
            res.values, players, placement=self.config.placement, n_tokens=len(enc.response_ids)
        )
        token_rewards = to_policy_tokens(credit, enc, policy_tokenizer, ids, final_reward=(1.0 - alpha) * r)
        return token_rewards, r, v0, res.values, res.stderr, players, res

    def _empty_value(self, enc: Encoded, index: int) -> float:
        """``r = v(∅)`` of an empty response: one plain forward of ``prompt ⊕ suffix``."""
        with torch.no_grad():
            out = score_padded(self.scorer.view, self.scorer.info, [enc.ids], score_fn=self.scorer.score_fn)
        n = len(enc.ids)
        self.last_stats[index] = ScorerStats(
            backend="plain",
            coalitions=1,
            distinct_coalitions=1,
            tokens_computed=n,
            passes=1,
            trie_tokens=n,
            peak_pack_tokens=n,
            plain_tokens=n,
        )
        return check_finite(out.scores[0], f"response {index} (empty response, v(empty))")

    def _segment(self, enc: Encoded) -> list[Player]:
        kw = {"max_span_tokens": self.config.max_span_tokens} if self.config.players == "span" else {}
        return segment(enc.text, enc.offsets, self.config.players, **kw)

    def _hierarchy(self, enc: Encoded, players: list[Player]) -> list[Any]:
        """Owen groups: spans within sentences, tokens within spans within sentences, sentences flat."""
        sentences = segment(enc.text, enc.offsets, "sentence")
        if self.config.players == "sentence":
            return list(range(len(players)))
        if self.config.players == "span":
            return hierarchy(sentences, players)
        spans = segment(enc.text, enc.offsets, "span", max_span_tokens=self.config.max_span_tokens)
        return hierarchy(sentences, spans, players)
