"""Scoring coalitions with a reward model: the ``loop``, ``batched`` and ``trie`` backends.

A coalition of response players is scored as the reward model's scalar on
``prompt ⊕ (tokens of the kept players and of the gaps, in order) ⊕ suffix`` (DESIGN.md section 1).

- ``loop``: delete the tokens of each coalition and run the full classifier on that one sequence.
  The reference every other backend is tested against.
- ``batched``: the deleted sequences, deduplicated, length-sorted and right-padded into batches under
  the token budget, with an attention mask. The only fast path for bidirectional encoders.
- ``trie``: all coalitions of all responses in one preorder prefix-tree pack (``scar.trie``), run in as
  few passes of the base model as the token budget allows with compacted ``position_ids`` and the
  attention rule of ``horizon``: either the tree-attention kernel registered with transformers
  (``attention="kernel"``: ``scar.integrations.transformers.packed_forward``, which never builds an
  N x N mask and skips invisible key blocks) or a 4D float mask from ``horizon`` given to the model's
  own attention (``attention="mask"``). The score head is applied at the read-out rows only. A
  response whose tree does not fit one pass has its prompt computed once into a ``DynamicCache`` that
  every pass of that response attends to.

Scores are returned as float64 (computed in the model's dtype) so that the Shapley engine's sums are
not limited by float32 accumulation.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from scar.models import RewardModelInfo, evaluation_mode, inspect_model, model_device, model_dtype, trie_exactness
from scar.players import validate_players
from scar.trie import PackLayout, build_pack, dense_mask, split_passes

__all__ = ["CoalitionScorer", "ScorerStats", "BACKENDS", "REMOVALS", "ATTENTIONS"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "loop", "batched", "trie")
REMOVALS = ("delete", "replace")
ATTENTIONS = ("auto", "kernel", "mask")
DEFAULT_PASS_TOKENS = 8192
DEFAULT_MASK_PASS_TOKENS = 1024  # the dense-mask trie: see CoalitionScorer's max_tokens_per_pass

IdsLike = torch.Tensor | Sequence[int]


@dataclass
class ScorerStats:
    """Cost of the last ``score``/``score_many`` call.

    Attributes:
        backend: the backend that ran (``loop``, ``batched`` or ``trie``).
        coalitions: number of coalitions scored (duplicates included).
        distinct_coalitions: number of distinct (response, coalition) pairs.
        tokens_computed: token-forwards actually run (padding, recomputed ancestors and cached prompt
            tokens included).
        passes: number of model forwards (cached-prompt prefill chunks included).
        trie_tokens: node-token count of the coalition trie with whole prompts as roots: the lower
            bound on tokens computed for these coalitions.
        peak_pack_tokens: the longest single forward, in tokens (batch x padded length for batches).
        plain_tokens: sum over coalitions of ``prompt + kept + suffix``: the cost of scoring each
            coalition on its own.
        prompt_cache_tokens: prompt tokens computed into a KV cache (trie only; part of tokens_computed).
    """

    backend: str
    coalitions: int = 0
    distinct_coalitions: int = 0
    tokens_computed: int = 0
    passes: int = 0
    trie_tokens: int = 0
    peak_pack_tokens: int = 0
    plain_tokens: int = 0
    prompt_cache_tokens: int = 0

    @property
    def ratio_to_lower_bound(self) -> float:
        """``tokens_computed / trie_tokens`` (1.0 is optimal)."""
        return self.tokens_computed / self.trie_tokens if self.trie_tokens else float("nan")

    @property
    def savings_vs_plain(self) -> float:
        """``plain_tokens / tokens_computed``: how many times fewer tokens than one-by-one scoring."""
        return self.plain_tokens / self.tokens_computed if self.tokens_computed else float("nan")


@dataclass
class _Game:
    """One response's coalitions in source-buffer form (the layout contract's inputs for one response).

    ``source`` = prompt ⊕ segments ⊕ suffix; a segment belongs to a (virtual) player or is an always-kept
    gap (player -1). With ``removal="replace"`` each player j becomes two virtual players: 2j (its real
    tokens) and 2j+1 (as many filler tokens), exactly one of which is kept, so positions stay uncompacted.
    """

    source: torch.Tensor
    prompt_len: int
    suffix_len: int
    seg_player: list[int]
    seg_len: list[int]
    bits: torch.Tensor

    def keep_mask(self) -> torch.Tensor:
        """bool [C, len(source)]: which source tokens each coalition keeps."""
        n_c = self.bits.shape[0]
        players = torch.repeat_interleave(torch.tensor(self.seg_player, dtype=torch.int64),
                                          torch.tensor(self.seg_len, dtype=torch.int64))
        if self.bits.shape[1]:
            seg_keep = self.bits[:, players.clamp(min=0)] | (players == -1)[None, :]
        else:
            seg_keep = (players == -1)[None, :].expand(n_c, -1)
        return torch.cat(
            [torch.ones(n_c, self.prompt_len, dtype=torch.bool), seg_keep,
             torch.ones(n_c, self.suffix_len, dtype=torch.bool)], dim=1)


def _as_ids(name: str, ids: IdsLike | None, vocab: int | None, *, allow_empty: bool) -> torch.Tensor:
    if ids is None:
        ids = []
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
            raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints, got {ids.dtype} {tuple(ids.shape)}")
        out = ids.detach().to("cpu", torch.int64)
    else:
        try:
            out = torch.tensor(list(ids)) if len(ids) else torch.zeros(0, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints") from None
        if out.dtype.is_floating_point or out.dtype.is_complex or out.dtype == torch.bool or out.dim() != 1:
            raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints, got {out.dtype} "
                            f"{tuple(out.shape)}")
        out = out.to(torch.int64)
    if out.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if out.numel() and (int(out.min()) < 0 or (vocab is not None and int(out.max()) >= vocab)):
        raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab})")
    return out


def _as_ranges(players: object, n_tokens: int) -> list[tuple[int, int]]:
    """Validated ``(start, end)`` player ranges (``scar.players.validate_players`` does the checking)."""
    validate_players(players, n_tokens)
    if isinstance(players, torch.Tensor):
        return [(int(a), int(b)) for a, b in players.tolist()]
    out = []
    for p in players:
        if hasattr(p, "start") and hasattr(p, "end"):
            out.append((int(p.start), int(p.end)))
        else:
            a, b = p
            out.append((int(a), int(b)))
    return out


def _tree_kernel_support(base: nn.Module) -> tuple[bool, str]:
    """Whether the tree-attention kernel can run ``base``'s attention: (ok, reason when not)."""
    if not getattr(base, "_supports_attention_backend", False):
        return False, f"{type(base).__name__} does not support transformers' attention registry"
    device = model_device(base)
    if device.type == "cpu":
        from scar._ext import has_extension

        return (True, "") if has_extension() else (False, "the C++ extension scar._C is not built")
    if device.type == "cuda":
        from scar_kernels.tree_attention import triton_available

        return (True, "") if triton_available() else (False, "Triton is not available")
    return False, f"no tree-attention kernel for device {device.type!r}"


