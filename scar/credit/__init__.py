"""Credit: Shapley values of responses, dense per-token rewards, baselines and per-token advantages.

- :mod:`scar.credit.attribution`: Shapley values of responses' players with a coalition scorer;
- :mod:`scar.credit.rewards`: :class:`DenseRewards` and the maths from per-player credit to per-token rewards;
- :mod:`scar.credit.config` and :mod:`scar.credit.rewarder`: :class:`CreditConfig` and :class:`SCAR`;
- :mod:`scar.credit.baselines`: attention-based credit (ABC) and the sparse reward;
- :mod:`scar.credit.advantages`: per-token GRPO advantages from dense rewards.
"""

from scar.credit.advantages import dense_group_advantages
from scar.credit.attribution import ResponseError, shapley_values, shapley_values_many
from scar.credit.baselines import AttentionCredit, SparseCredit, attention_credit, sparse_credit
from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR
from scar.credit.rewards import DenseRewards, place_credit, shape_rewards, sparse_rewards

__all__ = [
    "SCAR",
    "AttentionCredit",
    "CreditConfig",
    "DenseRewards",
    "ResponseError",
    "SparseCredit",
    "attention_credit",
    "dense_group_advantages",
    "place_credit",
    "shape_rewards",
    "shapley_values",
    "shapley_values_many",
    "sparse_credit",
    "sparse_rewards",
]
