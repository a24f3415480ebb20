"""Adapters for the peers: the tools a user would pick instead of SCAR, on the same span-player game.

- ``shap-partition``: shap's Partition explainer over a ``shap.maskers.Text`` masker with its default
  500 evaluations and ONE reward-model call per masked string. This is how the SCAR authors computed
  their rewards. The authors replace removed spans by a space, i.e. delete them; here the masker writes
  the ``[ABSENT]`` token and the model function drops it before scoring, which is the same deletion (a
  space is not a token that shap's masker can insert). Its attributions are token-level Owen values
  over shap's own token clustering; to compare them with span-level Shapley values they are summed over
  each span player's tokens.
- ``shap-permutation``: shap's Permutation explainer on the span-player game (a 0/1 matrix of kept
  players, scored in padded batches).
- ``captum-svs``: captum's ``ShapleyValueSampling`` with a ``feature_mask`` of span players, batched with
  ``perturbations_per_eval``; the forward deletes the tokens of absent players.
- ``shapiq-kernel`` / ``shapiq-permutation``: shapiq's ``KernelSHAP`` and ``PermutationSamplingSV`` on the
  span-player game (scored in padded batches).

The span-game peers call a :class:`Recorder`, which counts their evaluations and scores coalitions with
:func:`scar_bench.workloads.score_sequences` (or serves them from a table of exact values).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from scar_bench.measure import RunResult
from scar_bench.vocab import ABSENT_ID
from scar_bench.workloads import PEER_BATCH_TOKENS, Instance, score_sequences

__all__ = [
    "PEER_METHODS",
    "AUTHORS_METHOD",
    "SHAP_PARTITION_EVALS",
    "Recorder",
    "shap_partition",
    "shap_permutation",
    "captum_forward",
    "captum_shapley",
    "shapiq_approximate",
    "shapiq_exact",
]

PEER_METHODS = ("shap-partition", "shap-permutation", "captum-svs", "shapiq-kernel", "shapiq-permutation")
AUTHORS_METHOD = "shap-partition"
SHAP_PARTITION_EVALS = 500
"""shap Partition's default ``max_evals``: the SCAR authors' budget."""


class Recorder:
    """Counts a peer's evaluations and scores coalitions of span players in padded batches.

    With ``value_table`` (the accuracy study), values come from the table instead of the model and each
    call is charged ``token_cost(coalitions)`` tokens.
    """

    def __init__(self, inst: Instance, value_table: Callable[[np.ndarray], np.ndarray] | None = None,
                 token_cost: Callable[[np.ndarray], int] | None = None) -> None:
        self.inst = inst
        self.value_table = value_table
        self.token_cost = token_cost
        self.coalitions = 0
        self.tokens = 0
        self.calls = 0
        self.rows: list[np.ndarray] = []

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        bits = np.asarray(coalitions) > 0.5
        if bits.ndim == 1:
            bits = bits[None]
        self.rows.append(bits.copy())
        self.coalitions += bits.shape[0]
        self.calls += 1
        if self.value_table is not None:
            # Accuracy study: values from the exact table; cost = one plain sequence per coalition.
            self.tokens += self.token_cost(bits)
            return self.value_table(bits)
        seqs = [self.inst.sequence(self.inst.token_mask(b)) for b in bits]
        values, tokens, _ = score_sequences(self.inst.model, seqs)
        self.tokens += tokens
        return values

    def result(self, values: np.ndarray) -> RunResult:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, len(self.inst.players)), dtype=bool)
        return RunResult(np.asarray(values, dtype=np.float64).reshape(-1), self.coalitions, self.tokens,
                         self.calls, feature_coalitions=rows)


def _np_seed(seed: int) -> None:
    # shap's samplers draw from numpy's global generator; seed it so that runs repeat.
    np.random.seed(seed)


def shap_partition(inst: Instance, max_evals: int) -> RunResult:
    """The SCAR authors' path: shap Partition over a Text masker, one reward-model call per string."""
    import shap  # optional peer (bench extra); slow to import

    counter = {"calls": 0, "tokens": 0}
    masks: list[np.ndarray] = []

    def model_fn(strings: np.ndarray) -> np.ndarray:
        out = np.empty(len(strings), dtype=np.float64)
        with torch.inference_mode():
            for i, s in enumerate(strings):
                ids = [t for t in inst.tokenizer(str(s), add_special_tokens=False)["input_ids"] if t != ABSENT_ID]
                seq = inst.prompt_ids + ids + inst.suffix_ids
                out[i] = float(inst.model(input_ids=torch.tensor([seq])).logits[0, 0])
                counter["calls"] += 1
                counter["tokens"] += len(seq)
                masks.append(_kept_tokens(inst.response_ids, ids))
        return out

    masker = shap.maskers.Text(inst.tokenizer, mask_token="[ABSENT]")
    explainer = shap.PartitionExplainer(model_fn, masker)
    sv = explainer([inst.response_text], max_evals=max_evals, silent=True)
    token_values = np.asarray(sv.values[0], dtype=np.float64).reshape(-1)
    if token_values.shape[0] != len(inst.response_ids):
        raise RuntimeError(f"shap's Text masker split the response into {token_values.shape[0]} tokens, "
                           f"expected {len(inst.response_ids)}")
    values = np.array([token_values[s:e].sum() for s, e in inst.players])
    return RunResult(values, counter["calls"], counter["tokens"], counter["calls"], token_values=token_values,
                     feature_coalitions=np.stack(masks) if masks else None, token_level=True)


