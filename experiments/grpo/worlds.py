"""Variants of the sentiment world that only this experiment uses, registered as extra sizes of the world.

``small-reward``: the default world (same corpus, tokenizer, seeds and policy) with a reward model of 2 layers
x 64 instead of 4 x 128, so that the policy has several times the reward model's parameters, as when a large
policy is trained against a smaller reward model. The credit's cost scales with the reward model and the
policy's steps with the policy, so this is the size ratio at which the balance of wall time is measured.
"""

from __future__ import annotations

from dataclasses import replace

from scar.demo import sentiment

__all__ = ["VARIANTS", "register"]

VARIANTS = {
    "small-reward": replace(sentiment.SIZES["default"], reward_layers=2, reward_width=64, reward_heads=2),
}
"""Extra world sizes: name -> :class:`scar.demo.sentiment.SizeConfig`."""


def register() -> None:
    """Add :data:`VARIANTS` to the world's sizes (idempotent), so that ``build(size=name)`` builds and caches them."""
    for name, config in VARIANTS.items():
        if sentiment.SIZES.setdefault(name, config) != config:
            raise ValueError(f"the world already has a different size named {name!r}")
