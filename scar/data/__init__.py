"""Locally built data for SCAR: a small sentiment task (text, tokenizer, reward model, policy).

See :mod:`scar.data.sentiment`; nothing here downloads anything.
"""

from scar.data.sentiment import REWARD_SCALE, SentimentWorld, build, vader_score

__all__ = ["REWARD_SCALE", "SentimentWorld", "build", "vader_score"]
