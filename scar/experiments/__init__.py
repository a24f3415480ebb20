"""Experiments that train with SCAR's dense credit and compare it with baselines.

* :mod:`scar.experiments.sentiment` -- GRPO on the local sentiment task with sparse, ABC and SCAR credit.
"""
