"""Locally built data for SCAR; nothing here downloads anything.

- :mod:`scar.data.sentiment`: a small sentiment task (text, tokenizer, reward model, policy) for the demo
  and the training experiment; its names are re-exported here.
- :mod:`scar.data.lexicon`: a word-level sentiment world and a GPT-2 reward model (4 layers x 256) trained
  on it, for the benchmarks that need credit concentrated on a few words (``bench/bench_equal_error.py``).
"""

from scar.data.sentiment import REWARD_SCALE, SentimentWorld, build, vader_score

__all__ = ["REWARD_SCALE", "SentimentWorld", "build", "vader_score"]
