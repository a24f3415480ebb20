"""The locally built sentiment world behind ``scar demo``; nothing here downloads anything.

- :mod:`scar.demo.sentiment`: a small sentiment task (text, tokenizer, GPT-2 reward model and policy),
  built deterministically and cached (:func:`build`);
- :mod:`scar.demo.templates`: its template grammar over the VADER lexicon;
- :mod:`scar.demo.cache` and :mod:`scar.demo.training`: the cache folders and the training-loop pieces
  that locally trained worlds share.
"""

from scar.demo.sentiment import REWARD_SCALE, SentimentWorld, build, vader_score

__all__ = ["REWARD_SCALE", "SentimentWorld", "build", "vader_score"]
