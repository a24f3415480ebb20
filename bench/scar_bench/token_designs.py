"""Coalition designs that try to buy accuracy with the trie's shared prefixes, measured per token.

On the trie a coalition costs the tokens it does not share with the other coalitions of the pack: the
sequence of ``S`` shares its first tokens with every coalition that agrees with ``S`` on the first players
(in response order). Two designs exploit that, against the library's estimators at equal tokens:

``prefix-reuse``
    Complementary pairs of *paths* (size by Shapley-kernel mass, then a uniform coalition of that size, and
    its complement), and with every path all its truncations in response order ``S ∩ {1..j}``: their
    sequences are prefixes of the path's, so each costs only the suffix (the read-out template) on top.
    KernelSHAP's constrained weighted least squares over every distinct coalition seen, each weighted by its
    Shapley-kernel weight over its expected count under the design (Horvitz-Thompson: a truncation with
    largest player ``m`` and ``t`` players is seen from a path of size ``s`` with probability
    ``comb(n - m, s - t) / comb(n, s)``), so the fit is consistent for the Shapley values.
``siblings``
    Size-stratified Monte Carlo (``D_{i,s} = Cov(v, z_i) / (p (1 - p))`` per size ``s``, as
    :mod:`scar.shapley.stratified`'s stratified estimate) over groups: a uniform coalition ``S``, a cut ``j``,
    and ``r`` siblings that keep ``S``'s players before ``j`` and redraw the rest uniformly (same size), each
    with its complement. Every sibling is marginally uniform of its size, so the estimate stays unbiased,
    and it shares ``S``'s prefix up to ``j``; ``r = 0`` is the same estimator without siblings (the control).

Both are exactly efficient. Neither is in the library: :func:`token_design_study` measures whether they
win, and ``bench/RESULTS.md`` records that they do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from scar.shapley.kernel import _kkt_solve
from scar_bench.accuracy import estimate_from_table
from scar_bench.measure import rel_l2
from scar_bench.methods import bitmask, trie_lower_bound
from scar_bench.workloads import Instance

__all__ = [
    "LIBRARY_DESIGNS",
    "path_truncations",
    "truncation_probability",
    "prefix_reuse",
    "siblings",
    "token_design_study",
    "summarize_designs",
    "format_design_table",
    "plot_designs",
]

LIBRARY_DESIGNS = ("kernel", "stratified", "permutation")
"""The library's estimators the designs are compared with (budgets as ``scar.shapley``'s)."""


def _kernel_size_probs(n: int) -> np.ndarray:
    """Probability of each path size ``1..n-1`` (index ``s``; 0 and ``n`` hold 0): Shapley-kernel mass."""
    p = np.zeros(n + 1)
    s = np.arange(1, n)
    p[1:n] = 1.0 / (s * (n - s))
    return p / p.sum()


def path_truncations(paths: np.ndarray) -> np.ndarray:
    """Every non-empty truncation ``S ∩ {1..j}`` of every path (bool ``[P, n]``), one row per path and
    member ``j`` (the path itself included), duplicates kept: bool ``[sum |S|, n]``."""
    paths = np.asarray(paths, dtype=bool)
    rows = []
    for path in paths:
        for j in np.flatnonzero(path):
            t = np.zeros_like(path)
            t[: j + 1] = path[: j + 1]
            rows.append(t)
    return np.array(rows, dtype=bool).reshape(-1, paths.shape[1])


def truncation_probability(coalitions: np.ndarray, size_probs: np.ndarray) -> np.ndarray:
    """Probability that a complementary pair of paths (size ``s`` with ``size_probs[s]``, a uniform
    coalition of that size, and its complement) has each coalition among its truncations.

    ``T`` (``t`` players, largest ``m``, 1-based) is a truncation of ``S`` iff ``S ∩ {1..m} = T``:
    probability ``comb(n - m, s - t) / comb(n, s)`` for ``|S| = s``. ``S`` and its complement never share a
    non-empty truncation, so the pair's probability is the sum over both, whose sizes are ``s`` and ``n - s``.
    """
    bits = np.asarray(coalitions, dtype=bool)
    n = bits.shape[1]
    both = size_probs + size_probs[::-1]
    out = np.empty(len(bits))
    for r, row in enumerate(bits):
        t, m = int(row.sum()), int(np.flatnonzero(row).max()) + 1
        out[r] = sum(both[s] * math.comb(n - m, s - t) / math.comb(n, s) for s in range(t, n))
    return out


def _pair(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = np.zeros(n, dtype=bool)
    s[rng.choice(n, size, replace=False)] = True
    return s, ~s


def prefix_reuse(table: np.ndarray, n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``prefix-reuse`` design: ``(values, plan)`` from ``pairs`` complementary pairs of paths and all
    their truncations (``plan``: every distinct coalition scored, ∅ and N included)."""
    rng = np.random.default_rng(seed)
    probs = _kernel_size_probs(n)
    paths = np.array([c for _ in range(pairs) for c in _pair(n, int(rng.choice(n + 1, p=probs)), rng)])
    seen = path_truncations(paths)
    seen = seen[seen.sum(1) < n]  # N is the constraint, not a row
    keys, first, counts = np.unique(bitmask(seen), return_index=True, return_counts=True)
    z = seen[first]
    t = z.sum(1)
    kernel = (n - 1) / (np.array([math.comb(n, k) for k in t]) * t * (n - t))
    weight = kernel * counts / (pairs * truncation_probability(z, probs))
    zf, w = torch.from_numpy(z.astype(np.float64)), torch.from_numpy(weight)
    a, b = zf.T @ (zf * w[:, None]), zf.T @ (w * torch.from_numpy(table[keys] - table[0]))
    values = _kkt_solve(a, b, float(table[-1] - table[0]))[0].numpy()
    ends = np.array([np.zeros(n, dtype=bool), np.ones(n, dtype=bool)])
    return values, np.concatenate([z, ends])


