""":class:`CoalitionScorer`: scores coalitions of response players with a sequence-classification reward model.

The facade inspects the model once, picks the backend (``loop``, ``batched`` or ``trie``; see
:data:`scar.scoring.config.BACKENDS`), normalises each call's inputs once (:mod:`scar.scoring.games`) and
reports the cost of every call in :attr:`CoalitionScorer.stats`. Scores are float64 (computed in the
model's dtype) so that the Shapley sums are not limited by float32 accumulation.

The scorer never changes the model it is given: it runs private views of it (:mod:`scar.scoring.views`:
the same parameters, module objects and configs of its own, in eval mode), so several threads may call one
scorer, several scorers may share a model, and the model's own forwards may run at the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scar.game.tokens import IdsLike, as_token_ids
from scar.scoring.attention import ATTENTION_NAME
from scar.scoring.batched import score_batched
from scar.scoring.config import (
    DEFAULT_MASK_PASS_TOKENS,
    DEFAULT_PASS_TOKENS,
    VERIFY_TOLERANCE,
    ScorerConfig,
    ScorerStats,
)
from scar.scoring.games import Game, build_game, pack_games, share_prompts, split_shared
from scar.scoring.loop import plain_scores, score_loop
from scar.scoring.model import (
    RewardModelInfo,
    attention_layout,
    base_model,
    error_summary,
    inspect_model,
    model_device,
    model_dtype,
    probe_ids,
    trie_exactness,
)
from scar.scoring.trie import score_trie
from scar.scoring.views import model_view
from scar_kernels.ops import MEASURE_BY_DEVICE, fastest_tree_attention, flex_unavailable_reason, implementation

__all__ = ["CoalitionScorer", "ExactnessError"]

logger = logging.getLogger(__name__)

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_PRECISION_RECHECK = 8
"""Coalitions the exactness check re-scores after one disagreement in float16/bfloat16, any of which
disagreeing too raises (see :meth:`CoalitionScorer._verify`)."""


PROBE_TOKENS = 9
"""Tokens of the tree-attention probe's game (3 prompt, 6 response in two players); its trie is longer, so
passes of this many tokens split it."""


class ExactnessError(ValueError):
    """A fast backend's score disagreed with plain deletion beyond the model dtype's tolerance.

    Attributes:
        backend: the fast backend; coalition: ``(response index, kept players)``; fast, plain: the two
            scores; tolerance: the allowed difference.
    """

    def __init__(
        self, backend: str, response: int, players: list[int], fast: float, plain: float, tolerance: float, model: str
    ) -> None:
        instead = "backend='loop'" if backend == "batched" else "backend='loop' (or 'batched')"
        super().__init__(
            f"exactness check failed: backend {backend!r} scored response {response}, coalition of players "
            f"{players} as {fast!r} but deleting the other players' tokens and running {model} gives {plain!r} "
            f"(difference {abs(fast - plain):.3g} > tolerance {tolerance:.3g}). Backend {backend!r} is not exact "
            f"for this model: use {instead}, and please report the model's architecture."
        )
        self.backend, self.response, self.players = backend, response, players
        self.fast, self.plain, self.tolerance = fast, plain, tolerance


def _tree_kernel_support(base: nn.Module, dtype: torch.dtype, attention: str = "kernel") -> tuple[bool, str]:
    """Whether ``attention`` (``"kernel"`` or ``"flex"``) can run ``base``'s attention: (ok, reason when not)."""
    if not getattr(base, "_supports_attention_backend", False):
        return False, f"{type(base).__name__} does not support transformers' attention registry"
    if dtype not in _KERNEL_DTYPES:
        return False, f"the tree-attention kernels compute in float32, float16 or bfloat16, not {dtype}"
    config = getattr(base, "config", None)
    cap = getattr(config, "attn_logit_softcapping", None)
    impl = getattr(config, "_attn_implementation", None)
    if cap is not None and impl == "sdpa":
        # transformers' sdpa attention drops the soft-cap the layer passes (older releases silently, newer ones
        # refuse the combination); the tree attention applies it, so it would not equal the model's own forward
        return False, (
            f"the model's attention ({impl!r}) does not apply its attn_logit_softcapping={cap}, the tree attention "
            "does; load the model with attn_implementation='eager' for the tree attention"
        )
    device = model_device(base)
    if attention == "flex":
        reason = flex_unavailable_reason(device)
        return (True, "") if reason is None else (False, reason)
    op = implementation("tree_attention", device)
    if device.type == "cpu":
        return (True, "") if op == "c++" else (False, "the compiled kernels (scar_kernels._C) are not built")
    if device.type == "cuda":
        return (True, "") if op == "triton" else (False, "Triton is not available")
    return False, f"no tree-attention kernel for device {device.type!r}"


