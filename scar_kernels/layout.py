"""The packed coalition layout contract: a prefix tree of coalitions laid out in preorder.

Every coalition's kept sequence ``prompt ⊕ kept segments ⊕ suffix`` is inserted into one tree per
response; the forest is laid out depth-first in preorder as one packed sequence of ``N`` tokens. One int32
per packed token (``horizon``) then describes the attention mask of the whole pack::

    query q may attend key k   <=>   k <= q < horizon[k]

This module holds the contract and its torch references:

- :class:`PackLayout`, the builder's ten outputs (``BUILD_PACK_FIELDS``, in contract order);
- :func:`build_pack_reference`, the pure Python builder, written to be obviously correct rather than
  fast: the C++ builder (``scar_kernels._C.build_pack``) is tested against it;
- :func:`visibility` and :func:`additive_mask`, the dense mask of a horizon (boolean, and the float
  additive mask that attention implementations without tree support take).

The builders are called through :func:`scar_kernels.ops.build_pack`, which picks the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = [
    "PackLayout",
    "BUILD_PACK_FIELDS",
    "build_pack_reference",
    "check_horizon",
    "check_window",
    "visibility",
    "additive_mask",
]

ROOT_SEGMENT = -1
SUFFIX_SEGMENT = -2

BUILD_PACK_FIELDS = (
    "gather",
    "position_ids",
    "horizon",
    "readout",
    "inverse",
    "tree",
    "node_start",
    "node_len",
    "node_parent",
    "node_segment",
)
"""Names of the builder's outputs, in the order every implementation returns them."""