def _hf_readout(seq: torch.Tensor, pad_id: int | None) -> int:
    """Read-out index of a decoder classifier on one sequence, as transformers picks it: the last token,
    or when the config has a pad id, the rightmost token that is not the pad id (0 if all are)."""
    if pad_id is None:
        return seq.numel() - 1
    idx = (seq != pad_id).nonzero()
    return int(idx[-1]) if idx.numel() else 0


class CoalitionScorer:
    """Scores coalitions of response players with a ``transformers`` sequence-classification reward model.

    Args:
        model: a ``*ForSequenceClassification`` model (decoder or encoder).
        backend: ``"auto"`` (trie for causal decoders that :func:`scar.models.trie_exactness` accepts,
            batched otherwise, with a warning saying why for decoders), ``"loop"``, ``"batched"`` or
            ``"trie"`` (ValueError with the reason if the model cannot be served exactly).
        removal: ``"delete"`` (players' tokens deleted, positions compacted) or ``"replace"`` (tokens
            replaced by ``filler_id``, positions unchanged).
        score_fn: maps logits ``[B, num_labels]`` to scores ``[B]``; required when num_labels > 2.
        max_tokens_per_pass: token budget of one forward (batch x padded length for ``batched``,
            packed length for ``trie``). Default (None): 8192, or 1024 for a trie on the dense-mask
            path, whose O(N^2) mask makes long passes slower than several short ones (on GPT-2 4x256,
            2 CPU threads, 5,956 packed tokens: 1.58 s at 8192 vs 0.58 s at 1024; the kernel path
            takes 0.45 s at 8192).
        filler_id: the filler token of ``removal="replace"`` (default: the config's pad, else mask id).
        attention: how the ``trie`` backend applies the packed mask: ``"kernel"`` (the tree-attention op
            through transformers' attention registry; needs the C++ extension on CPU or Triton on CUDA,
            and a model that supports attention backends), ``"mask"`` (a dense 4D float mask, memory
            O(N^2) per pass), or ``"auto"`` (kernel when available, else mask). Both are exact.

    After each call, :attr:`stats` holds a :class:`ScorerStats`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "auto",
        removal: str = "delete",
        score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_tokens_per_pass: int | None = None,
        filler_id: int | None = None,
        attention: str = "auto",
    ) -> None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
        if max_tokens_per_pass is not None and (
                isinstance(max_tokens_per_pass, bool) or not isinstance(max_tokens_per_pass, int)
                or max_tokens_per_pass < 1):
            raise ValueError(f"max_tokens_per_pass must be a positive int, got {max_tokens_per_pass!r}")
        if score_fn is not None and not callable(score_fn):
            raise TypeError("score_fn must be callable")
        self.model = model
        self.info: RewardModelInfo = inspect_model(model)
        if score_fn is None and self.info.num_labels > 2:
            raise ValueError(f"the model has {self.info.num_labels} labels: pass score_fn(logits) -> scores")
        self.score_fn = score_fn
        self.removal = removal
        if removal == "replace":
            filler = filler_id if filler_id is not None else (
                self.info.pad_token_id if self.info.pad_token_id is not None else self.info.mask_token_id)
            if filler is None:
                raise ValueError("removal='replace' needs filler_id: the model config has no pad or mask token id")
            _as_ids("filler_id", [filler], self.info.vocab_size, allow_empty=False)
            self.filler_id: int | None = int(filler)
        else:
            self.filler_id = None
        self.backend = self._resolve_backend(backend)
        self.attention = self._resolve_attention(attention)
        if max_tokens_per_pass is None:
            max_tokens_per_pass = DEFAULT_MASK_PASS_TOKENS if self.attention == "mask" else DEFAULT_PASS_TOKENS
        self.max_tokens_per_pass: int = max_tokens_per_pass
        self.stats = ScorerStats(backend=self.backend)

    def _resolve_attention(self, attention: str) -> str:
        """The trie's attention path: ``kernel`` or ``mask`` (``none`` for the other backends)."""
        if self.backend != "trie":
            return "none"
        ok, reason = _tree_kernel_support(self.info.base)
        if attention == "kernel" and not ok:
            raise ValueError(f"attention='kernel' is not available: {reason}")
        if attention == "auto":
            if not ok:
                logger.info("CoalitionScorer: the trie uses a dense mask: %s", reason)
            return "kernel" if ok else "mask"
        return attention

    def _resolve_backend(self, backend: str) -> str:
        if backend == "loop":
            return backend
        if backend == "batched":
            if self.info.is_causal and self.info.head is None:
                raise ValueError(f"backend='batched' needs the decoder's `score` head; "
                                 f"{type(self.model).__name__} has none (use backend='loop')")
            return backend
        ok, reason = trie_exactness(self.model)
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
                ``scar.players.Player`` objects, or an ``[n, 2]`` int tensor); tokens in no player are
                always kept.
            coalitions: bool ``[C, n_players]``; ``coalitions[c, j]`` keeps player ``j``.
            suffix_ids: tokens appended after the response (e.g. EOS); always kept.
        """
        return self.score_many([prompt_ids], [response_ids], [players], [coalitions],
                               None if suffix_ids is None else [suffix_ids])[0]

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
            raise ValueError(f"prompts, responses, players, coalitions and suffixes need one entry per response; "
                             f"got {len(prompts)}, {n}, {len(players)}, {len(coalitions)}, {len(suffixes)}")
        games = [self._game(i, *args) for i, args in enumerate(zip(prompts, responses, players, coalitions, suffixes))]
        masks = [g.keep_mask() for g in games]
        lengths = [m.sum(1) for m in masks]
        longest = max((int(ln.max()) for ln in lengths if ln.numel()), default=0)
        if self.info.max_positions is not None and longest > self.info.max_positions:
            raise ValueError(f"a coalition's sequence has {longest} tokens, more than the model's position "
                             f"limit of {self.info.max_positions}")
        stats = ScorerStats(
            backend=self.backend,
            coalitions=sum(g.bits.shape[0] for g in games),
            distinct_coalitions=sum(int(torch.unique(g.bits, dim=0).shape[0]) if g.bits.shape[0] else 0
                                    for g in games),
            plain_tokens=sum(int(ln.sum()) for ln in lengths),
        )
        # The trie of whole prompts is the lower bound on tokens computed; the trie backend runs it.
        layout = self._build(games, [0] * n) if stats.coalitions else None
        stats.trie_tokens = layout.n_tokens if layout is not None else 0
        with evaluation_mode(self.model):
            if stats.coalitions == 0:
                scores = [torch.zeros(0, dtype=torch.float64) for _ in games]
            elif self.backend == "loop":
                scores = self._score_loop(games, masks, stats)
            elif self.backend == "batched":
                scores = self._score_batched(games, masks, stats)
            else:
                scores = self._score_trie(games, layout, stats)
        self.stats = stats
        return scores

    # ------------------------------------------------------------------ inputs

    def _game(self, i: int, prompt: IdsLike, response: IdsLike, players: object, coalitions: torch.Tensor,
              suffix: IdsLike | None) -> _Game:
        vocab = self.info.vocab_size
        prompt_t = _as_ids(f"prompt {i}", prompt, vocab, allow_empty=False)
        response_t = _as_ids(f"response {i}", response, vocab, allow_empty=False)
        suffix_t = _as_ids(f"suffix {i}", suffix, vocab, allow_empty=True)
        try:
            ranges = _as_ranges(players, response_t.numel())
        except (TypeError, ValueError) as err:
            raise type(err)(f"response {i}: {err}") from None
        if not ranges:
            raise ValueError(f"response {i}: no players")
        if not isinstance(coalitions, torch.Tensor) or coalitions.dtype != torch.bool:
            raise TypeError(f"response {i}: coalitions must be a bool tensor, got "
                            f"{coalitions.dtype if isinstance(coalitions, torch.Tensor) else type(coalitions).__name__}")
        if coalitions.dim() != 2 or coalitions.shape[1] != len(ranges):
            raise ValueError(f"response {i}: coalitions must have shape [C, {len(ranges)}] (one column per player), "
                             f"got {tuple(coalitions.shape)}")
        coalitions = coalitions.cpu()
        seg_player: list[int] = []
        seg_len: list[int] = []
        pieces = [prompt_t]
        cursor = 0
        replace = self.removal == "replace"
        for j, (s, e) in enumerate(ranges):
            if s > cursor:
                seg_player.append(-1)
                seg_len.append(s - cursor)
                pieces.append(response_t[cursor:s])
            seg_player.append(2 * j if replace else j)
            seg_len.append(e - s)
            pieces.append(response_t[s:e])
            if replace:
                seg_player.append(2 * j + 1)
                seg_len.append(e - s)
                pieces.append(torch.full((e - s,), self.filler_id, dtype=torch.int64))
            cursor = e
        if cursor < response_t.numel():
            seg_player.append(-1)
            seg_len.append(response_t.numel() - cursor)
            pieces.append(response_t[cursor:])
        pieces.append(suffix_t)
        if replace:
            bits = torch.stack([coalitions, ~coalitions], dim=2).reshape(coalitions.shape[0], -1)
        else:
            bits = coalitions.clone()
        return _Game(torch.cat(pieces), prompt_t.numel(), suffix_t.numel(), seg_player, seg_len, bits)

    def _build(self, games: Sequence[_Game], cached: Sequence[int]) -> PackLayout:
        """The pack layout of a forest of games (``cached[r]`` prompt tokens left to a KV cache)."""
        n_max = max(g.bits.shape[1] for g in games)
        coal = torch.zeros(sum(g.bits.shape[0] for g in games), n_max, dtype=torch.bool)
        row = 0
        for g in games:
            coal[row: row + g.bits.shape[0], : g.bits.shape[1]] = g.bits
            row += g.bits.shape[0]
        owner = torch.repeat_interleave(torch.arange(len(games)), torch.tensor([g.bits.shape[0] for g in games]))
        seg_offsets = torch.tensor([0] + [len(g.seg_player) for g in games]).cumsum(0)
        return build_pack(
            coal,
            owner,
            seg_offsets,
            torch.tensor([p for g in games for p in g.seg_player], dtype=torch.int64),
            torch.tensor([s for g in games for s in g.seg_len], dtype=torch.int64),
            torch.tensor([g.prompt_len for g in games], dtype=torch.int64),
            torch.tensor([g.suffix_len for g in games], dtype=torch.int64),
            torch.tensor(list(cached), dtype=torch.int64),
        )

    # ------------------------------------------------------------------ backends

    def _logits_to_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.info.score(logits, self.score_fn).cpu()

    def _score_loop(self, games: list[_Game], masks: list[torch.Tensor], stats: ScorerStats) -> list[torch.Tensor]:
        device = model_device(self.model)
        out = []
        for g, mask in zip(games, masks):
            values = torch.empty(mask.shape[0], dtype=torch.float64)
            for c in range(mask.shape[0]):
                seq = g.source[mask[c]].to(device)
                logits = self.model(input_ids=seq[None], use_cache=False).logits if self.info.is_causal \
                    else self.model(input_ids=seq[None]).logits
                values[c] = self._logits_to_scores(logits)[0]
                stats.tokens_computed += seq.numel()
                stats.passes += 1
                stats.peak_pack_tokens = max(stats.peak_pack_tokens, seq.numel())
            out.append(values)
        return out

    def _score_batched(self, games: list[_Game], masks: list[torch.Tensor], stats: ScorerStats) -> list[torch.Tensor]:
        device = model_device(self.model)
        # Distinct sequences across all responses; each coalition points at one.
        seqs: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        for g, mask in zip(games, masks):
            uniq, inverse = torch.unique(g.bits, dim=0, return_inverse=True)
            first = torch.full((uniq.shape[0],), mask.shape[0], dtype=torch.int64)
            first.scatter_reduce_(0, inverse, torch.arange(mask.shape[0]), reduce="amin")
            index.append(inverse + len(seqs))
            seqs.extend(g.source[mask[c]] for c in first.tolist())
        order = sorted(range(len(seqs)), key=lambda k: -seqs[k].numel())
        if seqs[order[0]].numel() > self.max_tokens_per_pass:
            raise ValueError(f"max_tokens_per_pass={self.max_tokens_per_pass} is smaller than one coalition's "
                             f"sequence ({seqs[order[0]].numel()} tokens); backend 'batched' cannot split a sequence")
        pad = self.info.pad_token_id if self.info.pad_token_id is not None else 0
        values = torch.empty(len(seqs), dtype=torch.float64)
        start = 0
        while start < len(order):
            width = seqs[order[start]].numel()  # longest first: the batch's padded width
            size = min(len(order) - start, self.max_tokens_per_pass // width)
            batch = order[start: start + size]
            ids = torch.full((size, width), pad, dtype=torch.int64)
            attn = torch.zeros(size, width, dtype=torch.int64)
            for b, k in enumerate(batch):
                ids[b, : seqs[k].numel()] = seqs[k]
                attn[b, : seqs[k].numel()] = 1
            ids, attn = ids.to(device), attn.to(device)
            if self.info.is_causal:
                hidden = self.info.base(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
                rows = torch.tensor([_hf_readout(seqs[k], self.info.pad_token_id) for k in batch], device=device)
                logits = self.info.head(hidden[torch.arange(size, device=device), rows])
            else:
                logits = self.model(input_ids=ids, attention_mask=attn).logits
            values[torch.tensor(batch)] = self._logits_to_scores(logits)
            stats.tokens_computed += size * width
            stats.passes += 1
            stats.peak_pack_tokens = max(stats.peak_pack_tokens, size * width)
            start += size
        return [values[ix] for ix in index]

    def _score_trie(self, games: list[_Game], layout: PackLayout, stats: ScorerStats) -> list[torch.Tensor]:
        """Whole trees that fit the budget share passes; each larger tree runs its own passes on top of
        its prompt's KV cache."""
        sizes = torch.bincount(layout.tree, minlength=len(games)).tolist()
        small = [r for r, size in enumerate(sizes) if size <= self.max_tokens_per_pass]
        big = [r for r, size in enumerate(sizes) if size > self.max_tokens_per_pass]
        if not big:
            return self._run_layout(games, layout, 0, stats)
        scores: list[torch.Tensor | None] = [None] * len(games)
        if small:
            sub = [games[r] for r in small]
            for r, values in zip(small, self._run_layout(sub, self._build(sub, [0] * len(sub)), 0, stats)):
                scores[r] = values
        for r in big:
            cached = self._cacheable_prompt(games[r])
            scores[r] = self._run_layout([games[r]], self._build([games[r]], [cached]), cached, stats)[0]
        return scores  # type: ignore[return-value]

    def _cacheable_prompt(self, game: _Game) -> int:
        """Prompt tokens to serve from a KV cache: all but the last, but never past the transformers
        read-out of an all-pad continuation (the rightmost non-pad prompt token must stay in the pack)."""
        cached = game.prompt_len - 1
        pad = self.info.pad_token_id
        if pad is not None:
            non_pad = (game.source[: game.prompt_len] != pad).nonzero()
            cached = min(cached, int(non_pad[-1]) if non_pad.numel() else 0)
        return cached

    def _readouts(self, layout: PackLayout, last: torch.Tensor, packed_ids: torch.Tensor) -> torch.Tensor:
        """Read-out rows as transformers picks them: when the config has a pad id, step back from each
        sequence's last packed token ``last`` over pad-id tokens along that sequence (within a node,
        then into the parent's last token)."""
        readout = last.clone()
        pad = self.info.pad_token_id
        if pad is None:
            return readout
        starts = layout.node_start
        for c in (packed_ids[readout] == pad).nonzero().flatten().tolist():
            k = int(readout[c])
            node = int(torch.searchsorted(starts, k, right=True)) - 1
            while int(packed_ids[k]) == pad:
                if k > int(starts[node]):
                    k -= 1
                    continue
                parent = int(layout.node_parent[node])
                if parent < 0:
                    break  # the first packed token of the root (position 0 when nothing is cached)
                node = parent
                k = int(starts[node] + layout.node_len[node] - 1)
            readout[c] = k
        return readout

    def _run_layout(self, games: list[_Game], layout: PackLayout, cached: int, stats: ScorerStats
                    ) -> list[torch.Tensor]:
        """Run a layout's passes (on top of a prompt KV cache of ``cached`` tokens when > 0)."""
        from transformers import DynamicCache

        if self.attention == "kernel":
            # Imported here, not at module import: it loads the kernel ops (and Triton) and registers
            # the attention function, which only the kernel path needs.
            from scar.integrations.transformers import packed_forward

        device, dtype = model_device(self.model), model_dtype(self.model)
        base = self.info.base
        source = torch.cat([g.source for g in games])
        packed_ids = source[layout.gather]
        # Score each distinct coalition once (duplicates then agree bit for bit).
        n_distinct = layout.n_distinct
        last = torch.zeros(n_distinct, dtype=torch.int64).scatter_(0, layout.inverse, layout.readout)
        readout = self._readouts(layout, last, packed_ids)
        # A coalition is delivered by the pass that owns the node holding its (unadjusted) last token.
        last_node = torch.searchsorted(layout.node_start, last, right=True) - 1
        passes = split_passes(layout, self.max_tokens_per_pass)
        node_pass = torch.full((layout.n_nodes,), -1, dtype=torch.int64)
        for p_idx, p in enumerate(passes):
            node_pass[p.owned] = p_idx
        distinct_pass = node_pass[last_node]
        values = torch.empty(n_distinct, dtype=torch.float64)

        cache = None
        if cached:
            cache = DynamicCache(config=self.model.config)
            prompt = games[0].source[:cached]
            for s in range(0, cached, self.max_tokens_per_pass):
                e = min(cached, s + self.max_tokens_per_pass)
                chain = torch.full((e - s,), e - s, dtype=torch.int32)  # one chain: plain causal
                base(input_ids=prompt[None, s:e].to(device), position_ids=torch.arange(s, e, device=device)[None],
                     attention_mask=dense_mask(chain, s, dtype=dtype, device=device), cache=cache, use_cache=True)
                stats.tokens_computed += e - s
                stats.prompt_cache_tokens += e - s
                stats.passes += 1
                stats.peak_pack_tokens = max(stats.peak_pack_tokens, e - s)

        for p_idx, p in enumerate(passes):
            n = p.n_tokens
            ids = packed_ids[p.tokens][None].to(device)
            positions = layout.position_ids[p.tokens][None].to(device)
            if self.attention == "kernel":
                # The cache is only read by the tree kernel: nothing to crop.
                hidden = packed_forward(base, ids, positions, p.horizon, past_key_values=cache)[0]
            else:
                hidden = base(
                    input_ids=ids,
                    position_ids=positions,
                    attention_mask=dense_mask(p.horizon, cached, dtype=dtype, device=device),
                    cache=cache,
                    use_cache=cache is not None,
                ).last_hidden_state[0]
                if cache is not None:
                    cache.crop(-n)  # drop this pass's keys/values; the prompt stays for the next pass
            members = (distinct_pass == p_idx).nonzero().flatten()
            rows = torch.searchsorted(p.tokens, readout[members]).to(device)
            values[members] = self._logits_to_scores(self.info.head(hidden[rows]))
            stats.tokens_computed += n
            stats.passes += 1
            stats.peak_pack_tokens = max(stats.peak_pack_tokens, n)

        counts = [g.bits.shape[0] for g in games]
        return list(values[layout.inverse].split(counts))
