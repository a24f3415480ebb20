"""``torch.library`` custom ops: ``scar::tree_attention`` and ``scar::build_pack``.

Each op has a CPU implementation (the C++ extension ``scar._C`` when built, else a torch/Python
reference), a CUDA implementation (Triton) and a fake implementation, so both ops trace under
``torch.compile(fullgraph=True)`` and pass ``torch.library.opcheck``.

- ``scar::tree_attention(q, k, v, horizon, scale, prefix_k=None, prefix_v=None) -> out``: attention
  where query ``i`` sees packed key ``j`` iff ``j <= i < horizon[j]``, plus every cached-prefix key.
  Shapes and dtypes as in :mod:`scar_kernels.tree_attention`. Forward only (no autograd formula):
  it serves reward-model scoring under ``torch.no_grad()``.
- ``scar::build_pack(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len,
  cached_len) -> (gather, position_ids, horizon, readout, inverse, tree, node_start, node_len,
  node_parent, node_segment)``: the prefix-tree pack of the contract in ``scar.trie``. Output sizes
  depend on the data (``N`` tokens, ``M`` nodes): the fake allocates them as unbacked symbolic sizes.
  The trie itself (dedupe, hashing, preorder) is sequential and always built on CPU; the CUDA
  implementation copies the small inputs to the host, builds the node table there and expands the
  per-token arrays on the GPU from it (:func:`scar_kernels.pack.expand_nodes`), so only ``M``-sized
  tables cross the bus instead of four ``N``-sized arrays.

This module imports without a GPU and without a working Triton (Triton is imported on the CUDA path).
"""
from __future__ import annotations

import torch
from torch import Tensor

from scar_kernels.tree_attention import tree_attention_reference, validate_tree_attention_inputs

__all__ = ["tree_attention", "build_pack", "BUILD_PACK_FIELDS"]

BUILD_PACK_FIELDS = (
    "gather", "position_ids", "horizon", "readout", "inverse", "tree",
    "node_start", "node_len", "node_parent", "node_segment",
)


def _extension():
    """The compiled ``scar._C`` module, or None when it is not built.

    ``scar._ext.load()`` is the project's loader (it warns once when the extension is missing); the
    direct import covers a tree where the extension is built but the loader module is absent.
    """
    try:
        from scar import _ext
    except ImportError:
        try:
            from scar import _C
        except ImportError:
            return None
        return _C
    return _ext.load()


# --------------------------------------------------------------------------------------------------
# scar::tree_attention
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("scar::tree_attention", mutates_args=(), device_types="cpu")
def _tree_attention_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    horizon: Tensor,
    scale: float,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
) -> Tensor:
    validate_tree_attention_inputs(q, k, v, horizon, prefix_k, prefix_v)
    ext = _extension()
    if ext is not None and hasattr(ext, "tree_attention"):
        # The C++ kernel computes in fp32; half inputs round-trip through fp32 (same as the reference).
        f = (lambda t: None if t is None else t.float().contiguous())
        out = ext.tree_attention(f(q), f(k), f(v), horizon, float(scale), f(prefix_k), f(prefix_v))
        return out.to(q.dtype)
    return tree_attention_reference(q, k, v, horizon, scale, prefix_k, prefix_v)


@_tree_attention_cpu.register_kernel("cuda")
def _tree_attention_cuda(q, k, v, horizon, scale, prefix_k=None, prefix_v=None):
    from scar_kernels.tree_attention import tree_attention as triton_tree_attention

    return triton_tree_attention(q, k, v, horizon, scale, prefix_k, prefix_v)


@_tree_attention_cpu.register_fake
def _tree_attention_fake(q, k, v, horizon, scale, prefix_k=None, prefix_v=None):
    validate_tree_attention_inputs(q, k, v, horizon, prefix_k, prefix_v, check_values=False)
    return torch.empty_like(q)


