"""Integrations with other libraries.

- :mod:`scar.integrations.transformers`: the ``"scar_tree"`` attention function for ``transformers``
  models and :func:`~scar.integrations.transformers.packed_forward` (imported on demand, so that
  ``import scar`` does not import ``transformers``).
- :mod:`scar.integrations.trl`: dense SCAR credit for TRL trainers (imported on demand as well).
"""
