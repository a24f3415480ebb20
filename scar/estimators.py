"""Shapley and Owen value estimators for a batched value function.

A *value function* takes a bool tensor ``[C, n]`` (row ``c`` is coalition ``S_c``; column ``i`` says
whether player ``i`` is in it) and returns ``C`` values. In SCAR one call becomes one packed
reward-model pass, so every estimator here works in two phases:

1. :func:`plan` builds the whole *plan* (every coalition the method needs) with vectorised torch
   code and dedupes it: :attr:`ShapleyPlan.coalitions` holds each distinct coalition, including the
   empty coalition and the grand coalition, exactly once;
2. the caller evaluates those coalitions, in one call or many, and :meth:`ShapleyPlan.finish` turns
   the values into Shapley (or Owen) values in float64.

:func:`shapley` is the two phases with a value function in between (all distinct coalitions in one
``value_fn`` call, or in chunks of ``batch_size`` rows). Splitting them lets a caller evaluate the
plans of many games together: :func:`scar.attribution.shapley_values_many` scores the plans of a
whole batch of responses in one packed reward-model forest.

Methods (see :func:`shapley`):

``exact``
    All ``2**n`` coalitions, closed-form Shapley weights; ``n <= EXACT_MAX_PLAYERS``.
``permutation``
    Antithetic permutation sampling: each sampled permutation and its reverse. Efficiency holds
    exactly for every sampled permutation; the standard error comes from the spread of the
    antithetic pair means.
``kernel`` (the default)
    KernelSHAP with paired sampling (each coalition with its complement) and the efficiency
    constraint imposed exactly (KKT system). Coalition sizes whose every coalition the budget can
    afford are enumerated with exact kernel weights (as shap's KernelExplainer does); the rest of
    the budget samples the other sizes. Standard error: the cluster-robust sandwich
    (delta-method) variance of the constrained least-squares estimate, with complementary pairs
    as the independent units and leave-pair-out residuals (CR3). Like any KernelSHAP with a
    sampled design matrix it is consistent but slightly biased at small budgets (the bias falls
    faster than the standard error, which covers the variance only). When the budget covers every
    coalition the exact Shapley values are returned.
``owen``
    Owen values for a nested partition of the players. Exact by enumeration for small trees,
    antithetic hierarchy-consistent permutation sampling otherwise.

All randomness comes from a private ``torch.Generator`` seeded with ``seed``; the global RNG is
never touched, and the same seed gives the same plan and therefore the same values.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "EXACT_MAX_PLAYERS",
    "OWEN_EXACT_MAX_TERMS",
    "DEFAULT_PERMUTATIONS",
    "DEFAULT_METHOD",
    "kernel_default_budget",
    "METHODS",
    "ShapleyPlan",
    "ShapleyResult",
    "ValueFn",
    "plan",
    "shapley",
]

ValueFn = Callable[[torch.Tensor], Any]
"""``value_fn(coalitions: bool Tensor[C, n]) -> Tensor | ndarray | sequence of C numbers``."""

EXACT_MAX_PLAYERS = 20
"""Largest ``n`` for ``method="exact"``: ``2**20`` (about a million) coalitions, each evaluated once."""

OWEN_EXACT_MAX_TERMS = 2**18
"""``method="owen"`` without a budget is exact when the number of (player, coalition) terms of the
Owen formula, ``sum_i prod_levels 2**(siblings of i's ancestor at that level)``, is at most this;
larger trees are sampled with ``DEFAULT_PERMUTATIONS`` hierarchy-consistent permutations."""

DEFAULT_PERMUTATIONS = 32
"""Default budget of ``permutation`` and sampled ``owen``: 32 permutations (16 antithetic pairs)."""

DEFAULT_METHOD = "kernel"
"""The default estimator. Measured per token computed on the trie engine (``bench/RESULTS.md``), its error
is below antithetic permutation sampling's on trained and random-weight reward models; at the default
budget it is exact up to 8 players."""


def kernel_default_budget(n: int) -> int:
    """Default ``kernel`` budget: as many coalitions as ``DEFAULT_PERMUTATIONS`` permutations plan,
    ``DEFAULT_PERMUTATIONS * (n + 1)``, capped at the ``2**n - 2`` proper non-empty coalitions (where the
    answer is exact; 0 when ``n == 1``: nothing to sample)."""
    return min(DEFAULT_PERMUTATIONS * (n + 1), 2**n - 2)


METHODS = ("exact", "permutation", "kernel", "owen")


@dataclass(frozen=True, eq=False, repr=False)
class ShapleyResult:
    """Values of one game and how they were obtained.

    Attributes:
        values: float64 ``[n]`` Shapley (or Owen) values.
        stderr: float64 ``[n]`` standard error of each value for sampled estimates; NaN when it
            cannot be estimated (a single sampled pair), inf for ``kernel`` when the sample does
            not determine the values (raise the budget), zeros for ``kernel`` when its budget
            covered every coalition; ``None`` for ``exact`` and exact ``owen``.
        n_evals: number of distinct coalitions evaluated (rows passed to ``value_fn`` in total).
        base_value: ``v(∅)``.
        full_value: ``v(N)``.
        method: the method used.
        budget: the budget actually used: permutations for ``permutation`` and sampled ``owen``,
            planned coalitions besides ∅ and N for ``kernel`` (at most ``2**n - 2``); ``None``
            for ``exact`` and exact ``owen``.
    """

    values: torch.Tensor
    stderr: torch.Tensor | None
    n_evals: int
    base_value: float
    full_value: float
    method: str
    budget: int | None

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.values.shape[0])

    @property
    def efficiency_gap(self) -> float:
        """``sum(values) - (v(N) - v(∅))``; zero up to rounding for every method here."""
        return float(self.values.sum()) - (self.full_value - self.base_value)

    def __repr__(self) -> str:
        max_se = "None" if self.stderr is None else f"{float(self.stderr.max()):.3g}"
        return (
            f"ShapleyResult(method={self.method!r}, n_players={self.n_players}, "
            f"budget={self.budget}, n_evals={self.n_evals}, base_value={self.base_value:.6g}, "
            f"full_value={self.full_value:.6g}, efficiency_gap={self.efficiency_gap:.3g}, "
            f"max_stderr={max_se})"
        )


Solver = Callable[[torch.Tensor, int], ShapleyResult]
"""``solve(values of the planned rows [M] float64, n_evals) -> ShapleyResult`` of one method."""


@dataclass(frozen=True, eq=False, repr=False)
class ShapleyPlan:
    """The coalitions one game needs, and the way from their values to a :class:`ShapleyResult`.

    Built by :func:`plan`. Evaluate :attr:`coalitions` by any means (for instance together with the
    plans of other games in one packed reward-model pass) and hand the values to :meth:`finish`.

    Attributes:
        coalitions: bool ``[U, n]``, the distinct coalitions to evaluate, each once, ∅ and the
            grand coalition N included (rows in the order of their packed bit pattern).
        method: the method planned.
        budget: the budget the plan uses, as :attr:`ShapleyResult.budget`.
    """

    coalitions: torch.Tensor
    method: str
    budget: int | None
    _inverse: torch.Tensor  # int64 [M]: the row of `coalitions` of each planned row
    _solve: Solver

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.coalitions.shape[1])

    @property
    def n_evals(self) -> int:
        """Number of distinct coalitions to evaluate (rows of :attr:`coalitions`)."""
        return int(self.coalitions.shape[0])

    def finish(self, values: Any) -> ShapleyResult:
        """The Shapley (or Owen) values from the values of :attr:`coalitions`.

        Args:
            values: ``U`` finite numbers (torch tensor on any device, numpy array or sequence);
                ``values[u]`` is the value of ``coalitions[u]``.

        Raises:
            ValueError: values of the wrong shape, non-numeric, NaN or infinite (the message names
                the coalition).
        """
        return self._finish(_to_float64(values, self.coalitions, from_value_fn=False))

    def _finish(self, values: torch.Tensor) -> ShapleyResult:
        """:meth:`finish` for float64 ``[U]`` values that are already validated."""
        return self._solve(values[self._inverse], self.n_evals)

    def __repr__(self) -> str:
        return (f"ShapleyPlan(method={self.method!r}, n_players={self.n_players}, "
                f"budget={self.budget}, n_evals={self.n_evals})")


# --------------------------------------------------------------------------- argument checks


def _as_int(value: Any, name: str) -> int:
    """``operator.index(value)`` with a TypeError naming the argument; bools are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None


def _make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh entropy for this generator only; the global RNG is left alone
    else:
        gen.manual_seed(_as_int(seed, "seed"))
    return gen


# --------------------------------------------------------------------------- plan evaluation


def _pack_rows(coalitions: torch.Tensor) -> np.ndarray:
    """Pack bool rows ``[M, n]`` into int64 keys ``[M, ceil(n / 64)]`` (one bit per player)."""
    m = coalitions.shape[0]
    packed = np.packbits(coalitions.contiguous().numpy(), axis=1)
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((m, pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(np.int64)


def _unique_rows(coalitions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of a bool ``[M, n]`` plan and, for each row, the index of its distinct row.

    Sorts the packed keys with numpy's lexsort (torch's row-wise sorts and ``unique(dim=0)`` are
    several times slower on CPU) and keeps the first row of each run of equal keys.
    """
    keys = _pack_rows(coalitions)
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(1)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return coalitions[torch.from_numpy(order[starts])], torch.from_numpy(inverse)


def _random_orders(rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``rows`` independent uniform permutations of ``range(n)``, int64 ``[rows, n]``.

    The randomness comes from ``gen``; the row-wise argsort runs in numpy, about ten times faster
    than torch's CPU sort on many short rows.
    """
    keys = torch.rand(rows, n, generator=gen, dtype=torch.float64).numpy()
    return torch.from_numpy(np.argsort(keys, axis=1).astype(np.int64, copy=False))


def _players(row: torch.Tensor) -> list[int]:
    return torch.nonzero(row).flatten().tolist()


def _to_float64(raw: Any, batch: torch.Tensor, *, from_value_fn: bool = True) -> torch.Tensor:
    """Validate the values of the coalitions ``batch`` and return them as float64 ``[C]`` on the CPU.

    ``from_value_fn``: the values are one ``value_fn`` answer (inside :func:`shapley`), else the
    values handed to :meth:`ShapleyPlan.finish` for the whole plan; only the messages differ.
    """
    c = batch.shape[0]
    if from_value_fn:
        got, needs = "value_fn returned", "value_fn must return"
        where = f"the batch of {c} coalitions starting with coalition {_players(batch[0])}"
    else:
        got, needs = "ShapleyPlan.finish got", "ShapleyPlan.finish needs"
        where = f"the plan's {c} coalitions (ShapleyPlan.coalitions)"
    if isinstance(raw, torch.Tensor):
        if raw.is_complex():
            raise ValueError(f"{got} non-numeric values (dtype {raw.dtype}) for {where}")
        out = raw.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            arr = np.asarray(raw)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{got} something that is not an array of numbers "
                             f"({type(raw).__name__}) for {where}: {exc}") from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{got} non-numeric values (dtype {arr.dtype}) for {where}")
        out = torch.from_numpy(arr.astype(np.float64, copy=False).copy())
    if out.shape != (c,):
        raise ValueError(f"{needs} one value per coalition, shape ({c},), but "
                         f"{'returned' if from_value_fn else 'got'} shape {tuple(out.shape)} "
                         f"for {where}")
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        row = "" if from_value_fn else f"row {k} of the plan, "
        raise ValueError(f"{got} {float(out[k])} (not finite) for coalition "
                         f"{_players(batch[k])} ({row}players in the coalition, of "
                         f"{batch.shape[1]})")
    return out


def _with_ends(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with ∅ and N appended as its last two rows (dedupe keeps each once)."""
    n = rows.shape[1]
    ends = torch.stack([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    return torch.cat([rows, ends])


# --------------------------------------------------------------------------- exact


def _bits(masks: torch.Tensor, n: int) -> torch.Tensor:
    """Bool ``[len(masks), n]`` membership of the integer coalition masks."""
    return ((masks[:, None] >> torch.arange(n, dtype=torch.int64)) & 1).bool()


def _shapley_weights(n: int) -> torch.Tensor:
    """``w[s] = s! (n - 1 - s)! / n!`` for ``s = 0 .. n - 1`` (the weight of a coalition of size s)."""
    return torch.tensor([1.0 / (n * math.comb(n - 1, s)) for s in range(n)], dtype=torch.float64)


def _exact(n: int) -> tuple[torch.Tensor, int | None, Solver]:
    """Plan rows (all ``2**n`` coalitions, row ``k`` = integer mask ``k``), budget and solver."""
    if n > EXACT_MAX_PLAYERS:
        raise ValueError(
            f"method='exact' enumerates all 2**n coalitions and is limited to n_players <= "
            f"EXACT_MAX_PLAYERS = {EXACT_MAX_PLAYERS} (got n_players={n}); use a sampled method: "
            f"'permutation', 'kernel' or 'owen' (with a budget)")
    members = _bits(torch.arange(2**n, dtype=torch.int64), n)

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        sizes = members.sum(1)
        w = _shapley_weights(n)
        # phi_i = sum over S without i of w(|S|) (v(S + i) - v(S)); the 2**(n-1) masks without
        # bit i are the integers k < 2**(n-1) with a zero bit inserted at position i.
        k = torch.arange(2 ** (n - 1), dtype=torch.int64)
        values = torch.empty(n, dtype=torch.float64)
        for i in range(n):
            low = k & ((1 << i) - 1)
            without = ((k >> i) << (i + 1)) | low
            values[i] = (w[sizes[without]] * (v[without | (1 << i)] - v[without])).sum()
        return ShapleyResult(values, None, n_evals, float(v[0]), float(v[-1]), "exact", None)

    return members, None, solve


# --------------------------------------------------------------------------- permutation sampling


def _prefix_plan(perms: torch.Tensor) -> torch.Tensor:
    """All prefixes of each permutation: bool ``[m * (n + 1), n]``, row ``p * (n + 1) + k`` holds
    the first ``k`` players of permutation ``p``."""
    m, n = perms.shape
    rank = torch.empty_like(perms)
    rank.scatter_(1, perms, torch.arange(n, dtype=perms.dtype).expand(m, n))
    plan = rank[:, None, :] < torch.arange(n + 1, dtype=perms.dtype)[None, :, None]
    return plan.reshape(m * (n + 1), n)


def _from_antithetic_perms(perms: torch.Tensor,
                           method: str) -> tuple[torch.Tensor, int | None, Solver]:
    """Plan rows, budget and solver of the estimate from permutations ``perms[:P]`` and their
    reverses ``perms[P:]``.

    Each permutation gives one unbiased sample (its marginal contributions); the mean of a
    permutation and its reverse is one independent sample for the standard error.
    """
    m, n = perms.shape
    pairs = m // 2

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        chain = v[:-2].view(m, n + 1)
        samples = torch.zeros(m, n, dtype=torch.float64)
        samples.scatter_(1, perms, chain[:, 1:] - chain[:, :-1])
        pair_means = 0.5 * (samples[:pairs] + samples[pairs:])
        values = pair_means.mean(0)
        if pairs > 1:
            stderr = pair_means.std(0, correction=1) / math.sqrt(pairs)
        else:
            stderr = torch.full((n,), float("nan"), dtype=torch.float64)
        return ShapleyResult(values, stderr, n_evals, base, full, method, m)

    return _with_ends(_prefix_plan(perms)), m, solve


def _check_perm_budget(budget: int, method: str) -> None:
    if budget < 2:
        raise ValueError(f"method={method!r} needs budget >= 2 permutations (one antithetic pair); "
                         f"got budget={budget}")
    if budget % 2:
        raise ValueError(f"method={method!r} samples permutations in antithetic pairs, so budget "
                         f"(number of permutations) must be even; got budget={budget}")


def _permutation(n: int, budget: int | None,
                 gen: torch.Generator) -> tuple[torch.Tensor, int | None, Solver]:
    budget = DEFAULT_PERMUTATIONS if budget is None else budget
    _check_perm_budget(budget, "permutation")
    half = _random_orders(budget // 2, n, gen)
    perms = torch.cat([half, half.flip(1)])
    return _from_antithetic_perms(perms, "permutation")


# --------------------------------------------------------------------------- KernelSHAP


def _kkt_solve(a: torch.Tensor, b: torch.Tensor,
               total: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Minimise ``phi' A phi - 2 b' phi`` subject to ``sum(phi) = total``.

    Solves the KKT system ``[[A, 1], [1', 0]] [phi; nu] = [b; total]`` with a pseudo-inverse, so
    players that the sample cannot tell apart (identical columns) share their credit equally
    instead of failing. Returns ``(phi, M, identified)``: ``M`` (the top-left block of the
    inverse) maps a perturbation of ``b - A phi`` to the perturbation of ``phi`` (used for the
    sandwich variance); ``identified`` is False when the system is singular, i.e. the sample does
    not determine every value.
    """
    n = a.shape[0]
    kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    kkt[:n, :n] = a
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    eig, vec = torch.linalg.eigh(kkt)
    keep = eig.abs() > eig.abs().max() * (n + 1) * torch.finfo(torch.float64).eps
    inv = (vec[:, keep] / eig[keep]) @ vec[:, keep].T
    rhs = torch.cat([b, torch.tensor([total], dtype=torch.float64)])
    return (inv @ rhs)[:n], inv[:n, :n], bool(keep.all())


def _kernel_plan(n: int, budget: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Coalitions and regression weights of hybrid paired KernelSHAP (as shap's KernelExplainer).

    The Shapley kernel puts total mass ``(n - 1) / (s (n - s))`` on coalition size ``s``. Sizes
    ``s`` and ``n - s`` form one class. Classes are visited from the extremes inwards; a class is
    enumerated completely while the budget left, spread by kernel mass over the classes left,
    would give it at least one sample per coalition. The rest of the budget samples the remaining
    classes (class by kernel mass, then a uniform coalition of that size, then its complement).

    Returns ``(z [rows, n] bool, weight [rows], sampled_pairs, sampled_mass)``: the enumerated rows
    come first with their exact kernel weights; the last ``2 * sampled_pairs`` rows are the
    sampled ones (pair ``p`` is rows ``e + p`` and ``e + sampled_pairs + p``), each weighted
    ``sampled_mass / (2 * sampled_pairs)``. The weights sum to 1.
    """
    classes = list(range(1, n // 2 + 1))  # class s holds sizes s and n - s (just s when 2s == n)
    size_mass = {k: (n - 1) / (k * (n - k)) for k in range(1, n)}
    total = sum(size_mass.values())
    mass = {k: (size_mass[k] if 2 * k == n else 2 * size_mass[k]) / total for k in classes}
    rows, weights = [], []
    left, mass_left = budget, 1.0
    while classes:
        k = classes[0]
        count = math.comb(n, k) * (1 if 2 * k == n else 2)
        if left * mass[k] / mass_left < count - 1e-8:
            break
        members = torch.zeros(math.comb(n, k), n, dtype=torch.bool)
        members.scatter_(1, torch.combinations(torch.arange(n), r=k).view(-1, k), True)
        block = members if 2 * k == n else torch.cat([members, ~members])
        rows.append(block)
        weights.append(torch.full((count,), mass[k] / count, dtype=torch.float64))
        left -= count
        mass_left -= mass[k]
        classes.pop(0)
    pairs = left // 2 if classes else 0
    if pairs:
        class_mass = torch.tensor([mass[k] for k in classes], dtype=torch.float64)
        size = torch.tensor(classes)[torch.multinomial(class_mass, pairs, replacement=True,
                                                       generator=gen)]
        # The positions holding 0 .. size-1 in a uniform random order form a uniform subset.
        picked = _random_orders(pairs, n, gen) < size[:, None]
        rows.append(torch.cat([picked, ~picked]))
        weights.append(torch.full((2 * pairs,), mass_left / (2 * pairs), dtype=torch.float64))
    else:
        mass_left = 0.0
    z = torch.cat(rows) if rows else torch.zeros(0, n, dtype=torch.bool)
    w = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return z, w, pairs, mass_left


def _kernel_stderr(zf: torch.Tensor, resid: torch.Tensor, m: torch.Tensor, pairs: int,
                   mass: float) -> torch.Tensor:
    """Cluster-robust (CR3, jackknife-like) sandwich standard error of the hybrid KernelSHAP fit.

    Only the last ``2 * pairs`` rows (the sampled ones, each weighted ``mass / (2 pairs)``) are
    random; pairs are the independent units. Linearising the KKT system,
    ``phi_hat - phi ~= M (b_hat - A_hat phi) = mass * M mean_p(psi_p)`` with ``psi_p`` the pair's
    mean of ``z (y - z' phi)``. Plain residuals make this too small when the budget is small next
    to ``n`` (the fit is pulled towards every sample), so each pair's residuals are replaced by its
    leave-pair-out residuals ``(I - H_pp)^-1 r_p`` (``H_pp``: the pair's 2x2 block of the hat
    matrix). Infinite when leaving out some pair would leave the values undetermined. Like every
    sandwich estimate it is asymptotic: with few sampled pairs (below about ``3 n``) it can be
    too small.
    """
    n = zf.shape[1]
    if pairs < 2:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    first, second = zf[-2 * pairs:-pairs], zf[-pairs:]
    r_first, r_second = resid[-2 * pairs:-pairs], resid[-pairs:]
    w = mass / (2 * pairs)
    zm_first, zm_second = w * first @ m, w * second @ m
    hat = torch.stack([
        torch.stack([(zm_first * first).sum(1), (zm_first * second).sum(1)], -1),
        torch.stack([(zm_second * first).sum(1), (zm_second * second).sum(1)], -1),
    ], -2)  # [pairs, 2, 2]
    eye_minus_hat = torch.eye(2, dtype=torch.float64) - hat
    if bool((torch.linalg.eigvalsh(eye_minus_hat)[:, 0] < 1e-9).any()):
        # Some pair alone determines part of the fit: without it the values are not identified,
        # so no finite error can be claimed.
        return torch.full((n,), float("inf"), dtype=torch.float64)
    r = torch.stack([r_first, r_second], -1)[..., None]
    r_out = torch.linalg.solve(eye_minus_hat, r)[..., 0]
    psi = 0.5 * (first * r_out[:, :1] + second * r_out[:, 1:])
    centred = psi - psi.mean(0)
    cov = mass**2 * (centred.T @ centred) / ((pairs - 1) * pairs)
    return torch.sqrt(torch.clamp(torch.diagonal(m @ cov @ m.T), min=0.0))


def _kernel(n: int, budget: int | None,
            gen: torch.Generator) -> tuple[torch.Tensor, int | None, Solver]:
    if budget is None:
        budget = kernel_default_budget(n)
    else:
        if budget < 2:
            raise ValueError(f"method='kernel' needs budget >= 2 sampled coalitions (one coalition "
                             f"and its complement); got budget={budget}")
        if budget % 2:
            raise ValueError(f"method='kernel' samples coalitions in complementary pairs, so "
                             f"budget (number of sampled coalitions) must be even; got "
                             f"budget={budget}")
        budget = min(budget, 2**n - 2)
    z, w, pairs, sampled_mass = _kernel_plan(n, budget, gen)

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        base, full = float(v[-2]), float(v[-1])
        y = v[:-2] - base
        zf = z.double()
        values, m, identified = _kkt_solve(zf.T @ (w[:, None] * zf), zf.T @ (w * y), full - base)
        # The solve meets sum(phi) = v(N) - v(∅) up to cond(KKT) * eps; spread that residue
        # evenly so efficiency holds to rounding for any conditioning.
        values += ((full - base) - values.sum()) / n
        if not identified:  # some players never separated in the sample: their split is arbitrary
            stderr = torch.full((n,), float("inf"), dtype=torch.float64)
        elif pairs == 0:  # every coalition enumerated: the exact Shapley values
            stderr = torch.zeros(n, dtype=torch.float64)
        else:
            stderr = _kernel_stderr(zf, y - zf @ values, m, pairs, sampled_mass)
        return ShapleyResult(values, stderr, n_evals, base, full, "kernel", budget)

    return _with_ends(z), budget, solve


# --------------------------------------------------------------------------- Owen values


def _parse_hierarchy(hierarchy: Any, n: int) -> list:
    """Check that ``hierarchy`` is a nested partition of ``range(n)``; return it as nested lists."""

    seen: list[int] = []

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, (bool, np.bool_)):
            raise TypeError(f"hierarchy{path} is a bool ({node!r}); players are ints")
        if isinstance(node, (list, tuple)):
            if len(node) == 0:
                raise ValueError(f"hierarchy{path} is an empty group; every group needs a player")
            return [walk(child, f"{path}[{k}]") for k, child in enumerate(node)]
        try:
            player = operator.index(node)
        except TypeError:
            raise TypeError(f"hierarchy{path} must be a player index (int) or a list of them, got "
                            f"{type(node).__name__} ({node!r})") from None
        seen.append(player)
        return player

    if not isinstance(hierarchy, (list, tuple)):
        raise TypeError(f"hierarchy must be a (nested) list of player indices, got "
                        f"{type(hierarchy).__name__}")
    tree = walk(hierarchy, "")
    counts = np.bincount([p for p in seen if 0 <= p < n], minlength=n)
    outside = sorted({p for p in seen if not 0 <= p < n})
    problems = []
    if outside:
        problems.append(f"players out of range(0, {n}): {outside}")
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        problems.append(f"missing players: {missing}")
    duplicated = np.flatnonzero(counts > 1).tolist()
    if duplicated:
        problems.append(f"duplicated players: {duplicated}")
    if problems:
        raise ValueError(f"hierarchy must be a partition of range({n}); " + "; ".join(problems))
    return tree


def _members(node: Any) -> list[int]:
    return [node] if isinstance(node, int) else [p for child in node for p in _members(child)]


def _owen_paths(tree: list, n: int) -> list[list[tuple[torch.Tensor, int]]]:
    """For each player, the levels from the root down: ``(sibling member masks [m-1, n], m)``."""
    paths: list[list[tuple[torch.Tensor, int]]] = [[] for _ in range(n)]

    def walk(node: list, above: list[tuple[torch.Tensor, int]]) -> None:
        groups = torch.zeros(len(node), n, dtype=torch.bool)
        for k, child in enumerate(node):
            groups[k, _members(child)] = True
        for k, child in enumerate(node):
            level = above + [(torch.cat([groups[:k], groups[k + 1:]]), len(node))]
            if isinstance(child, int):
                paths[child] = level
            else:
                walk(child, level)

    walk(tree, [])
    return paths


def _owen_terms(tree: list) -> int:
    """Terms of the exact Owen formula: sum over players of prod over levels of 2**(siblings)."""

    def walk(node: list, factor: int) -> int:
        below = factor * 2 ** (len(node) - 1)
        return sum(below if isinstance(child, int) else walk(child, below) for child in node)

    return walk(tree, 1)


def _owen_exact(n: int, paths: list) -> tuple[torch.Tensor, int | None, Solver]:
    """Plan rows, budget and solver of the exact Owen values.

    Owen value of player i: sum over one sibling subset R_l per level (the groups that come before
    i's group in a random consistent order) of prod_l |R_l|! (m_l-1-|R_l|)! / m_l! times i's
    marginal contribution to the union of the R_l.
    """
    befores, weights = [], []
    for path in paths:
        coal = torch.zeros(1, n, dtype=torch.bool)
        weight = torch.ones(1, dtype=torch.float64)
        for siblings, m in path:
            pick = _bits(torch.arange(2 ** (m - 1), dtype=torch.int64), m - 1)
            part = (pick[:, :, None] & siblings[None, :, :]).any(1)  # union of picked groups
            w = _shapley_weights(m)[pick.sum(1)]
            coal = (coal[:, None, :] | part[None, :, :]).reshape(-1, n)
            weight = (weight[:, None] * w[None, :]).reshape(-1)
        befores.append(coal)
        weights.append(weight)
    withs = []
    for i, before in enumerate(befores):
        after = before.clone()
        after[:, i] = True
        withs.append(after)
    sizes = [b.shape[0] for b in befores]

    def solve(v: torch.Tensor, n_evals: int) -> ShapleyResult:
        v_before = v[: sum(sizes)].split(sizes)
        v_with = v[sum(sizes): 2 * sum(sizes)].split(sizes)
        values = torch.stack([(w * (hi - lo)).sum()
                              for w, hi, lo in zip(weights, v_with, v_before)])
        return ShapleyResult(values, None, n_evals, float(v[-2]), float(v[-1]), "owen", None)

    return _with_ends(torch.cat(befores + withs)), None, solve


def _owen_sampled(tree: list, n: int, budget: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, int | None, Solver]:
    """Plan rows, budget and solver of antithetic sampling of hierarchy-consistent permutations.

    Every tree node below the root gets a uniform random key per sample; ordering players by the
    keys of their ancestors (root's child first, lexicographically) orders the children of every
    node uniformly at random and keeps each group contiguous. Reversing such a permutation reverses
    the order at every node, so it is again consistent and equally likely.
    """
    _check_perm_budget(budget, "owen")
    ancestors: list[list[int]] = [[] for _ in range(n)]
    n_nodes = 0

    def walk(node: list, chain: list[int]) -> None:
        nonlocal n_nodes
        for child in node:
            node_id = n_nodes
            n_nodes += 1
            if isinstance(child, int):
                ancestors[child] = chain + [node_id]
            else:
                walk(child, chain + [node_id])

    walk(tree, [])
    depth = max(len(a) for a in ancestors)
    # A player that is a leaf above the deepest level is alone below its last ancestor, so any
    # constant key (the extra node n_nodes, whose key is 0) is fine for the missing levels.
    anc = torch.tensor([a + [n_nodes] * (depth - len(a)) for a in ancestors], dtype=torch.int64)
    half = budget // 2
    keys = torch.rand(half, n_nodes + 1, generator=gen, dtype=torch.float64)
    keys[:, n_nodes] = 0.0
    order = torch.arange(n, dtype=torch.int64).expand(half, n).clone()
    for d in range(depth - 1, -1, -1):  # least significant level first, stable sorts
        level_keys = keys[:, anc[:, d]].gather(1, order)
        by_key = np.argsort(level_keys.numpy(), axis=1, kind="stable")
        order = order.gather(1, torch.from_numpy(by_key))
    perms = torch.cat([order, order.flip(1)])
    return _from_antithetic_perms(perms, "owen")


def _owen(n: int, hierarchy: Any, budget: int | None,
          gen: torch.Generator) -> tuple[torch.Tensor, int | None, Solver]:
    if hierarchy is None:
        raise ValueError("method='owen' needs a hierarchy: nested lists of player indices that "
                         "partition range(n_players), e.g. [[0, 1], [2, [3, 4]]]")
    tree = _parse_hierarchy(hierarchy, n)
    if budget is None and _owen_terms(tree) <= OWEN_EXACT_MAX_TERMS:
        return _owen_exact(n, _owen_paths(tree, n))
    budget = DEFAULT_PERMUTATIONS if budget is None else budget
    return _owen_sampled(tree, n, budget, gen)


# --------------------------------------------------------------------------- entry points


def plan(
    n_players: int,
    *,
    method: str = DEFAULT_METHOD,
    budget: int | None = None,
    seed: int | None = None,
    hierarchy: Sequence[Any] | None = None,
) -> ShapleyPlan:
    """Phase one of :func:`shapley`: the distinct coalitions a method needs, and how to finish.

    Evaluate ``plan(...).coalitions`` (bool ``[U, n_players]``) and pass the ``U`` values to
    :meth:`ShapleyPlan.finish`; the result is exactly what :func:`shapley` returns for the same
    arguments and a value function giving the same values.

    Args:
        n_players, method, budget, seed, hierarchy: as :func:`shapley`.

    Returns:
        A :class:`ShapleyPlan`.

    Raises:
        TypeError: ``n_players``, ``budget`` or ``seed`` not an int; malformed hierarchy entries.
        ValueError: ``n_players < 1``; unknown method; budget invalid for the method; budget given
            to ``exact``; hierarchy given to a method other than ``owen`` or not a partition;
            ``exact`` with more than ``EXACT_MAX_PLAYERS`` players.
    """
    n = _as_int(n_players, "n_players")
    if n < 1:
        raise ValueError(f"n_players must be >= 1, got {n}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if budget is not None:
        budget = _as_int(budget, "budget")
    if hierarchy is not None and method != "owen":
        raise ValueError(f"hierarchy is only used by method='owen', got method={method!r}")
    gen = _make_generator(seed)

    if method == "exact":
        if budget is not None:
            raise ValueError(f"method='exact' evaluates all 2**n coalitions and takes no budget "
                             f"(got budget={budget}); use 'permutation' or 'kernel' to sample")
        rows, used, solve = _exact(n)
    elif method == "permutation":
        rows, used, solve = _permutation(n, budget, gen)
    elif method == "kernel":
        rows, used, solve = _kernel(n, budget, gen)
    else:
        rows, used, solve = _owen(n, hierarchy, budget, gen)
    uniq, inverse = _unique_rows(rows)
    return ShapleyPlan(uniq, method, used, inverse, solve)


def shapley(
    value_fn: ValueFn,
    n_players: int,
    *,
    method: str = DEFAULT_METHOD,
    budget: int | None = None,
    seed: int | None = None,
    hierarchy: Sequence[Any] | None = None,
    batch_size: int | None = None,
) -> ShapleyResult:
    """Shapley (or Owen) values of the game ``value_fn`` on ``n_players`` players.

    The two phases of :func:`plan` and :meth:`ShapleyPlan.finish` with ``value_fn`` in between.

    Args:
        value_fn: maps a bool tensor ``[C, n_players]`` of coalitions to ``C`` finite numbers
            (torch tensor, numpy array or sequence). Each distinct coalition the method needs,
            including ∅ and the grand coalition, is passed exactly once; all of them in one call
            unless ``batch_size`` is given.
        n_players: number of players, a positive int.
        method: ``"exact"``, ``"permutation"``, ``"kernel"`` (default) or ``"owen"`` (see the module docs).
        budget: sampling budget. ``permutation``: number of permutations, even and >= 2 (default
            ``DEFAULT_PERMUTATIONS`` = 32). ``kernel``: number of coalitions planned besides ∅ and
            N (enumerated size classes plus sampled pairs; duplicates among the sampled ones are
            evaluated once, so ``n_evals <= budget + 2``), even and >= 2 (default
            :func:`kernel_default_budget`, ``min(32 (n + 1), 2**n - 2)``; a budget >= ``2**n - 2``
            gives the exact answer).
            ``owen``: number of hierarchy-consistent permutations, even and >= 2; when omitted
            the Owen values are exact if the tree is small (``OWEN_EXACT_MAX_TERMS``), else 32
            permutations are sampled. ``exact`` takes none.
        seed: seed of the private generator of sampled methods (same seed, same result); ``None``
            draws fresh entropy.
        hierarchy: ``owen`` only: nested lists of player indices partitioning ``range(n)``, e.g.
            ``[[0, 1], [2, [3, 4]]]``; a flat list of ints is singleton groups (= Shapley).
        batch_size: at most this many coalitions per ``value_fn`` call.

    Returns:
        A :class:`ShapleyResult`.

    Raises:
        TypeError: ``value_fn`` not callable; ``n_players``, ``budget``, ``seed`` or
            ``batch_size`` not an int; malformed hierarchy entries.
        ValueError: ``n_players < 1``; unknown method; budget invalid for the method; budget given
            to ``exact``; hierarchy given to a method other than ``owen`` or not a partition;
            ``exact`` with more than ``EXACT_MAX_PLAYERS`` players; ``value_fn`` returning the
            wrong shape, non-numeric, NaN or infinite values (the message names the coalition).
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable (bool Tensor[C, n] -> [C] values), got "
                        f"{type(value_fn).__name__}")
    if batch_size is not None:
        batch_size = _as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    game = plan(n_players, method=method, budget=budget, seed=seed, hierarchy=hierarchy)
    coalitions = game.coalitions
    step = coalitions.shape[0] if batch_size is None else batch_size
    chunks = [_to_float64(value_fn(batch), batch) for batch in coalitions.split(step)]
    return game._finish(torch.cat(chunks))