def siblings(table: np.ndarray, n: int, groups: int, seed: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``siblings`` design: ``(values, plan)`` from ``groups`` groups of a uniform coalition (size by
    kernel mass) and ``r`` siblings sharing its prefix up to a uniform cut, each with its complement."""
    rng = np.random.default_rng(seed)
    probs = _kernel_size_probs(n)
    rows = []
    for _ in range(groups):
        s, c = _pair(n, int(rng.choice(n + 1, p=probs)), rng)
        rows += [s, c]
        cut = int(rng.integers(0, n))
        tail = int(s[cut:].sum())
        for _ in range(r):
            sib = np.zeros(n, dtype=bool)
            sib[:cut] = s[:cut]
            sib[cut + rng.choice(n - cut, tail, replace=False)] = True
            rows += [sib, ~sib]
    z = np.array(rows, dtype=bool)
    v, size = table[bitmask(z)], z.sum(1)
    values = np.full(n, (table[-1] - table[0]) / n)
    for k in range(1, n):
        stratum = size == k
        if stratum.sum() < 2:  # a stratum with fewer than two coalitions has no covariance
            continue
        p = k / n
        centred = v[stratum] - v[stratum].mean()
        values += (centred[:, None] * (z[stratum] - p)).mean(0) / (p * (1 - p)) / n
    ends = np.array([np.zeros(n, dtype=bool), np.ones(n, dtype=bool)])
    return values, np.concatenate([z, ends])


def token_design_study(
    inst: Instance,
    exact: tuple[np.ndarray, np.ndarray],
    *,
    budgets: dict[str, Sequence[int]],
    seeds: Sequence[int] = range(10),
) -> list[dict]:
    """Error (relative L2 to the exact values) against the trie tokens of each design's plan.

    ``budgets`` per design: ``kernel``/``stratified`` coalitions and ``permutation`` permutations (as
    ``scar.shapley``); ``prefix-reuse`` path pairs; ``siblings-r<R>`` groups with ``R`` siblings each.
    Values come from the exact table (``exact = (values, table)`` of
    :func:`scar_bench.methods.exact_shapley`); tokens are :func:`scar_bench.methods.trie_lower_bound` of
    the plan. Returns one dict per (design, budget, seed): design, budget, seed, coalitions, tokens, error.
    """
    ref, table = exact
    n = len(inst.players)
    rows = []
    for design, design_budgets in budgets.items():
        for budget in design_budgets:
            for seed in seeds:
                if design in LIBRARY_DESIGNS:
                    run = estimate_from_table(inst, table, design, budget=budget, seed=seed)
                    values, coalitions, tokens = run.values, run.coalitions, run.tokens
                else:
                    if design == "prefix-reuse":
                        values, plan = prefix_reuse(table, n, budget, seed)
                    elif design.startswith("siblings-r"):
                        values, plan = siblings(table, n, budget, seed, int(design.removeprefix("siblings-r")))
                    else:
                        raise ValueError(f"unknown design {design!r}")
                    coalitions = len(np.unique(bitmask(plan)))
                    tokens = trie_lower_bound(inst, plan)
                rows.append(
                    {
                        "design": design,
                        "budget": budget,
                        "seed": seed,
                        "coalitions": int(coalitions),
                        "tokens": int(tokens),
                        "error": rel_l2(values, ref),
                    }
                )
    return rows


def summarize_designs(rows: Sequence[dict]) -> list[dict]:
    """Median over seeds per (design, budget) of coalitions, tokens and error, sorted by design and tokens."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["design"], r["budget"]), []).append(r)
    out = [
        {
            "design": d,
            "budget": b,
            "seeds": len(rs),
            **{k: float(np.median([r[k] for r in rs])) for k in ("coalitions", "tokens", "error")},
        }
        for (d, b), rs in groups.items()
    ]
    return sorted(out, key=lambda r: (r["design"], r["tokens"]))


def format_design_table(summary: Sequence[dict]) -> str:
    """Markdown table of :func:`summarize_designs`."""
    lines = ["| design | budget | seeds | coalitions | tokens | rel L2 error (median) |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['design']} | {r['budget']} | {r['seeds']} | {r['coalitions']:.0f} | {r['tokens']:.0f} | "
        f"{r['error']:.3f} |"
        for r in summary
    ]
    return "\n".join(lines)


def plot_designs(summaries: dict[str, Sequence[dict]], path: str) -> None:
    """Error against trie tokens (log-log), one panel per game, one line per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 4.5), squeeze=False)
    for ax, (game, summary) in zip(axes[0], summaries.items()):
        for design in dict.fromkeys(r["design"] for r in summary):
            pts = [(r["tokens"], r["error"]) for r in summary if r["design"] == design]
            dashed = design in LIBRARY_DESIGNS
            ax.plot(*zip(*pts), "--" if dashed else "-", marker="o", ms=3, label=design)
        ax.set(
            xscale="log", yscale="log", xlabel="trie tokens computed", ylabel="relative L2 error (median)", title=game
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
