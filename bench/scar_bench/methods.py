"""Running one attribution method on an instance, and the token counts runs are measured against.

Methods: the peers of :mod:`scar_bench.peers` and this project's engines, ``scar-loop``, ``scar-batched``,
``scar-trie`` (:class:`scar.scoring.CoalitionScorer` backends; ``trie`` with ``attention="mask"``, a dense
``N x N`` additive mask) and ``scar-trie-kernel`` (``trie`` with ``attention="kernel"``, the registered
``scar::tree_attention`` op), all under :func:`scar.credit.attribution.shapley_values`; the pack is built
by the C++ builder in both trie engines. :func:`run_method` dispatches on the name.

References: :func:`exact_shapley` (every coalition, scored by the ``trie`` backend), and the two token
counts of a set of coalitions: :func:`trie_lower_bound` (their prefix trie, through
:func:`scar_kernels.ops.build_pack`) and :func:`plain_tokens` (each scored on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from scar.credit.attribution import shapley_values
from scar.scoring import CoalitionScorer
from scar.shapley import shapley
from scar_bench.measure import RunResult
from scar_bench.peers import (
    PEER_METHODS,
    SHAP_PARTITION_EVALS,
    Recorder,
    captum_shapley,
    shap_partition,
    shap_permutation,
    shapiq_approximate,
    shapiq_exact,
)
from scar_bench.workloads import Instance, binary_hierarchy
from scar_kernels.layout import PackLayout
from scar_kernels.ops import build_pack

__all__ = [
    "SCAR_METHODS",
    "ENGINE_METHODS",
    "run_method",
    "exact_shapley",
    "bitmask",
    "trie_lower_bound",
    "plain_tokens",
]

SCAR_METHODS = ("scar-loop", "scar-batched", "scar-trie", "scar-trie-kernel")
ENGINE_METHODS = PEER_METHODS + SCAR_METHODS

_SCORERS: dict[tuple[int, str], CoalitionScorer] = {}


def _scar(inst: Instance, backend: str, method: str, budget: int | None, seed: int) -> RunResult:
    hierarchy = binary_hierarchy(range(len(inst.players))) if method == "owen" else None
    key = (id(inst.model), backend)
    if key not in _SCORERS:
        # Built once per model and engine, as a user would: construction probes the model (trie exactness).
        if backend == "loop" or backend == "batched":
            _SCORERS[key] = CoalitionScorer(inst.model, backend=backend)
        else:  # trie with a dense float mask, or with the tree-attention kernel (C++ op on CPU)
            _SCORERS[key] = CoalitionScorer(inst.model, backend="trie",
                                            attention="kernel" if backend == "trie-kernel" else "mask")
    scorer = _SCORERS[key]
    res = shapley_values(scorer, inst.prompt_ids, inst.response_ids, inst.players, method=method, budget=budget,
                         seed=seed, hierarchy=hierarchy, suffix_ids=inst.suffix_ids)
    st = scorer.stats
    return RunResult(res.values.numpy(), res.n_evals, st.tokens_computed, st.passes, lower_bound=st.trie_tokens)


def run_method(inst: Instance, method: str, *, budget: int | None = None, seed: int = 0,
               value_table: Callable[[np.ndarray], np.ndarray] | None = None,
               token_cost: Callable[[np.ndarray], int] | None = None) -> RunResult:
    """Run one attribution method on an instance.

    Args:
        method: one of :data:`ENGINE_METHODS`, ``"scar-kernel"`` (this project's KernelSHAP),
            ``"scar-owen"`` (its Owen values over :func:`~scar_bench.workloads.binary_hierarchy`: exact
            without a budget, else that many hierarchy-consistent permutations), ``"scar-stratified"``
            (stratified sampling combined with KernelSHAP), all three on the
            ``trie-kernel`` engine, or the exact references ``"captum-exact"`` / ``"shapiq-exact"``.
        budget: ``shap-partition``: max_evals (default 500); ``shap-permutation``, ``captum-svs``,
            ``scar-*``: permutations (default: the workload's ``n_perms``); ``shapiq-*``: coalitions
            (default: the workload's ``n_perms * (n + 1)``); ``scar-kernel``: sampled coalitions;
            ``scar-owen``: permutations (``None``: exact Owen values); ``scar-stratified``:
            sampled coalitions.
        seed: seed of the method's sampler.
        value_table, token_cost: peers on the span game only: take values from a table instead of the
            model (accuracy study) and charge ``token_cost(coalitions)`` tokens.
    """
    w = inst.workload
    n = len(inst.players)
    if method == "shap-partition":
        return shap_partition(inst, budget or SHAP_PARTITION_EVALS)
    rec = Recorder(inst, value_table, token_cost)
    if method == "shap-permutation":
        return shap_permutation(inst, rec, budget or w.n_perms, seed)
    if method == "captum-svs":
        return captum_shapley(inst, rec, budget or w.n_perms, seed)
    if method == "captum-exact":
        return captum_shapley(inst, rec, None, seed)
    if method in ("shapiq-kernel", "shapiq-permutation"):
        return shapiq_approximate(inst, rec, method.split("-")[1], budget or w.n_perms * (n + 1), seed)
    if method == "shapiq-exact":
        return shapiq_exact(inst, rec)
    if method.startswith("scar-"):
        backend = method[len("scar-"):]
        if backend == "kernel":
            return _scar(inst, "trie-kernel", "kernel", budget, seed)
        if backend == "owen":
            return _scar(inst, "trie-kernel", "owen", budget, seed)
        if backend == "stratified":
            return _scar(inst, "trie-kernel", "stratified", budget, seed)
        if backend not in ("loop", "batched", "trie", "trie-kernel"):
            raise ValueError(f"unknown method {method!r}")
        return _scar(inst, backend, "permutation", budget or w.n_perms, seed)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(ENGINE_METHODS)}, scar-kernel, scar-owen, "
                     "scar-stratified, captum-exact, shapiq-exact")


def exact_shapley(inst: Instance, *, max_tokens: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact span-player Shapley values and the table of all ``2**n`` coalition values (index = bitmask,
    bit ``j`` = player ``j``), scored with the ``trie`` backend."""
    n = len(inst.players)
    scorer = CoalitionScorer(inst.model, backend="trie", max_tokens_per_pass=max_tokens)
    table = np.empty(2**n, dtype=np.float64)

    def value_fn(coalitions: torch.Tensor) -> torch.Tensor:
        v = scorer.score(inst.prompt_ids, inst.response_ids, inst.players, coalitions, inst.suffix_ids)
        table[bitmask(coalitions.numpy())] = v.numpy()
        return v

    res = shapley(value_fn, n, method="exact")
    return res.values.numpy(), table


def bitmask(bits: np.ndarray) -> np.ndarray:
    """Row ``i`` of a bool ``[C, n]`` coalition matrix as the integer ``sum_j bits[i, j] << j``."""
    return (np.asarray(bits, dtype=np.int64) << np.arange(bits.shape[1], dtype=np.int64)).sum(1)


def _pack_layout(inst: Instance, players: Sequence[tuple[int, int]], coalitions: torch.Tensor) -> PackLayout:
    """The prefix-trie pack layout (:func:`scar_kernels.ops.build_pack`, C++ when built) of one response's
    coalitions over ``players`` (tokens in no player are always kept)."""
    seg_player, seg_len, cursor = [], [], 0
    for j, (s, e) in enumerate(players):
        if s > cursor:
            seg_player.append(-1)
            seg_len.append(s - cursor)
        seg_player.append(j)
        seg_len.append(e - s)
        cursor = e
    if cursor < len(inst.response_ids):
        seg_player.append(-1)
        seg_len.append(len(inst.response_ids) - cursor)
    c = coalitions.shape[0]
    return build_pack(coalitions.to(torch.bool), torch.zeros(c, dtype=torch.int64), torch.tensor([0, len(seg_player)]),
                      torch.tensor(seg_player, dtype=torch.int64), torch.tensor(seg_len, dtype=torch.int64),
                      torch.tensor([len(inst.prompt_ids)]), torch.tensor([len(inst.suffix_ids)]), torch.tensor([0]))


def trie_lower_bound(inst: Instance, coalitions: np.ndarray, *, token_level: bool = False) -> int:
    """Tokens of the prefix trie of ``coalitions`` (over span players, or over response tokens with
    ``token_level``): the fewest token-forwards any engine needs to score them."""
    players = [(i, i + 1) for i in range(len(inst.response_ids))] if token_level else inst.players
    return _pack_layout(inst, players, torch.as_tensor(np.asarray(coalitions, dtype=bool))).n_tokens


def plain_tokens(inst: Instance, coalitions: np.ndarray) -> int:
    """Sum over coalitions of ``prompt + kept + suffix``: the cost of scoring each on its own."""
    sizes = np.array([e - s for s, e in inst.players])
    bits = np.asarray(coalitions, dtype=bool)
    return int(bits.shape[0] * (len(inst.prompt_ids) + len(inst.suffix_ids)) + (bits @ sizes).sum())
