"""Random valid inputs of the pack builder, with a plain description to check layouts against, and the tree
attention's definition in float64 to check the kernels against."""

from __future__ import annotations

import math
import random

import torch
from hypothesis import strategies as st

from scar_kernels.layout import PackLayout


@st.composite
def forests(draw, max_responses: int = 3, max_coalitions: int = 10):
    """Random valid builder inputs plus a plain description to check against."""
    n_resp = draw(st.integers(1, max_responses))
    responses = []
    for _ in range(n_resp):
        n_seg = draw(st.integers(0, 5))
        kinds = draw(st.lists(st.booleans(), min_size=n_seg, max_size=n_seg))  # True: player, False: gap
        seg_player, p = [], 0
        for is_player in kinds:
            seg_player.append(p if is_player else -1)
            p += is_player
        prompt = draw(st.integers(1, 4))
        responses.append(dict(
            seg_player=seg_player,
            seg_len=draw(st.lists(st.integers(1, 3), min_size=n_seg, max_size=n_seg)),
            prompt=prompt,
            suffix=draw(st.integers(0, 2)),
            cached=draw(st.integers(0, prompt - 1)),
            n_players=p,
        ))
    n_max = max([r["n_players"] for r in responses] + [draw(st.integers(0, 2))])
    n_coal = draw(st.integers(0, max_coalitions))
    owner = draw(st.lists(st.integers(0, n_resp - 1), min_size=n_coal, max_size=n_coal))
    rows = []
    for r in owner:
        bits = draw(st.lists(st.booleans(), min_size=responses[r]["n_players"], max_size=responses[r]["n_players"]))
        rows.append(bits + [False] * (n_max - len(bits)))
    if rows and draw(st.booleans()):  # force duplicates
        owner.append(owner[0])
        rows.append(list(rows[0]))
    return responses, owner, rows, n_max


def to_args(responses, owner, rows, n_max):
    seg_counts = [len(r["seg_player"]) for r in responses]
    return (
        torch.tensor(rows, dtype=torch.bool).reshape(len(rows), n_max),
        torch.tensor(owner, dtype=torch.int64),
        torch.tensor([0] + seg_counts, dtype=torch.int64).cumsum(0),
        torch.tensor([p for r in responses for p in r["seg_player"]], dtype=torch.int64),
        torch.tensor([n for r in responses for n in r["seg_len"]], dtype=torch.int64),
        torch.tensor([r["prompt"] for r in responses], dtype=torch.int64),
        torch.tensor([r["suffix"] for r in responses], dtype=torch.int64),
        torch.tensor([r["cached"] for r in responses], dtype=torch.int64),
    )


def expected_sequence(responses, r: int, bits: list[bool]) -> list[int]:
    """Flat source indices of a coalition's kept sequence, cached prompt tokens excluded (the naive way)."""
    base = sum(x["prompt"] + sum(x["seg_len"]) + x["suffix"] for x in responses[:r])
    resp = responses[r]
    out = list(range(base + resp["cached"], base + resp["prompt"]))
    pos = base + resp["prompt"]
    for p, n in zip(resp["seg_player"], resp["seg_len"]):
        if p == -1 or bits[p]:
            out.extend(range(pos, pos + n))
        pos += n
    out.extend(range(pos, pos + resp["suffix"]))
    return out


def node_of(layout: PackLayout, k: int) -> int:
    return int(torch.searchsorted(layout.node_start, torch.tensor(k), right=True)) - 1


def path_tokens(layout: PackLayout, k: int) -> list[int]:
    """Packed indices of the sequence ending at token k, walking up the ancestors."""
    u = node_of(layout, k)
    out = list(range(int(layout.node_start[u]), k + 1))
    u = int(layout.node_parent[u])
    while u >= 0:
        s, n = int(layout.node_start[u]), int(layout.node_len[u])
        out = list(range(s, s + n)) + out
        u = int(layout.node_parent[u])
    return out


def random_forest(n: int, seed: int, max_node: int = 4) -> torch.Tensor:
    """Horizon of a random preorder forest of ``n`` tokens (nodes of 1..max_node tokens)."""
    rng = random.Random(seed)
    horizon = torch.empty(n, dtype=torch.int32)

    def fill(start: int, end: int) -> None:
        pos = start
        while pos < end:
            length = rng.randint(1, min(max_node, end - pos))
            sub_end = rng.randint(pos + length, end)
            horizon[pos : pos + length] = sub_end
            fill(pos + length, sub_end)
            pos = sub_end

    fill(0, n)
    return horizon


def tree_positions(horizon: torch.Tensor, prefix_len: int = 0) -> torch.Tensor:
    """Each packed token's position in its own sequence (int32 ``[N]``): the cached prefix's length plus the
    number of its ancestors in the pack (the packed keys it sees, itself excluded)."""
    n = horizon.shape[0]
    idx = torch.arange(n)
    visible = (idx[None, :] <= idx[:, None]) & (idx[:, None] < horizon.long()[None, :])
    return (prefix_len + visible.sum(1) - 1).to(torch.int32)


def dense_attention(
    q, k, v, horizon, scale, prefix_k=None, prefix_v=None, softcap=None, sinks=None, positions=None, window=None
) -> torch.Tensor:
    """The tree attention from its definition, in float64, with the ``N x N`` visibility built from ``horizon``
    here: ``softmax([cap(q k^T scale) + mask, sink]) [v; 0]``, where ``cap(x) = softcap tanh(x / softcap)`` when
    ``softcap`` is given, and ``sinks`` (``[H]`` or ``[H, N]``), when given, is one more logit per row whose value
    row is zero; every prefix key is visible to every query. With a ``window`` and ``positions`` ``[N]`` (prefix
    key ``j`` at position ``j``), a key is visible only if the query's position minus the key's is below the
    window."""
    q, k, v = q.double(), k.double(), v.double()
    heads, n, _ = q.shape
    group = heads // k.shape[0]
    idx = torch.arange(n)
    visible = (idx[None, :] <= idx[:, None]) & (idx[:, None] < horizon.long()[None, :])  # [query, key]
    if prefix_k is not None:
        k, v = torch.cat([prefix_k.double(), k], 1), torch.cat([prefix_v.double(), v], 1)
        visible = torch.cat([torch.ones(n, prefix_k.shape[1], dtype=torch.bool), visible], 1)
    if window is not None:
        prefix = k.shape[1] - n
        key_pos = torch.cat([torch.arange(prefix), positions.long()])
        visible = visible & (positions.long()[:, None] - key_pos[None, :] < window)
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    scores = q @ k.transpose(1, 2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible, -math.inf)
    if sinks is None:
        return torch.softmax(scores, -1) @ v
    sink = sinks.double().reshape(heads, -1).expand(heads, n)
    return torch.softmax(torch.cat([scores, sink[..., None]], -1), -1)[..., :-1] @ v