def tree_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    horizon: Tensor,
    scale: float | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
) -> Tensor:
    """Tree attention through the ``scar::tree_attention`` op (CPU: C++ or torch; CUDA: Triton).

    ``q [H, N, D]``, ``k``/``v`` ``[Hkv, N, D]``, ``horizon int32 [N]``, optional cached prefix
    ``prefix_k``/``prefix_v`` ``[Hkv, P, D]``; ``scale`` defaults to ``D ** -0.5``. Returns ``[H, N, D]``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return torch.ops.scar.tree_attention(q, k, v, horizon, float(scale), prefix_k, prefix_v)


# --------------------------------------------------------------------------------------------------
# scar::build_pack
# --------------------------------------------------------------------------------------------------
def _as_tuple(result) -> tuple[Tensor, ...]:
    """Normalise a builder result (tuple, or a dataclass with the contract's field names) to a tuple."""
    if isinstance(result, (tuple, list)):
        out = tuple(result)
    else:
        out = tuple(getattr(result, name) for name in BUILD_PACK_FIELDS)
    if len(out) != len(BUILD_PACK_FIELDS):
        raise RuntimeError(f"build_pack: builder returned {len(out)} fields, expected {len(BUILD_PACK_FIELDS)}")
    return out


def _build_pack_host(*args: Tensor) -> tuple[Tensor, ...]:
    """Run the CPU builder: C++ ``scar._C.build_pack`` when built, else ``scar.trie.build_pack_reference``."""
    ext = _extension()
    if ext is not None and hasattr(ext, "build_pack"):
        result = ext.build_pack(*args)
    else:
        from scar.trie import build_pack_reference

        result = build_pack_reference(*args)
    # Custom-op outputs must be fresh tensors (never aliases of inputs or of each other).
    return tuple(t.clone() for t in _as_tuple(result))


@torch.library.custom_op("scar::build_pack", mutates_args=(), device_types="cpu")
def _build_pack_cpu(
    coalitions: Tensor,
    owner: Tensor,
    seg_offsets: Tensor,
    seg_player: Tensor,
    seg_len: Tensor,
    prompt_len: Tensor,
    suffix_len: Tensor,
    cached_len: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _build_pack_host(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len)


@_build_pack_cpu.register_kernel("cuda")
def _build_pack_cuda(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len):
    from scar_kernels.pack import expand_nodes

    dev = coalitions.device
    host = _build_pack_host(*(t.cpu() for t in (coalitions, owner, seg_offsets, seg_player, seg_len,
                                                 prompt_len, suffix_len, cached_len)))
    gather, position_ids, _, readout, inverse, tree, node_start, node_len, node_parent, node_segment = host
    n_tokens = int(gather.shape[0])
    # Per-node first-token values; the token arrays are rebuilt on the GPU from these M-sized tables.
    node_src, node_pos0, node_tree = gather[node_start], position_ids[node_start], tree[node_start]
    nodes = [t.to(dev) for t in (node_start, node_len, node_parent, node_pos0, node_src, node_tree)]
    horizon_d, position_d, gather_d, tree_d = expand_nodes(
        nodes[0], nodes[1], nodes[2], nodes[3], n_tokens, nodes[4], nodes[5], validate=False
    )
    return (gather_d, position_d, horizon_d, readout.to(dev), inverse.to(dev), tree_d,
            nodes[0], nodes[1], nodes[2], node_segment.to(dev))


@_build_pack_cpu.register_fake
def _build_pack_fake(coalitions, owner, seg_offsets, seg_player, seg_len, prompt_len, suffix_len, cached_len):
    if coalitions.dim() != 2 or coalitions.dtype != torch.bool:
        raise ValueError(f"build_pack: coalitions must be a 2-D bool tensor, got {coalitions.dtype} {tuple(coalitions.shape)}")
    if owner.dim() != 1 or owner.shape[0] != coalitions.shape[0]:
        raise ValueError(f"build_pack: owner must have shape [{coalitions.shape[0]}], got {tuple(owner.shape)}")
    ctx = torch.library.get_ctx()
    n_tokens = ctx.new_dynamic_size()
    n_nodes = ctx.new_dynamic_size()
    C = coalitions.shape[0]

    def vec(n, dtype=torch.int64):
        return coalitions.new_empty((n,), dtype=dtype)

    return (vec(n_tokens), vec(n_tokens), vec(n_tokens, torch.int32), vec(C), vec(C), vec(n_tokens),
            vec(n_nodes), vec(n_nodes), vec(n_nodes), vec(n_nodes))


def build_pack(
    coalitions: Tensor,
    owner: Tensor,
    seg_offsets: Tensor,
    seg_player: Tensor,
    seg_len: Tensor,
    prompt_len: Tensor,
    suffix_len: Tensor,
    cached_len: Tensor,
) -> tuple[Tensor, ...]:
    """Build the prefix-tree pack through the ``scar::build_pack`` op (contract in ``scar.trie``).

    Returns ``(gather, position_ids, horizon, readout, inverse, tree, node_start, node_len,
    node_parent, node_segment)`` on the device of ``coalitions``.
    """
    return torch.ops.scar.build_pack(coalitions, owner, seg_offsets, seg_player, seg_len,
                                     prompt_len, suffix_len, cached_len)
