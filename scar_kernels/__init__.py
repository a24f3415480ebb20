"""SCAR kernels: tree (horizon-masked) attention and pack building.

- :mod:`scar_kernels.tree_attention`: the Triton flash kernel with block skipping, its launcher, the
  dense torch reference and block-skip statistics.
- :mod:`scar_kernels.pack`: Triton kernels expanding a node table to per-token horizon/position ids
  and writing the dense additive mask, with torch references.
- :mod:`scar_kernels.ops`: the ``torch.library`` ops ``scar::tree_attention`` and ``scar::build_pack``
  (CPU: C++ extension or torch; CUDA: Triton; fake implementations for ``torch.compile``).

Nothing here needs a GPU or Triton at import time; Triton is imported when a kernel is first launched.
The ops are used as ``from scar_kernels.ops import tree_attention, build_pack``; this package does not
re-export them, so that ``scar_kernels.tree_attention`` stays the submodule.
"""
