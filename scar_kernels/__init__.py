"""SCAR kernels: tree (horizon-masked) attention and pack building.

- :mod:`scar_kernels.tree_attention`: the Triton flash kernel with block skipping, its launcher, the
  dense torch reference and block-skip statistics.
- :mod:`scar_kernels.pack`: Triton kernels expanding a node table to per-token horizon/position ids
  and writing the dense additive mask, with torch references.
- :mod:`scar_kernels.ops`: the ``torch.library`` ops ``scar::tree_attention`` and ``scar::build_pack``
  (CPU: C++ extension or torch; CUDA: Triton; fake implementations for ``torch.compile``).

Nothing here needs a GPU or Triton at import time; Triton is imported when a kernel is first launched.
"""
from scar_kernels.ops import build_pack, tree_attention
from scar_kernels.tree_attention import block_skip_stats, tree_attention_reference

__all__ = ["tree_attention", "build_pack", "tree_attention_reference", "block_skip_stats"]