class CoalitionScorer:
    """Scores coalitions of response players with a ``transformers`` ``*ForSequenceClassification`` model.

    ``CoalitionScorer(model, backend="trie")`` and ``CoalitionScorer(model, ScorerConfig(backend="trie"))``
    are the same; keyword arguments override the fields of ``config`` (see :class:`ScorerConfig`).

    Args:
        model: a ``*ForSequenceClassification`` model (decoder or encoder).
        config: the settings (defaults when None).
        **overrides: fields of :class:`ScorerConfig`.

    Attributes:
        config: the settings as given; ``backend``, ``attention``, ``max_tokens_per_pass`` and
            ``filler_id`` hold what they resolved to.
        info: what :func:`scar.scoring.model.inspect_model` found.
        cache_prompt: whether the trie's passes run on top of the prompt's KV cache; False for a model whose
            cache the tree attention cannot read as per-head keys and values (latent-attention caches), whose
            passes then recompute the prompt.
        window_on_trie: whether the trie serves the coalitions that reach the model's sliding window: True where
            the tree attention applies the window and its probe past the window agrees with plain deletion; False
            on the dense mask, and for a model whose layers do not pass their window to the attention function
            (or where the attention cannot apply it: the compiled FlexAttention on CPU). Where False, those
            coalitions are scored in padded batches (``stats.batched_coalitions``).
        stats: the :class:`ScorerStats` of the last call.

    Raises:
        TypeError / ValueError: bad settings, a model the chosen backend cannot serve, or a model with
            more than two labels and no ``score_fn``.
    """

    def __init__(self, model: nn.Module, config: ScorerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = ScorerConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, ScorerConfig):
            raise TypeError(f"config must be a ScorerConfig, got {type(config).__name__}")
        self.config = config
        self.model = model
        self.view = model_view(model)
        self.info: RewardModelInfo = inspect_model(self.view)
        if config.score_fn is None and not self.info.is_classifier:
            raise ValueError(
                f"{type(model).__name__} is not a sequence classifier (a *ForSequenceClassification model with a "
                "score head): its scores would be meaningless. Load the reward model with "
                "AutoModelForSequenceClassification, or pass score_fn(logits) -> scores to say how to read a "
                "score from this model's logits"
            )
        if config.score_fn is None and self.info.num_labels > 2:
            raise ValueError(f"the model has {self.info.num_labels} labels: pass score_fn(logits) -> scores")
        if config.removal == "replace":
            filler = (
                config.filler_id
                if config.filler_id is not None
                else (self.info.pad_token_id if self.info.pad_token_id is not None else self.info.mask_token_id)
            )
            if filler is None:
                raise ValueError("removal='replace' needs filler_id: the model config has no pad or mask token id")
            self.filler_id: int | None = as_token_ids([filler], "filler_id", vocab_size=self.info.vocab_size)[0]
        else:
            self.filler_id = None
        self.backend = self._resolve_backend(config.backend)
        # passes on top of the prompt's KV cache; False where the tree attention cannot read the model's cache
        self.cache_prompt = True
        # the trie's attention applies the model's sliding window (False: the coalitions that reach it leave the trie)
        self.window_on_trie = False
        self.attention = self._resolve_attention(config.attention)
        self._packed_base: nn.Module | None = None
        if self.attention in ("kernel", "flex"):
            self._packed_base = self._packed_view_base()
        default = DEFAULT_MASK_PASS_TOKENS if self.attention == "mask" else DEFAULT_PASS_TOKENS
        self.max_tokens_per_pass: int = config.max_tokens_per_pass or default
        self._local = threading.local()
        self._verify_rng = random.Random(0)
        self._verify_lock = threading.Lock()

    @property
    def stats(self) -> ScorerStats:
        """The :class:`ScorerStats` of this thread's last call (an empty one before the first)."""
        return getattr(self._local, "stats", None) or ScorerStats(backend=self.backend)

    @property
    def score_fn(self):
        """The config's ``score_fn`` (None: the model's one or two logits)."""
        return self.config.score_fn

    def _resolve_attention(self, attention: str) -> str:
        """The trie's attention path: ``kernel``, ``flex`` or ``mask`` (``none`` for the other backends).

        ``kernel`` and ``flex`` are probed like ``auto``'s choice (:meth:`_probe_attention`) and refused with the
        probe's reason when the model's attention cannot run them. ``auto``: where the kernel cannot run, the
        mask. Otherwise, on a device type that :data:`scar_kernels.ops.MEASURE_BY_DEVICE` marks (CUDA), the
        faster of the kernel and FlexAttention as timed once per process on a scoring-shaped pack with the
        model's head layout and dtype (:func:`scar_kernels.ops.fastest_tree_attention`, logged at INFO); on the
        others (CPU), the kernel, which the benchmark finds ahead of compiled FlexAttention there. Either is
        then probed, and the mask taken when the probe fails.
        """
        if self.backend != "trie":
            return "none"
        if attention in ("flex", "kernel"):
            ok, reason = _tree_kernel_support(self.info.base, model_dtype(self.view), attention)
            failure = None if not ok else self._probe_attention(attention)
            if not ok or failure is not None:
                raise ValueError(
                    f"attention={attention!r} is not available: {reason if not ok else failure}; "
                    "attention='mask' (or 'auto') serves this model"
                )
            return attention
        ok, reason = _tree_kernel_support(self.info.base, model_dtype(self.view))
        if attention == "auto":
            if not ok:
                logger.info("CoalitionScorer: the trie uses a dense mask: %s", reason)
                return "mask"
            choice = self._measured_attention()
            failure = self._probe_attention(choice)
            if failure is not None:
                logger.warning("CoalitionScorer: the trie uses a dense mask: %s", failure)
                return "mask"
            return choice
        return attention

    def _packed_view_base(self) -> nn.Module:
        """The base model of the view that runs the tree attention (not through inspect_model: its causality
        probe would run the view's tree attention without a pack)."""
        return base_model(model_view(self.model, ATTENTION_NAME, fused_activations=True))

    def _tolerance(self) -> tuple[float, float]:
        """``(absolute, relative)`` tolerance of a fast score against the plain one, by the model's dtype."""
        return VERIFY_TOLERANCE.get(model_dtype(self.view), VERIFY_TOLERANCE[torch.bfloat16])

    def _probe_game(self, prompt_len: int) -> Game:
        """The probes' game: a prompt of ``prompt_len`` tokens and a 6-token response of two players, every
        coalition."""
        n = prompt_len + 6
        ids = probe_ids(self.info.vocab_size, n, {t for t in (self.info.pad_token_id,) if t is not None})
        coalitions = torch.tensor([[a, b] for a in (False, True) for b in (False, True)])
        return build_game(
            0,
            ids[:prompt_len],
            ids[prompt_len:],
            [(0, 3), (3, 6)],
            coalitions,
            None,
            vocab_size=self.info.vocab_size,
            filler_id=self.filler_id,
        )

    def _probe_attention(self, attention: str) -> str | None:
        """Score a two-player game on the trie with ``attention`` (``kernel`` or ``flex``) and by plain deletion,
        in one pass and in passes on top of the cached prompt: None when they agree, else why not (the model's
        attention module may reject the tree attention's arguments or its output layout, which the dense-mask
        probe of :func:`trie_exactness` does not see).

        A model whose cache the tree attention cannot read as per-head keys and values (latent vectors, keys
        not yet repeated to their heads) fails only the cached passes; it is then probed in passes that
        recompute the prompt, and served that way (:attr:`cache_prompt` False) when those agree.

        A model with a sliding window is also probed on a game whose prompt is longer than the window, so that
        the cached prompt and every coalition reach it and the tree attention applies it (the prompt's leading keys
        fall out of the window of the response's tokens). Where that probe fails, ``attention`` still serves the
        coalitions shorter than the window (:attr:`window_on_trie` False).
        """
        packed_base = self._packed_view_base()
        game = self._probe_game(PROBE_TOKENS - 6)
        try:
            want = self._plain_probe_scores(game)
        except Exception as err:
            return f"attention={attention!r} raised {error_summary(err)}"

        def probe(max_tokens: int, cache_prompt: bool) -> str | None:
            return self._probe_trie(attention, game, want, packed_base, max_tokens, cache_prompt)

        failure = probe(DEFAULT_PASS_TOKENS, cache_prompt=True)  # the whole pack in one pass
        if failure is not None:
            return failure
        # passes too small for the pack: on the prompt's KV cache, or each recomputing the prompt
        cached_failure = probe(PROBE_TOKENS, cache_prompt=True)
        if cached_failure is not None:
            if probe(PROBE_TOKENS, cache_prompt=False) is not None:
                return cached_failure
            logger.info(
                "CoalitionScorer: attention=%r recomputes the prompt in every pass (on a cached prompt it %s)",
                attention,
                cached_failure.split(" ", 1)[1],
            )
            self.cache_prompt = False
        window = self.info.attention_window
        if window is not None and (self.info.max_positions is None or self.info.max_positions > window + 10):
            game = self._probe_game(window + 4)  # the cached prompt reaches the window too
            try:
                want = self._plain_probe_scores(game)
            except Exception as err:
                return f"attention={attention!r} raised {error_summary(err)}"
            failure = self._probe_trie(attention, game, want, packed_base, window + 10, self.cache_prompt)
            self.window_on_trie = failure is None
            if failure is not None:
                logger.info(
                    "CoalitionScorer: %s beyond its sliding_window=%d: the coalitions that reach the window are "
                    "scored in padded batches",
                    failure,
                    window,
                )
        return None

    def _plain_probe_scores(self, game: Game) -> torch.Tensor:
        """The scores of a probe game's coalitions by plain deletion (each sequence run on its own)."""
        with torch.no_grad():
            return plain_scores(
                self.view, self.info, [game.sequence(row) for row in game.keep_mask()], self._read_scores
            )

    def _probe_trie(
        self,
        attention: str,
        game: Game,
        want: torch.Tensor,
        packed_base: nn.Module,
        max_tokens: int,
        cache_prompt: bool,
    ) -> str | None:
        """``game`` on the trie with ``attention`` in passes of at most ``max_tokens`` tokens against its plain
        scores ``want``: None when they agree within the dtype's tolerance, else why not."""
        forest, members = share_prompts([game])
        absolute, relative = self._tolerance()
        try:
            with torch.no_grad():
                per_root = score_trie(
                    self.view,
                    self.info,
                    forest,
                    pack_games(forest, [0]),
                    self._read_scores,
                    max_tokens,
                    packed_base,
                    ScorerStats(backend="trie"),
                    attention=attention,
                    cache_prompt=cache_prompt,
                )
            got = split_shared(per_root, members, [game])[0]
        except Exception as err:
            return f"attention={attention!r} raised {error_summary(err)}"
        error = float((got - want).abs().max())
        if not error <= absolute + relative * float(want.abs().max()):
            return f"attention={attention!r} differs from plain deletion by {error:.3g} on a probe"
        return None

    def _measured_attention(self) -> str:
        """``auto``'s choice between the kernel and FlexAttention where the kernel can run."""
        device = model_device(self.info.base)
        if not MEASURE_BY_DEVICE.get(device.type, False):
            return "kernel"
        layout = attention_layout(self.model)
        if layout is None:
            logger.info("CoalitionScorer: the config does not give the attention heads; attention='kernel' unmeasured")
            return "kernel"
        choice = fastest_tree_attention(device, model_dtype(self.view), *layout)
        logger.info("CoalitionScorer: attention='auto': %s", choice.describe())
        return choice.choice

    def _resolve_backend(self, backend: str) -> str:
        if not self.info.is_classifier:  # read through score_fn: one unpadded sequence at a time
            if backend not in ("auto", "loop"):
                raise ValueError(
                    f"backend={backend!r} needs a *ForSequenceClassification model; "
                    f"{type(self.model).__name__} is scored with its score_fn by backend='loop'"
                )
            return "loop"
        if backend == "loop":
            return backend
        if backend == "batched":
            if self.info.is_causal and self.info.head is None:
                raise ValueError(
                    f"backend='batched' needs the decoder's `score` head; "
                    f"{type(self.model).__name__} has none (use backend='loop')"
                )
            return backend
        ok, reason = trie_exactness(self.view)
        if backend == "trie":
            if not ok:
                raise ValueError(f"backend='trie' cannot score {type(self.model).__name__} exactly: {reason}")
            return backend
        if ok:
            return "trie"
        fallback = "batched" if (not self.info.is_causal or self.info.head is not None) else "loop"
        if self.info.is_causal:
            warnings.warn(f"CoalitionScorer: backend 'auto' uses {fallback!r}, not 'trie': {reason}", stacklevel=3)
        else:
            logger.info("CoalitionScorer: backend 'auto' uses %r: %s", fallback, reason)
        return fallback

    # ------------------------------------------------------------------ public API

    def score(
        self,
        prompt_ids: IdsLike,
        response_ids: IdsLike,
        players: object,
        coalitions: torch.Tensor,
        suffix_ids: IdsLike | None = None,
    ) -> torch.Tensor:
        """Score ``coalitions`` (bool ``[C, n_players]``) of one response; returns float64 ``[C]``.

        Args:
            prompt_ids: prompt token ids (>= 1 token; always kept).
            response_ids: response token ids (>= 1 token).
            players: sorted, non-overlapping ``(start, end)`` token ranges of the response (or
                :class:`scar.game.players.Player` objects, or an ``[n, 2]`` int tensor); tokens in no
                player are always kept.
            coalitions: bool ``[C, n_players]``; ``coalitions[c, j]`` keeps player ``j``.
            suffix_ids: tokens appended after the response (e.g. EOS); always kept.
        """
        return self.score_many(
            [prompt_ids], [response_ids], [players], [coalitions], None if suffix_ids is None else [suffix_ids]
        )[0]

    def score_many(
        self,
        prompts: Sequence[IdsLike],
        responses: Sequence[IdsLike],
        players: Sequence[object],
        coalitions: Sequence[torch.Tensor],
        suffixes: Sequence[IdsLike | None] | None = None,
    ) -> list[torch.Tensor]:
        """Score the coalitions of several responses at once (one forest for ``trie``).

        Each argument holds one entry per response, as in :meth:`score`. Returns one float64 ``[C_r]``
        tensor per response.
        """
        n = len(responses)
        if suffixes is None:
            suffixes = [None] * n
        if not (len(prompts) == len(players) == len(coalitions) == len(suffixes) == n):
            raise ValueError(
                f"prompts, responses, players, coalitions and suffixes need one entry per response; "
                f"got {len(prompts)}, {n}, {len(players)}, {len(coalitions)}, {len(suffixes)}"
            )
        games = [
            build_game(i, *args, vocab_size=self.info.vocab_size, filler_id=self.filler_id)
            for i, args in enumerate(zip(prompts, responses, players, coalitions, suffixes))
        ]
        lengths = [g.keep_mask().sum(1) for g in games]
        longest = max((int(ln.max()) for ln in lengths if ln.numel()), default=0)
        if self.info.max_positions is not None and longest > self.info.max_positions:
            raise ValueError(
                f"a coalition's sequence has {longest} tokens, more than the model's position "
                f"limit of {self.info.max_positions}"
            )
        stats = ScorerStats(
            backend=self.backend,
            coalitions=sum(g.n_coalitions for g in games),
            distinct_coalitions=sum(int(torch.unique(g.bits, dim=0).shape[0]) if g.n_coalitions else 0 for g in games),
            plain_tokens=sum(int(ln.sum()) for ln in lengths),
        )
        # The trie of whole prompts, one root per distinct prompt, is the lower bound on tokens computed; the
        # trie backend runs it.
        forest, members = share_prompts(games)
        layout = pack_games(forest, [0] * len(forest)) if stats.coalitions else None
        stats.trie_tokens = layout.n_tokens if layout is not None else 0
        window = self.info.attention_window
        with torch.no_grad():
            # the tree attention applies a window by position (where probed so); the dense mask holds none
            beside = self.backend == "trie" and not self.window_on_trie
            if beside and window is not None and longest >= window:
                scores = self._run_beside_window(games, lengths, longest, window, stats)
            else:
                scores = self._run(games, forest, members, layout, stats, self.backend, self.max_tokens_per_pass)
            if self.backend != "loop" and self.config.verify and stats.coalitions:
                self._verify(games, scores, stats)
        self._local.stats = stats
        return scores

    def _run_beside_window(
        self, games: list[Game], lengths: list[torch.Tensor], longest: int, window: int, stats: ScorerStats
    ) -> list[torch.Tensor]:
        """Scores per game when some coalitions reach the model's sliding window (``lengths``: each game's
        coalition lengths, ``longest`` their maximum): the shorter ones on the trie (the window changes nothing
        for them), the others in padded batches, where the model applies it."""
        near = [ln >= window for ln in lengths]
        stats.batched_coalitions = int(sum(int(m.sum()) for m in near))
        logger.info(
            "CoalitionScorer: %d coalitions reach sliding_window=%d: they are scored in padded batches",
            stats.batched_coalitions,
            window,
        )
        scores = [torch.empty(g.n_coalitions, dtype=torch.float64) for g in games]
        for batched in (False, True):
            rows = [m if batched else ~m for m in near]
            part = [(i, dataclasses.replace(games[i], bits=games[i].bits[r])) for i, r in enumerate(rows) if r.any()]
            if not part:
                continue
            subgames = [g for _, g in part]
            if batched:  # at least one whole sequence per forward
                got = self._run(subgames, [], [], None, stats, "batched", max(self.max_tokens_per_pass, longest))
            else:
                forest, members = share_prompts(subgames)
                layout = pack_games(forest, [0] * len(forest))
                got = self._run(subgames, forest, members, layout, stats, "trie", self.max_tokens_per_pass)
            for (i, _), values in zip(part, got):
                scores[i][rows[i]] = values
        return scores

    def _read_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.info.score(logits, self.config.score_fn).cpu()

    def _run(
        self,
        games: list[Game],
        forest: list[Game],
        members: list[list[int]],
        layout: Any,
        stats: ScorerStats,
        backend: str,
        pass_tokens: int,
    ) -> list[torch.Tensor]:
        """Scores per game by ``backend`` in forwards of at most ``pass_tokens`` tokens; ``trie`` runs ``forest``
        (:func:`~scar.scoring.games.share_prompts` of ``games``, packed as ``layout``), the other backends the
        games themselves."""
        if stats.coalitions == 0:
            return [torch.zeros(0, dtype=torch.float64) for _ in games]
        if backend == "loop":
            return score_loop(self.view, self.info, games, self._read_scores, stats)
        if backend == "batched":
            return score_batched(self.view, self.info, games, self.config.score_fn, pass_tokens, stats)
        forest_scores = score_trie(
            self.view,
            self.info,
            forest,
            layout,
            self._read_scores,
            pass_tokens,
            self._packed_base,
            stats,
            attention=self.attention if self.attention in ("kernel", "flex") else "kernel",
            cache_prompt=self.cache_prompt,
        )
        scores = split_shared(forest_scores, members, games)
        self._rescore_nonfinite(games, scores, stats)
        return scores

    def _rescore_nonfinite(self, games: list[Game], scores: list[torch.Tensor], stats: ScorerStats) -> None:
        """Score again by plain deletion every coalition whose packed score is not finite.

        In a pack, a non-finite hidden state (an overflowing activation, an inf embedding row) reaches the
        coalitions whose tokens attend to it, and through a dense mask (``0 x inf``) possibly more. Plain
        deletion decides which coalitions really are non-finite. When a response's empty coalition is
        non-finite so is every coalition of it (they all contain its prompt and suffix), so nothing more of
        that response is re-scored.
        """
        for g, values in zip(games, scores):
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            if not bad:
                continue
            mask = g.keep_mask()
            empty = [c for c in bad if not bool(g.bits[c].any())]
            if empty:
                v0 = plain_scores(self.view, self.info, [g.sequence(mask[empty[0]])], self._read_scores, stats)
                stats.rescored += 1
                if not bool(torch.isfinite(v0).all()):
                    continue
                values[empty] = v0[0]
                bad = [c for c in bad if c not in set(empty)]
            fresh = plain_scores(self.view, self.info, [g.sequence(mask[c]) for c in bad], self._read_scores, stats)
            values[bad] = fresh
            stats.rescored += len(bad)

    def _verify(self, games: list[Game], scores: list[torch.Tensor], stats: ScorerStats) -> None:
        """The runtime exactness check (:attr:`ScorerConfig.verify`).

        In float16 and bfloat16 the packed and the plain forward round differently, and on an input where the
        model is ill-conditioned in that precision the two can differ by far more than the dtype's tolerance
        while both are right to the precision. So there one disagreeing coalition per call is re-checked
        against :data:`HALF_PRECISION_RECHECK` others and tolerated (counted in
        :attr:`ScorerStats.verify_tolerated`) when they all agree; a packing error disagrees on many.
        """
        dtype = model_dtype(self.view)
        absolute, relative = self._tolerance()
        tolerated = 1 if dtype in (torch.float16, torch.bfloat16) else 0
        candidates = [(r, c) for r, g in enumerate(games) for c in range(g.n_coalitions)]
        with self._verify_lock:
            order = self._verify_rng.sample(
                candidates, min(len(candidates), self.config.verify + tolerated * HALF_PRECISION_RECHECK)
            )
        budget = min(self.config.verify, len(order))
        failures: list[tuple[int, list[int], float, float, float]] = []
        checked = 0
        while checked < budget:
            r, c = order[checked]
            checked += 1
            g = games[r]
            seq = g.sequence(g.keep_mask()[c])
            plain = float(plain_scores(self.view, self.info, [seq], self._read_scores)[0])
            fast = float(scores[r][c])
            stats.verify_coalitions += 1
            stats.verify_tokens += seq.numel()
            if fast != fast and plain != plain:  # both NaN
                continue
            error = abs(fast - plain)
            tolerance = absolute + relative * abs(plain)
            stats.verify_max_error = max(stats.verify_max_error, error if error == error else float("inf"))
            if error <= tolerance:
                continue
            players = g.bits[c].nonzero().flatten().tolist()
            if self.filler_id is not None:  # virtual players 2j (kept) / 2j+1 (filler) of removal="replace"
                players = [p // 2 for p in players if p % 2 == 0]
            failure = (r, players, fast, plain, tolerance)
            if error != error:  # one of the two NaN: no rounding explains it
                raise ExactnessError(stats.backend, *failure, type(self.model).__name__)
            failures.append(failure)
            if len(failures) > tolerated:
                raise ExactnessError(stats.backend, *failures[0], type(self.model).__name__)
            budget = min(len(order), max(budget, checked + HALF_PRECISION_RECHECK))
        stats.verify_tolerated += len(failures)
