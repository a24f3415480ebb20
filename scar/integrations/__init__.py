"""Integrations with other libraries; each is imported on demand, so ``import scar`` imports none of them.

- :mod:`scar.integrations.trl`: dense SCAR credit for TRL's GRPO/RLOO trainers (a reward function that
  returns per-token rows, and ``DenseGRPOTrainer``, which turns them into per-token advantages).
- :mod:`scar.integrations.verl`: a verl reward manager (``"scar"``) that writes per-token rows into
  ``token_level_scores``, and the ``"scar_grpo"`` advantage estimator.
"""
