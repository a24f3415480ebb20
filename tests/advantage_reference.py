"""The per-token GRPO advantages written plainly, one completion and one position at a time: the reference
that :func:`scar.credit.advantages.dense_group_advantages` and the TRL trainer are tested against."""

from __future__ import annotations

import math

import torch


def reference_advantages(
    token_rewards, num_generations, scale_rewards, std_of="token", baseline="position", ended=None
):
    """Loop version of the documented formula: returns-to-go minus the group's baseline, over a std; the last
    token of a row flagged in ``ended`` gets the row's sequence advantage."""
    returns = [[sum(r[t:]) for t in range(len(r))] for r in token_rewards]
    seq = [g[0] for g in returns]
    n = len(token_rewards)
    length = max(len(r) for r in token_rewards)

    def held(j, t):
        """Row j's return-to-go at position t; past its end, that of its last token (position baseline)."""
        if baseline == "group":
            return seq[j]
        return returns[j][min(t, len(returns[j]) - 1)]

    def centre(rows, t):
        return sum(held(j, t) for j in rows) / len(rows)

    def std(rows):
        m = sum(seq[j] for j in rows) / len(rows)
        if std_of == "sequence":
            sq = [(seq[j] - m) ** 2 for j in rows]
        else:
            sq = [sum((x - centre(rows, t)) ** 2 for t, x in enumerate(returns[j])) / len(returns[j]) for j in rows]
        return math.sqrt(sum(sq) / (len(rows) - 1))

    out = []
    for start in range(0, n, num_generations):
        group = list(range(start, start + num_generations))
        b = [centre(group, t) for t in range(length)]
        seq_mean = sum(seq[j] for j in group) / len(group)
        for i in group:
            row = [g - b[t] for t, g in enumerate(returns[i])]
            if ended is not None and ended[i] and row:
                row[-1] = seq[i] - seq_mean
            if scale_rewards != "none":
                s = std(group) if scale_rewards == "group" else std(list(range(n)))
                row = [0.0] * len(row) if s <= 1e-8 else [a / (s + 1e-4) for a in row]
            out.append(row)
    return out


def padded(rows, length):
    t = torch.zeros(len(rows), length, dtype=torch.float64)
    for i, r in enumerate(rows):
        t[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
    return t
