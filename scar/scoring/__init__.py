"""Scoring coalitions of response players with a reward model.

- :mod:`scar.scoring.scorer`: :class:`CoalitionScorer`, the facade;
- :mod:`scar.scoring.config`: :class:`ScorerConfig` and :class:`ScorerStats`;
- :mod:`scar.scoring.model`: what a reward model is (decoder or encoder, head, read-out, exactness of the trie);
- :mod:`scar.scoring.games`: one response's coalitions in source-buffer form, and their packed layout;
- :mod:`scar.scoring.loop`, :mod:`scar.scoring.batched`, :mod:`scar.scoring.trie`: the backends;
- :mod:`scar.scoring.passes`: splitting a pack into passes under a token budget;
- :mod:`scar.scoring.attention`: the packed forward with tree attention through transformers;
- :mod:`scar.scoring.views`: private views of the model (its parameters, the scorer's own modules and config);
- :mod:`scar.scoring.activations`: one-kernel forms of activations written as chains of operations, for views;
- :mod:`scar.scoring.precision`: the lower-precision copy that may score the coalitions of sampled credit;
- :mod:`scar.scoring.padded`: plain scoring of whole sequences in right-padded batches.
"""

from scar.scoring.config import ATTENTIONS, BACKENDS, REMOVALS, ScorerConfig, ScorerStats
from scar.scoring.scorer import CoalitionScorer

__all__ = ["ATTENTIONS", "BACKENDS", "REMOVALS", "CoalitionScorer", "ScorerConfig", "ScorerStats"]
