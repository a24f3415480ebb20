"""The game: players (contiguous pieces of a response) and the tokenization convention they rest on.

- :mod:`scar.game.tokens`: what the reward model scores for a (prompt, response) pair, each token's
  character range, and moving per-token values between tokenizations;
- :mod:`scar.game.players`: tokens, spans and sentences as players, and their hierarchy.
"""

from scar.game.players import (
    DEFAULT_MAX_SPAN_TOKENS,
    KINDS,
    Player,
    hierarchy,
    segment,
    segment_ids,
    segment_text,
    validate_players,
)
from scar.game.tokens import Encoded, encode_pair, map_to_tokens, to_policy_tokens, token_offsets

__all__ = [
    "DEFAULT_MAX_SPAN_TOKENS",
    "KINDS",
    "Encoded",
    "Player",
    "encode_pair",
    "hierarchy",
    "map_to_tokens",
    "segment",
    "segment_ids",
    "segment_text",
    "to_policy_tokens",
    "token_offsets",
    "validate_players",
]
