"""SCAR kernels: the bottom layer, below the ``scar`` library (it never imports ``scar``).

- :mod:`scar_kernels.ops`: the entry point: ``torch.library`` ops ``scar::tree_attention``,
  ``scar::build_pack`` and ``scar::dense_mask`` with CPU, CUDA and fake implementations, and
  :func:`~scar_kernels.ops.implementation`, which names what each op runs on a device.
- :mod:`scar_kernels.layout`: the packed prefix-tree layout contract, its pure-Python reference builder
  and the dense mask of a horizon.
- :mod:`scar_kernels.tree_attention`: the Triton tree-attention kernel with block skipping, its launcher,
  the torch reference and block-skip statistics.
- :mod:`scar_kernels.dense_mask`: the Triton kernel writing a pack's additive mask.
- :mod:`scar_kernels.flex`: the same tree attention through PyTorch's FlexAttention, with a ``BlockMask``
  built from ``horizon`` in O(N).
- :mod:`scar_kernels.selection`: which tree attention (the op or FlexAttention) is faster on a device,
  timed on a scoring-shaped pack (re-exported by :mod:`scar_kernels.ops`).
- :mod:`scar_kernels.extension`: the one loader of the compiled module ``scar_kernels._C`` (``csrc/``).

Nothing here needs a GPU or Triton at import time; Triton is imported when a kernel is first launched.
"""
