"""Block skipping of the Triton tree-attention kernel on real permutation-sampling packs.

For packs built from antithetic permutation sampling (prompt 256 tokens, response 64 tokens split into
16 players of 4 tokens, a 1-token suffix; 8 and 32 permutations), count the (query block, key block)
attention tiles that

- a dense-mask kernel computes (every tile of ``[N, P + N]``: SDPA/eager with an additive mask),
- a causal flash kernel computes (tiles on or below the diagonal),
- the tree kernel computes (causal tiles whose keys' subtrees reach the query block),

and the attention FLOPs each implies (``4 * D`` per score entry and head). The counts come from
:func:`scar_kernels.tree_attention.block_skip_stats`, which applies exactly the kernel's skip rule;
no GPU is needed, and no wall times are reported.

Run as a script for the table (``python bench/bench_block_skip.py``), or under pytest
(``pytest bench/bench_block_skip.py``), which checks the table's invariants and records it in
``benchmark.extra_info``.
"""
from __future__ import annotations

import torch

from scar_kernels.ops import build_pack
from scar_kernels.tree_attention import block_skip_stats

PROMPT, RESPONSE, PLAYERS, SUFFIX = 256, 64, 16, 1
HEADS, HEAD_DIM = 4, 64
NO_GPU_NOTE = (
    "No GPU on this machine: tile and FLOP counts follow the Triton kernel's skip rule "
    "(block_skip_stats); they are not device timings."
)


def permutation_coalitions(n_players: int, n_perms: int, seed: int = 0) -> torch.Tensor:
    """Coalitions of antithetic permutation sampling: every prefix of each permutation and its reverse."""
    g = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range(-(-n_perms // 2)):
        perm = torch.randperm(n_players, generator=g)
        perms += [perm, perm.flip(0)]
    rows = []
    for perm in perms[:n_perms]:
        kept = torch.zeros(n_players, dtype=torch.bool)
        rows.append(kept.clone())
        for p in perm.tolist():
            kept[p] = True
            rows.append(kept.clone())
    return torch.stack(rows)


def pack_horizon(n_perms: int, cached: int, seed: int = 0) -> torch.Tensor:
    """Horizon of the trie pack of one response's permutation-sampling coalitions."""
    coalitions = permutation_coalitions(PLAYERS, n_perms, seed)
    span = RESPONSE // PLAYERS
    layout = build_pack(
        coalitions,
        torch.zeros(coalitions.shape[0], dtype=torch.int64),
        torch.tensor([0, PLAYERS]),
        torch.arange(PLAYERS),
        torch.full((PLAYERS,), span, dtype=torch.int64),
        torch.tensor([PROMPT]),
        torch.tensor([SUFFIX]),
        torch.tensor([cached]),
    )
    return layout.horizon


def table(block_sizes=((64, 64), (64, 32), (128, 64)), perms=(8, 32)) -> list[dict]:
    """One row per (permutations, prompt cached?, block size) with tile and FLOP fractions."""
    rows = []
    for n_perms in perms:
        for cached in (0, PROMPT - 1):
            horizon = pack_horizon(n_perms, cached)
            for bm, bn in block_sizes:
                s = block_skip_stats(horizon, bm, bn, prefix_len=cached)
                flops = s.attention_flops(HEADS, HEAD_DIM)
                rows.append({
                    "perms": n_perms,
                    "N": s.n_tokens,
                    "cached_P": cached,
                    "block": f"{bm}x{bn}",
                    "dense_tiles": s.dense_tiles,
                    "causal_tiles": s.causal_tiles,
                    "tree_tiles": s.tree_tiles,
                    "skip_vs_dense": s.skipped_vs_dense,
                    "skip_vs_causal": s.skipped_vs_causal,
                    "flops_saved_vs_dense": s.flops_saved_vs_dense,
                    "tree_GFLOP": flops["tree"] / 1e9,
                    "dense_GFLOP": flops["dense"] / 1e9,
                    "exact_over_tree": s.visible_pairs / s.tree_pairs,
                })
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table."""
    head = (f"{'perms':>5} {'N':>6} {'cachedP':>7} {'block':>7} {'dense':>7} {'causal':>7} {'tree':>6} "
            f"{'skip/dense':>10} {'skip/causal':>11} {'FLOPsaved':>9} {'treeGF':>7} {'denseGF':>7} {'exact/tree':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['perms']:>5} {r['N']:>6} {r['cached_P']:>7} {r['block']:>7} {r['dense_tiles']:>7} "
            f"{r['causal_tiles']:>7} {r['tree_tiles']:>6} {r['skip_vs_dense']:>10.1%} {r['skip_vs_causal']:>11.1%} "
            f"{r['flops_saved_vs_dense']:>9.1%} {r['tree_GFLOP']:>7.3f} {r['dense_GFLOP']:>7.3f} "
            f"{r['exact_over_tree']:>10.1%}"
        )
    return "\n".join(lines)


def test_block_skip_table(benchmark):
    """The tree kernel never computes more tiles than a causal kernel, and skips most dense tiles."""
    rows = benchmark.pedantic(table, kwargs={"block_sizes": ((64, 64),)}, rounds=1, iterations=1)
    for r in rows:
        assert r["tree_tiles"] <= r["causal_tiles"] <= r["dense_tiles"]
        assert 0.0 < r["exact_over_tree"] <= 1.0
        assert r["skip_vs_dense"] > 0.5
    benchmark.extra_info["note"] = NO_GPU_NOTE
    benchmark.extra_info["table"] = rows


def main() -> None:
    print(NO_GPU_NOTE)
    print(f"Packs: prompt {PROMPT}, response {RESPONSE} ({PLAYERS} players x {RESPONSE // PLAYERS} tokens), "
          f"suffix {SUFFIX}; FLOPs for {HEADS} heads x d={HEAD_DIM}, one layer.")
    print(format_table(table()))


if __name__ == "__main__":
    main()