@dataclass(frozen=True)
class PackLayout:
    """Outputs of the pack builder, in the order of the layout contract.

    Attributes:
        gather: int64[N], flat source index of each packed token.
        position_ids: int64[N], position of each packed token in its coalition's full (deleted) sequence.
        horizon: int32[N], packed index one past the end of the subtree of the token's node.
        readout: int64[C], packed index of the last token of each coalition's sequence.
        inverse: int64[C], index of each coalition's distinct coalition (first-occurrence order).
        tree: int64[N], owner response of each packed token.
        node_start, node_len, node_parent, node_segment: int64[M], the nodes in preorder
            (``node_parent`` is -1 for roots; ``node_segment`` is -1 for a root, -2 for a suffix leaf).
    """

    gather: torch.Tensor
    position_ids: torch.Tensor
    horizon: torch.Tensor
    readout: torch.Tensor
    inverse: torch.Tensor
    tree: torch.Tensor
    node_start: torch.Tensor
    node_len: torch.Tensor
    node_parent: torch.Tensor
    node_segment: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Number of packed tokens ``N`` (the trie lower bound on tokens computed)."""
        return int(self.gather.numel())

    @property
    def n_nodes(self) -> int:
        """Number of trie nodes ``M``."""
        return int(self.node_start.numel())

    @property
    def n_distinct(self) -> int:
        """Number of distinct coalitions."""
        return int(self.inverse.max().item()) + 1 if self.inverse.numel() else 0

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        """The ten output tensors in contract order (the C++ builder's return value)."""
        return tuple(getattr(self, f.name) for f in fields(self))


def _check_int64_vector(name: str, t: object, length: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise ValueError(f"{name} must have dtype int64, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} must have {length} entries, got {t.numel()}")
    return t.cpu()


def build_pack_reference(
    coalitions: torch.Tensor,
    owner: torch.Tensor,
    seg_offsets: torch.Tensor,
    seg_player: torch.Tensor,
    seg_len: torch.Tensor,
    prompt_len: torch.Tensor,
    suffix_len: torch.Tensor,
    cached_len: torch.Tensor,
) -> PackLayout:
    """Build the packed preorder trie layout of a forest of coalitions (pure Python reference).

    Args:
        coalitions: bool[C, n_max]; ``coalitions[c, j]`` keeps player ``j`` of response ``owner[c]``.
        owner: int64[C], the response of each coalition.
        seg_offsets: int64[R+1], response ``r`` owns segments ``seg_offsets[r] .. seg_offsets[r+1]-1``.
        seg_player: int64[S], the player owning each segment, or -1 for an always-kept gap segment;
            within a response the non-negative values are exactly 0, 1, 2, ... in order.
        seg_len: int64[S], tokens per segment (>= 1).
        prompt_len: int64[R], prompt tokens per response (>= 1).
        suffix_len: int64[R], suffix tokens per response (>= 0).
        cached_len: int64[R], prompt tokens served from a KV cache and left out of the pack
            (``0 <= cached_len[r] < prompt_len[r]``).

    Returns:
        The :class:`PackLayout` of the forest.

    Raises:
        TypeError / ValueError: on any malformed input.
    """
    if not isinstance(coalitions, torch.Tensor):
        raise TypeError(f"coalitions must be a torch.Tensor, got {type(coalitions).__name__}")
    if coalitions.dtype != torch.bool:
        raise ValueError(f"coalitions must have dtype bool, got {coalitions.dtype}")
    if coalitions.dim() != 2:
        raise ValueError(f"coalitions must be 2-D [C, n_max], got shape {tuple(coalitions.shape)}")
    coalitions = coalitions.cpu()
    n_coal, n_max = coalitions.shape
    owner = _check_int64_vector("owner", owner, n_coal)
    seg_offsets = _check_int64_vector("seg_offsets", seg_offsets)
    if seg_offsets.numel() < 1:
        raise ValueError("seg_offsets must have R+1 >= 1 entries")
    n_resp = seg_offsets.numel() - 1
    seg_player = _check_int64_vector("seg_player", seg_player)
    n_seg = seg_player.numel()
    seg_len = _check_int64_vector("seg_len", seg_len, n_seg)
    prompt_len = _check_int64_vector("prompt_len", prompt_len, n_resp)
    suffix_len = _check_int64_vector("suffix_len", suffix_len, n_resp)
    cached_len = _check_int64_vector("cached_len", cached_len, n_resp)

    offs = seg_offsets.tolist()
    if offs[0] != 0 or offs[-1] != n_seg or any(b < a for a, b in zip(offs, offs[1:])):
        raise ValueError(f"seg_offsets must rise from 0 to the number of segments ({n_seg}), got {offs}")
    players = seg_player.tolist()
    lens = seg_len.tolist()
    if any(length < 1 for length in lens):
        raise ValueError("every seg_len must be >= 1")
    n_players = []
    for r in range(n_resp):
        owned = [p for p in players[offs[r] : offs[r + 1]] if p != -1]
        if owned != list(range(len(owned))):
            raise ValueError(
                f"response {r}: seg_player must be -1 or 0, 1, 2, ... in order, got {players[offs[r] : offs[r + 1]]}"
            )
        n_players.append(len(owned))
    plen, slen, clen = prompt_len.tolist(), suffix_len.tolist(), cached_len.tolist()
    for r in range(n_resp):
        if plen[r] < 1:
            raise ValueError(f"response {r}: prompt_len must be >= 1, got {plen[r]}")
        if slen[r] < 0:
            raise ValueError(f"response {r}: suffix_len must be >= 0, got {slen[r]}")
        if not 0 <= clen[r] < plen[r]:
            raise ValueError(f"response {r}: need 0 <= cached_len < prompt_len, got {clen[r]} and {plen[r]}")
    owners = owner.tolist()
    rows = coalitions.tolist()
    for c, (r, row) in enumerate(zip(owners, rows)):
        if not 0 <= r < n_resp:
            raise ValueError(f"coalition {c}: owner {r} out of range [0, {n_resp})")
        if n_players[r] > n_max:
            raise ValueError(
                f"coalition {c}: response {r} has {n_players[r]} players but coalitions has only {n_max} columns"
            )
        if any(row[n_players[r] :]):
            raise ValueError(f"coalition {c}: keeps a player past the {n_players[r]} players of response {r}")

    # Flat source index space: response r's buffer = prompt ⊕ segments ⊕ suffix, buffers concatenated.
    src_base, seg_src = [], [0] * n_seg
    total = 0
    for r in range(n_resp):
        src_base.append(total)
        pos = total + plen[r]
        for s in range(offs[r], offs[r + 1]):
            seg_src[s] = pos
            pos += lens[s]
        total = pos + slen[r]
    suffix_src = [src_base[r] + plen[r] + sum(lens[offs[r] : offs[r + 1]]) for r in range(n_resp)]

    # Dedupe: a distinct coalition is (owner, bits); numbered in order of first occurrence.
    distinct_id: dict[tuple[int, tuple[bool, ...]], int] = {}
    inverse = []
    distinct_list: list[tuple[int, tuple[bool, ...]]] = []
    for r, row in zip(owners, rows):
        key = (r, tuple(row[: n_players[r]]))
        if key not in distinct_id:
            distinct_id[key] = len(distinct_list)
            distinct_list.append(key)
        inverse.append(distinct_id[key])

    # The tree. A node is a dict; children keyed by segment index (suffix leaf under SUFFIX_SEGMENT).
    def new_node(segment: int) -> dict:
        return {"segment": segment, "children": {}, "ends": []}

    roots = [new_node(ROOT_SEGMENT) for _ in range(n_resp)]
    for d, (r, bits) in enumerate(distinct_list):
        node = roots[r]
        for s in range(offs[r], offs[r + 1]):
            p = players[s]
            if p == -1 or bits[p]:
                node = node["children"].setdefault(s, new_node(s))
        if slen[r] > 0:
            node = node["children"].setdefault(SUFFIX_SEGMENT, new_node(SUFFIX_SEGMENT))
        node["ends"].append(d)

    gather: list[int] = []
    position: list[int] = []
    horizon: list[int] = []
    tree: list[int] = []
    node_start: list[int] = []
    node_len: list[int] = []
    node_parent: list[int] = []
    node_segment: list[int] = []
    distinct_readout = [0] * len(distinct_list)

    def children_in_order(node: dict) -> list[dict]:
        kids = node["children"]
        order = sorted(s for s in kids if s >= 0)
        if SUFFIX_SEGMENT in kids:
            order.append(SUFFIX_SEGMENT)
        return [kids[s] for s in order]

    def emit(node: dict, r: int, parent_id: int, first_position: int) -> None:
        """Lay out ``node``'s subtree in preorder; fill in horizons once the subtree is known."""
        seg = node["segment"]
        if seg == ROOT_SEGMENT:
            sources = range(src_base[r] + clen[r], src_base[r] + plen[r])
        elif seg == SUFFIX_SEGMENT:
            sources = range(suffix_src[r], suffix_src[r] + slen[r])
        else:
            sources = range(seg_src[seg], seg_src[seg] + lens[seg])
        node_id = len(node_start)
        start = len(gather)
        node_start.append(start)
        node_len.append(len(sources))
        node_parent.append(parent_id)
        node_segment.append(seg)
        for i, src in enumerate(sources):
            gather.append(src)
            position.append(first_position + i)
            horizon.append(-1)
            tree.append(r)
        end = len(gather)
        for d in node["ends"]:
            distinct_readout[d] = end - 1
        for child in children_in_order(node):
            emit(child, r, node_id, first_position + len(sources))
        subtree_end = len(gather)
        for k in range(start, end):
            horizon[k] = subtree_end

    for r in range(n_resp):
        emit(roots[r], r, -1, clen[r])

    def long(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return PackLayout(
        gather=long(gather),
        position_ids=long(position),
        horizon=torch.tensor(horizon, dtype=torch.int32),
        readout=long([distinct_readout[d] for d in inverse]),
        inverse=long(inverse),
        tree=long(tree),
        node_start=long(node_start),
        node_len=long(node_len),
        node_parent=long(node_parent),
        node_segment=long(node_segment),
    )


def check_horizon(horizon: torch.Tensor, prefix_len: int = 0, *, values: bool = False) -> None:
    """Raise a clear error unless ``horizon`` is a 1-D integer tensor and ``prefix_len`` an int >= 0; with
    ``values``, also unless every ``k < horizon[k] <= N`` (the pack's invariant)."""
    if not isinstance(horizon, torch.Tensor):
        raise TypeError(f"horizon must be a torch.Tensor, got {type(horizon).__name__}")
    if horizon.dtype.is_floating_point or horizon.dtype == torch.bool or horizon.dim() != 1:
        raise ValueError(f"horizon must be a 1-D integer tensor, got {horizon.dtype} {tuple(horizon.shape)}")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"prefix_len must be an int >= 0, got {prefix_len!r}")
    n = horizon.shape[0]
    if values and n:
        idx = torch.arange(n, device=horizon.device)
        bad = (horizon <= idx) | (horizon > n)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"horizon must satisfy k < horizon[k] <= N={n}; horizon[{i}] = {int(horizon[i])}")


def visibility(
    horizon: torch.Tensor,
    prefix_len: int = 0,
    *,
    positions: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Dense boolean visibility ``[n, prefix_len + n]`` of a pack: True where query row may attend key column.

    Column ``prefix_len + k`` is visible to row ``q`` iff ``k <= q < horizon[k]``; the first ``prefix_len``
    columns (a cached prompt every packed token sees) are all True.

    With a sliding ``window`` (tokens) and the pack's ``positions`` (each packed token's position in its own
    sequence; cached key ``j`` has position ``j``), a visible key also needs ``positions[q] - position(key) <
    window``: a key is an ancestor of its query, so this is the window the model applies to that query's own
    sequence.
    """
    check_horizon(horizon, prefix_len)
    n = horizon.shape[0]
    idx = torch.arange(n, device=horizon.device)
    query = idx[:, None]
    visible = (query >= idx[None, :]) & (query < horizon.to(torch.int64)[None, :])
    if prefix_len:
        visible = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=horizon.device), visible], dim=1)
    if check_window(window, positions, n):
        assert positions is not None and window is not None
        pos = positions.to(torch.int64)
        key_pos = torch.cat([torch.arange(prefix_len, device=horizon.device), pos])
        visible &= (pos[:, None] - key_pos[None, :]) < window
    return visible


def check_window(window: int | None, positions: torch.Tensor | None, n: int) -> int:
    """The sliding window as the kernels take it: ``0`` for none, else an int ``>= 1`` (tokens), at most the
    largest int32 (positions are int32, so a longer window is the same window).

    Raises:
        ValueError / TypeError: a window that is not an int ``>= 1``; a window without ``positions``, or
            ``positions`` without a window; ``positions`` that are not an integer tensor ``[n]``.
    """
    if window is None:
        if positions is not None:
            raise ValueError("positions are read only with a window; pass window too, or neither")
        return 0
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be None or an int >= 1 (tokens), got {window!r}")
    if positions is None:
        raise ValueError("a sliding window needs the pack's positions (each token's position in its own sequence)")
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool or tuple(positions.shape) != (n,):
        raise ValueError(
            f"positions must be a 1-D integer tensor [{n}], got {positions.dtype} {tuple(positions.shape)}"
        )
    return min(window, torch.iinfo(torch.int32).max)


def additive_mask(
    horizon: torch.Tensor,
    prefix_len: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The float additive mask ``[n, prefix_len + n]`` of a pack: 0 where visible, ``finfo(dtype).min`` elsewhere.

    ``finfo.min`` rather than ``-inf`` matches transformers' own masks and keeps a fully masked softmax row
    NaN-free. (transformers handles 4D *bool* masks wrongly under eager attention, so models get this one.)

    Args:
        horizon: int ``[n]``, the pack's horizons (packed indices local to this pack).
        prefix_len: number of always-visible cached prefix columns.
        dtype: floating dtype of the mask (the model's dtype).
        device: device of the mask (default: horizon's device).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    visible = visibility(horizon.to(device) if device is not None else horizon, prefix_len)
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)