def _kept_tokens(response: list[int], kept: list[int]) -> np.ndarray:
    """Which response tokens a masked response keeps (greedy subsequence match; the masker deletes)."""
    keep = np.zeros(len(response), dtype=bool)
    j = 0
    for i, t in enumerate(response):
        if j < len(kept) and kept[j] == t:
            keep[i] = True
            j += 1
    if j != len(kept):
        raise RuntimeError("a masked response is not a subsequence of the response")
    return keep


def shap_permutation(inst: Instance, rec: Recorder, n_perms: int, seed: int) -> RunResult:
    """shap's Permutation explainer on the span game, ``n_perms`` permutations (forward + backward pairs)."""
    import shap  # optional peer (bench extra); slow to import

    n = len(inst.players)
    _np_seed(seed)
    masker = shap.maskers.Independent(np.zeros((1, n)), max_samples=1)
    explainer = shap.PermutationExplainer(lambda x: rec(x), masker, seed=seed)
    # shap counts a forward+backward pass over one permutation as 2n + 1 evaluations.
    sv = explainer(np.ones((1, n)), max_evals=max(n_perms // 2, 1) * (2 * n + 1), silent=True)
    return rec.result(sv.values[0])


def captum_forward(inst: Instance, rec: Recorder) -> Callable[[torch.Tensor], torch.Tensor]:
    """A captum forward over response token ids where absent players' tokens carry ``ABSENT_ID``."""
    starts = [s for s, _ in inst.players]

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        present = (inputs != ABSENT_ID).numpy()
        return torch.from_numpy(rec(present[:, starts]))

    return forward


def captum_shapley(inst: Instance, rec: Recorder, n_perms: int | None, seed: int) -> RunResult:
    """captum ShapleyValueSampling (``n_perms`` permutations) or, with ``n_perms=None``, exact ShapleyValues."""
    from captum.attr import ShapleyValues, ShapleyValueSampling  # optional peer (bench extra)

    x = torch.tensor([inst.response_ids])
    feature_mask = torch.zeros(1, len(inst.response_ids), dtype=torch.int64)
    for j, (s, e) in enumerate(inst.players):
        feature_mask[0, s:e] = j
    baselines = torch.full_like(x, ABSENT_ID)
    forward = captum_forward(inst, rec)
    per_eval = max(1, PEER_BATCH_TOKENS // len(inst.sequence(np.ones(len(inst.response_ids)))))
    torch.manual_seed(seed)  # captum draws its permutations from torch's global generator
    if n_perms is None:
        attr = ShapleyValues(forward).attribute(x, baselines=baselines, feature_mask=feature_mask,
                                                perturbations_per_eval=per_eval)
    else:
        attr = ShapleyValueSampling(forward).attribute(x, baselines=baselines, feature_mask=feature_mask,
                                                       n_samples=n_perms, perturbations_per_eval=per_eval)
    return rec.result(np.array([float(attr[0, s]) for s, _ in inst.players]))


def shapiq_approximate(inst: Instance, rec: Recorder, kind: str, budget: int, seed: int) -> RunResult:
    """shapiq's ``KernelSHAP`` (``kind="kernel"``) or ``PermutationSamplingSV`` with ``budget`` evaluations."""
    import shapiq  # optional peer (bench extra); slow to import

    n = len(inst.players)
    approx = (shapiq.KernelSHAP(n=n, random_state=seed) if kind == "kernel"
              else shapiq.PermutationSamplingSV(n=n, random_state=seed))
    iv = approx.approximate(budget, rec)
    return rec.result(np.asarray(iv.get_n_order_values(1), dtype=np.float64).reshape(-1))


def shapiq_exact(inst: Instance, rec: Recorder) -> RunResult:
    """shapiq's ``ExactComputer``: exact Shapley values over every coalition."""
    import shapiq  # optional peer (bench extra); slow to import

    iv = shapiq.ExactComputer(rec, n_players=len(inst.players))("SV")
    return rec.result(np.asarray(iv.get_n_order_values(1), dtype=np.float64).reshape(-1))
