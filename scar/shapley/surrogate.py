"""Odd polynomial surrogates of the pair differences, and the regression-adjusted stratified estimate.

The stratified plan (:func:`scar.shapley.stratified.stratified_design`) samples coalitions in complementary
pairs ``(S, N \\ S)``, and the stratified estimate of a size class depends on a pair only through the
difference ``d(S) = v(S) - v(N \\ S)``. With ``x_i = 2 z_i - 1`` (``+1`` for a member, ``-1`` otherwise),
``d`` is an odd function of ``x``; a surrogate of order ``k`` (odd) models it as

    g(x) = sum_i a_i x_i + sum_{a<b<c} c_abc x_a x_b x_c  (+ the degree-``k`` products up to ``k``),

the Fourier terms of odd degree up to ``k`` (even-degree terms of ``v`` cancel in ``d``; this is why an
order-2 model of ``v`` adds nothing on complementary pairs). It is fitted by weighted least squares to the
sampled differences, one row per pair, each class's rows sharing its Shapley-kernel mass, the pair ``(∅, N)``
weighted :data:`SURROGATE_END_WEIGHT`, with the ridge penalty :data:`SURROGATE_RIDGE` on the terms of degree
above one. ``g`` is the pair difference of the game ``f(S) = g(x(S)) / 2``, whose Shapley values are closed
form: each degree-``m`` term ``c_T x_T`` gives ``c_T / m`` to each member of ``T``.

Per size class. Write ``p = s / n`` for the class's size ``s`` (the smaller one), and for any odd ``g``

    Q_{i,s}(g) = E[g(x(S)) (z_i - p)] / (p (1 - p)),  S uniform among the coalitions of size s,

which is closed form: a term ``c_T x_T`` of degree ``m`` contributes ``c_T (E_{m-1}(s - 1) + E_{m-1}(s))``
to the members of ``T`` and ``c_T (E_m(s - 1) - E_m(s))`` to the others, with ``E_m(t)`` the mean of a
product of ``m`` of the ``x`` over a uniform ``t``-subset of ``n - 1`` players (a hypergeometric sum). The
class's share of the Shapley value, ``C_{i,k} = D_{i,k} + D_{i,n-k}`` in the notation of
:mod:`scar.shapley.stratified` (``D_{i,n/2}`` alone for the middle class), is ``Q_{i,k}(d)`` (half of it for the
middle class), so ``phi_i = (v(N) - v(∅)) / n + (1 / n) sum_k C_{i,k}`` and ``Q`` sums to zero over players.

The adjusted estimate (:meth:`RegressionAdjustment.estimate`) writes ``Q(d) = Q(g) + Q(d - g)``: the first
term in closed form, the second by Monte Carlo on the residuals, with cross-fitting over the jackknife groups
of the plan. For group ``j`` the surrogate ``g_j`` is fitted on the pairs of every other group and the fixed
rows (the enumerated classes and ``(∅, N)``). In a sampled class with ``U`` distinct pairs, ``m`` sampled, ``m_j``
of them in group ``j`` and ``m_o = m - m_j`` in the others: given the other groups' pairs, group ``j``'s pairs
are a simple random sample of the pairs the others did not draw, so

    T_j = sum_{other pairs} h_j + (U - m_o) / m_j sum_{pairs of j} h_j,   h_j = (d - g_j(x) - c_j) (z_i - p),

is unbiased for ``sum_{all U pairs} (d - g_j)(z_i - p) = U p (1 - p) Q_i(d - g_j)`` (``c_j``, the other
groups' mean residual in the class, is fixed given them and ``sum (z_i - p)`` over the class's pairs is 0; for
the middle class, whose pairs have no preferred member, ``c_j = 0``). Each group's ``Q(g_j) + T_j / (U p
(1 - p))`` is unbiased for ``Q(d)``; the class's estimate averages them with weights ``m_j / m`` (fixed by the
plan). Enumerated classes contribute their exact share. The estimate is unbiased whenever every class is
sampled, whatever the surrogates, and exactly efficient (each ``h_j`` sums to zero over players). A jackknife
replicate (one group deleted) is the same estimate on the other groups, the surrogates refitted without the
deleted group.

Size terms (:data:`SIZE_TERMS`) add degree-one terms whose coefficients depend on the pair's class ``k``: ``g``
then differs from class to class, and each class's contrasts use its own coefficients (a degree-one term
``c x_i`` acting on class ``k`` contributes ``c`` times the class's degree-one contrasts), so the closed form and
the cross-fitting are unchanged.

The fits without each group and each pair of groups are computed together (:attr:`RegressionAdjustment.solver`).
With fewer rows than coefficients (``p = n`` for order 1, ``n + comb(n, 3)`` for order 3), in the dual form: one
system of ``rows + n`` unknowns over every row, inverted once, from which removing a group's rows is a Schur
complement of the size of its rows. Otherwise each fit solves its ``p x p`` normal equations (per-group parts
accumulated once), or, with fewer sampled pairs than ``p``, removes the excluded groups' rows from the fit on every
group by the Woodbury identity. A fast fit is kept only if it satisfies its normal equations to rounding, else
solved directly. Surrogates above :data:`SURROGATE_MAX_FEATURES` coefficients are not fitted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Protocol

import torch

__all__ = [
    "SURROGATE_RIDGE",
    "SURROGATE_END_WEIGHT",
    "SURROGATE_MAX_FEATURES",
    "SURROGATE_SIZE_RIDGE",
    "SIZE_TERMS",
    "surrogate_feature_count",
    "surrogate_features",
    "surrogate_shapley",
    "surrogate_class_contrasts",
    "RegressionAdjustment",
]

SURROGATE_RIDGE = 1e-3
"""Ridge penalty on the surrogate's terms of degree above one, relative to the fitted rows' total kernel
weight (about 1)."""

SURROGATE_END_WEIGHT = 1e3
"""Weight of the pair ``(∅, N)`` in the surrogate fit (the other rows' weights sum to about 1)."""

SURROGATE_SIZE_RIDGE = 1e-3
"""Ridge penalty on a surrogate's size terms (see :data:`SIZE_TERMS`: their departure from the shared degree-one
terms), relative to the fitted rows' total kernel weight."""

SIZE_TERMS = ("class", "trend")
"""Degree-one terms whose coefficient depends on the pair's size class ``k`` (the smaller size), for games whose
players' effects change with the coalition's size: ``"class"``, each class's own ``n`` terms (``n * (n // 2)``
coefficients); ``"trend"``, ``n`` terms ``x_i (k / n - 1 / 4)``, a linear trend in the size (``n``
coefficients, stable with few pairs per class)."""

SURROGATE_MAX_FEATURES = 1200
"""Largest surrogate fitted (coefficients): order 3 up to ``n = 20``, order 1 up to ``n = 1200``."""

_TINY_RIDGE = 1e-10  # on the degree-one terms, so that every system is positive definite


class _StratumLike(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int: ...
    @property
    def population(self) -> int: ...


@functools.lru_cache(maxsize=64)
def _terms(n: int, order: int) -> list[torch.Tensor]:
    """The index sets of the surrogate's terms, by odd degree: ``[m_terms, m]`` int64 per degree (cached:
    do not modify)."""
    return [
        torch.combinations(torch.arange(n), m) if m > 1 else torch.arange(n)[:, None] for m in range(1, order + 1, 2)
    ]


def surrogate_feature_count(n: int, order: int, size_terms: str | None = None) -> int:
    """Coefficients of an order-``order`` surrogate on ``n`` players: ``sum_{m odd <= order} comb(n, m)``, plus
    its size terms (:data:`SIZE_TERMS`)."""
    return sum(math.comb(n, m) for m in range(1, order + 1, 2)) + n * _size_weights(n, size_terms, 1).numel()


def _size_weights(n: int, size_terms: str | None, k: int) -> torch.Tensor:
    """Weights ``[blocks]`` of the ``n``-term blocks of the size terms for a pair of class ``k`` (0: ``(∅, N)``,
    which has no class of its own and sits where the trend puts size 0)."""
    if size_terms is None:
        return torch.zeros(0, dtype=torch.float64)
    if size_terms == "class":
        out = torch.zeros(n // 2, dtype=torch.float64)
        if k > 0:
            out[k - 1] = 1.0
        return out
    if size_terms == "trend":
        return torch.tensor([k / n - 0.25], dtype=torch.float64)
    raise ValueError(f"size_terms must be None or one of {SIZE_TERMS}, got {size_terms!r}")


def surrogate_features(z: torch.Tensor, order: int) -> torch.Tensor:
    """Design matrix ``[rows, p]`` float64: the products ``x_T`` (``x = 2 z - 1``) of every odd degree up to
    ``order``, degree by degree, each degree's index sets in the order of ``torch.combinations``."""
    x = 2.0 * z.double() - 1.0
    cols = []
    for idx in _terms(z.shape[1], order):
        cols.append(x[:, idx].prod(dim=2) if idx.shape[0] else x[:, :0])
    return torch.cat(cols, dim=1)


def _by_degree(beta: torch.Tensor, n: int, order: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(m, index sets, coefficients)`` per odd degree ``m``."""
    out, at = [], 0
    for idx in _terms(n, order):
        out.append((idx.shape[1], idx, beta[at : at + idx.shape[0]]))
        at += idx.shape[0]
    return out


def _member_sums(idx: torch.Tensor, coef: torch.Tensor, n: int) -> torch.Tensor:
    """``sum_{T containing i} c_T`` for every player ``i``."""
    out = torch.zeros(n, dtype=torch.float64)
    if idx.shape[0]:
        out.index_add_(0, idx.reshape(-1), coef[:, None].expand(idx.shape).reshape(-1))
    return out


def surrogate_shapley(beta: torch.Tensor, n: int, order: int) -> torch.Tensor:
    """Shapley values of ``f(S) = g(x(S)) / 2``: each term ``c_T x_T`` gives ``c_T / |T|`` to each member."""
    out = torch.zeros(n, dtype=torch.float64)
    for m, idx, coef in _by_degree(beta, n, order):
        out += _member_sums(idx, coef, n) / m
    return out


def _product_mean(m: int, t: int, players: int) -> float:
    """Mean of ``x_1 ... x_m`` over a uniform ``t``-subset of ``players`` players (``x = +-1``)."""
    if m == 0:
        return 1.0
    total = math.comb(players, t)
    if m > players:
        return 0.0  # no such product (it has no term)
    ways = (
        math.comb(m, j) * math.comb(players - m, t - j) * (-1) ** (m - j)
        for j in range(max(0, t - players + m), min(m, t) + 1)
    )
    return sum(ways) / total


@functools.lru_cache(maxsize=256)
def _contrast_matrix(n: int, order: int, size: int) -> torch.Tensor:
    """``[n, p]``: ``Q_{i,size}(g)`` is row ``i`` times the coefficients (cached: do not modify). A degree-``m``
    term gives ``member`` to each of its members and ``other`` to every other player."""
    blocks = []
    for idx in _terms(n, order):
        m = idx.shape[1]
        member = _product_mean(m - 1, size - 1, n - 1) + _product_mean(m - 1, size, n - 1)
        other = _product_mean(m, size - 1, n - 1) - _product_mean(m, size, n - 1)
        block = torch.full((n, idx.shape[0]), other, dtype=torch.float64)
        block.scatter_(0, idx.T.contiguous(), member)
        blocks.append(block)
    return torch.cat(blocks, dim=1)


def surrogate_class_contrasts(beta: torch.Tensor, n: int, order: int, size: int) -> torch.Tensor:
    """``Q_{i,s}(g)`` for coalitions of ``size`` players (see the module docs), ``[n]``; sums to zero."""
    return _contrast_matrix(n, order, size) @ beta


def _pair_rows(
    z: torch.Tensor, st: _StratumLike, other: _StratumLike, middle: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the class's pairs: one member of each and its complement (int64 indices). A sampled middle
    class holds its pairs' first members, then their complements; an enumerated one every coalition of size
    ``n / 2`` once, paired here with its complement (the member holding player 0 first)."""
    rows = torch.arange(st.start, st.stop)
    if not middle:
        return rows, torch.arange(other.start, other.stop)
    zs = z[st.start : st.stop]
    if st.stop - st.start < st.population:
        half = rows.shape[0] // 2
        return rows[:half], rows[half:]
    weights = torch.tensor([1 << i for i in range(z.shape[1])], dtype=torch.int64)
    codes = (zs.long() * weights).sum(1)
    where = {int(c): i for i, c in enumerate(codes.tolist())}
    first = zs[:, 0].nonzero()[:, 0]
    full = int(weights.sum())
    comp = torch.tensor([where[full - int(codes[i])] for i in first.tolist()], dtype=torch.int64)
    return rows[first], rows[comp]


class RegressionAdjustment:
    """The regression-adjusted estimate with an order-``order`` odd surrogate (see the module docs), for any
    deleted jackknife group.

    Args:
        z: the design ``[rows, n]`` bool of :func:`~scar.shapley.stratified.stratified_design`; y: its values
            (float64); strata, group: its strata and the rows' groups (``-1``: enumerated); base, full: ``v(∅)``
            and ``v(N)``; order: 1 or 3; mass: the Shapley-kernel mass of each size class.
    """

    def __init__(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        strata: Sequence[_StratumLike],
        group: torch.Tensor,
        base: float,
        full: float,
        order: int,
        mass: dict[int, float],
        size_terms: str | None = None,
    ) -> None:
        n = z.shape[1]
        self.n, self.order, self.size_terms = n, order, size_terms
        self.equal = (full - base) / n
        stratum_of = {st.size: st for st in strata if st.stop > st.start}
        # sampled classes: (size, their rows in the fit, their pairs' members, groups, pairs in the class)
        self.classes: list[tuple[int, slice, torch.Tensor, torch.Tensor, int]] = []
        self.exact_sum = torch.zeros(n, dtype=torch.float64)
        reps, diffs, weights, groups, sizes = [], [], [], [], []
        at = 0
        for k in sorted(s for s in stratum_of if 2 * s <= n):
            st = stratum_of[k]
            middle = 2 * k == n
            rep, comp = _pair_rows(z, st, stratum_of[n - k], middle)
            zk, dk, gk = z[rep], y[rep] - y[comp], group[rep]
            units = st.population // 2 if middle else st.population
            q = k / n
            if bool((gk < 0).all()):  # enumerated: the exact share of the class
                share = (dk[:, None] * (zk.double() - q)).sum(0) / (units * q * (1 - q))
                self.exact_sum += share / 2 if middle else share
            else:
                self.classes.append((k, slice(at, at + zk.shape[0]), zk, gk, units))
            at += zk.shape[0]
            reps.append(zk)
            diffs.append(dk)
            weights.append(torch.full((zk.shape[0],), mass[k] / zk.shape[0], dtype=torch.float64))
            groups.append(gk)
            sizes.append(torch.full((zk.shape[0],), k, dtype=torch.int64))
        self.x = self._features(torch.cat(reps), torch.cat(sizes))
        self.d = torch.cat(diffs)
        self.weight = torch.cat(weights)
        self.row_group = torch.cat(groups)
        self.used = sorted(set(self.row_group[self.row_group >= 0].tolist()))
        # every row of the fit: the pairs, then (∅, N) (group -1: in every fit)
        ends = self._features(torch.ones(1, n, dtype=torch.bool), torch.zeros(1, dtype=torch.int64))
        self._xa = torch.cat([self.x, ends])
        self._wa = torch.cat([self.weight, torch.tensor([SURROGATE_END_WEIGHT], dtype=torch.float64)])
        self._ta = torch.cat([self.d, torch.tensor([full - base], dtype=torch.float64)])
        self._ga = torch.cat([self.row_group, torch.tensor([-1], dtype=torch.int64)])
        p = self.x.shape[1]
        self.ridge = torch.full((p,), SURROGATE_RIDGE, dtype=torch.float64)
        self.ridge[:n] = _TINY_RIDGE
        self.ridge[surrogate_feature_count(n, order) :] = SURROGATE_SIZE_RIDGE
        sampled = int((self.row_group >= 0).sum())
        self.solver = "dual" if self._xa.shape[0] + n < p else "downdate" if sampled < p else "direct"
        """How the fits without sets of groups are computed: ``"dual"`` (fewer rows than coefficients: the
        rows x rows system, rows removed by its inverse's Schur complement), ``"downdate"`` (fewer sampled
        pairs than coefficients: Woodbury downdates of the fit on every group) or ``"direct"`` (the
        ``p x p`` normal equations of each fit); any fit that fails its check is solved directly."""
        # Sampled classes by jackknife group: each fit's residual sums per (class, group) are then one product.
        c, g, rows_all = len(self.classes), len(self.used), self.x.shape[0]
        slot = {j: i for i, j in enumerate(self.used)}
        self._sum_rows = torch.zeros(c * g, rows_all, dtype=torch.float64)
        self._centred = torch.zeros(rows_all, n, dtype=torch.float64)  # z - s/n on the sampled classes' rows
        self._contrasts = torch.empty(c * n, p, dtype=torch.float64)
        class_units, class_middle, class_scale = [], [], []
        for ci, (k, rows, zk, gk, u) in enumerate(self.classes):
            q = k / n
            self._centred[rows] = zk.double() - q
            row_index = torch.arange(rows.start, rows.stop)
            slots = torch.tensor([slot[int(j)] for j in gk.tolist()], dtype=torch.int64)
            self._sum_rows[ci * g + slots, row_index] = 1.0
            self._contrasts[ci * n : (ci + 1) * n] = self._class_contrasts(k)
            class_units.append(float(u))
            class_middle.append(2 * k == n)
            class_scale.append(u * q * (1 - q))
        self._counts = self._sum_rows.sum(1).reshape(c, g)
        self._zsums = (self._sum_rows @ self._centred).reshape(c, g, n)
        self._units = torch.tensor(class_units, dtype=torch.float64)
        self._middle = torch.tensor(class_middle, dtype=torch.bool)
        self._scale = torch.tensor(class_scale, dtype=torch.float64)
        self._sums: dict[frozenset[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _features(self, z: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Design rows of the pairs ``z`` whose classes are ``sizes`` (the smaller size; 0 for ``(∅, N)``)."""
        shared = surrogate_features(z, self.order)
        if self.size_terms is None:
            return shared
        table = torch.stack([_size_weights(self.n, self.size_terms, k) for k in range(self.n // 2 + 1)])
        own = table[sizes][:, :, None] * (2.0 * z.double() - 1.0)[:, None, :]  # [rows, blocks, n]
        return torch.cat([shared, own.reshape(z.shape[0], -1)], dim=1)

    def _class_contrasts(self, k: int) -> torch.Tensor:
        """``[n, p]``: ``Q_{i,k}(g)`` is row ``i`` times the coefficients; the size terms act on class ``k``
        with their weights for that class."""
        shared = _contrast_matrix(self.n, self.order, k)
        if self.size_terms is None:
            return shared
        weights = _size_weights(self.n, self.size_terms, k)
        own = weights[None, :, None] * _contrast_matrix(self.n, 1, k)[:, None, :]  # [n, B, n]
        return torch.cat([shared, own.reshape(self.n, -1)], dim=1)

    @functools.cached_property
    def _group_equations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normal equations' parts: ``(A, b)`` of the fit on every group (the ridge included) and each
        sampled group's share ``[G, p, p]``, ``[G, p]``."""
        xw = self._xa * self._wa[:, None]
        a = xw.T @ self._xa + torch.diag(self.ridge)
        b = xw.T @ self._ta
        grams = torch.stack([xw[self._ga == j].T @ self._xa[self._ga == j] for j in self.used])
        rhss = torch.stack([xw[self._ga == j].T @ self._ta[self._ga == j] for j in self.used])
        return a, b, grams, rhss

    def _normal_equations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` of the fit on every group: the fixed rows, every group's rows and the ridge."""
        a, b, _, _ = self._group_equations
        return a, b

    def _removed(self, sets: list[frozenset[int]]) -> torch.Tensor:
        """bool ``[E, rows]``: the rows (of :attr:`_xa`) each set of groups removes."""
        return torch.stack([torch.isin(self._ga, torch.tensor(sorted(e), dtype=torch.int64)) for e in sets])

    def _checked(self, betas: torch.Tensor, removed: torch.Tensor) -> list[torch.Tensor | None]:
        """Each fit ``betas[e]`` if it satisfies the normal equations of the rows it keeps to rounding,
        ``ridge beta = X' W (t - X beta)`` over those rows, else None; in ``O(rows p)`` per fit."""
        keep = (~removed).T.double()  # [rows, E]
        resid = self._wa[:, None] * keep * (self._ta[:, None] - self._xa @ betas.T)
        gap = (self.ridge[:, None] * betas.T - self._xa.T @ resid).abs().amax(0)
        scale = (self._xa.T @ (self._wa[:, None] * keep * self._ta[:, None])).abs().amax(0).clamp(min=1.0)
        return [betas[e] if float(gap[e]) <= 1e-9 * float(scale[e]) else None for e in range(betas.shape[0])]

    def _direct(self, sets: list[frozenset[int]]) -> torch.Tensor:
        """Coefficients ``[E, p]`` fitted without each set of groups: the ``p x p`` normal equations, solved
        together."""
        a, b, grams, rhss = self._group_equations
        drop = torch.tensor([[float(j in e) for j in self.used] for e in sets], dtype=torch.float64)  # [E, G]
        a_e = a - torch.einsum("eg,gpq->epq", drop, grams)
        b_e = b - drop @ rhss
        chol, info = torch.linalg.cholesky_ex(a_e)
        betas = torch.cholesky_solve(b_e[:, :, None], chol)[:, :, 0]
        for e in (info != 0).nonzero()[:, 0].tolist():  # pragma: no cover - the ridge keeps them positive definite
            betas[e] = torch.linalg.lstsq(a_e[e], b_e[e][:, None], driver="gelsd").solution[:, 0]
        return betas

    def _family(self, excluded: frozenset[int]) -> list[frozenset[int]]:
        """The sets of groups whose fits the estimate and its jackknife replicates use (every group alone and
        every pair of groups), with ``excluded``."""
        family = {frozenset([i, j]) for i in self.used for j in self.used} | {excluded}
        return sorted(family, key=lambda e: sorted(e))

    def _downdated(self, excluded: frozenset[int]) -> torch.Tensor | None:
        """The same coefficients from the fit on every group, with the excluded groups' rows removed by the
        Woodbury identity (cheaper when the sampled pairs are fewer than the coefficients); None when the
        result does not satisfy its normal equations to rounding."""
        return self._downdate_batch([excluded])[0]

    def _downdate_batch(self, sets: list[frozenset[int]]) -> list[torch.Tensor | None]:
        """:meth:`_downdated` for each set of excluded groups, as batched products and solves: with ``V = A^-1 X'``
        and ``K = X V`` over the sampled rows, removing rows ``S`` gives ``beta + V_S c`` where
        ``(W_S^-1 - K_SS) c' = X_S beta - K_SS (w d)_S`` and ``c = c' - (w d)_S``."""
        a, b = self._normal_equations()
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:  # pragma: no cover - the ridge keeps the system positive definite
            return [None] * len(sets)
        beta = torch.cholesky_solve(b[:, None], chol)[:, 0]
        sampled = (self.row_group >= 0).nonzero()[:, 0]
        xs, ws = self.x[sampled], self.weight[sampled]
        wd = ws * self.d[sampled]
        v = torch.cholesky_solve(xs.T.contiguous(), chol)  # [p, R]
        k = xs @ v  # [R, R]
        xb = xs @ beta
        groups = self.row_group[sampled]
        masks = torch.stack([torch.isin(groups, torch.tensor(sorted(e), dtype=torch.int64)) for e in sets])  # [E, R]
        width = max(1, int(masks.sum(1).max()))
        # each set's rows, padded to one width: padded entries solve an identity row with a zero right side
        order = torch.sort((~masks).to(torch.int8), dim=1, stable=True).indices[:, :width]  # its rows first
        valid = torch.gather(masks, 1, order)  # [E, width]
        pair = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(width, dtype=torch.float64).expand(len(sets), -1, -1)
        sub = k[order[:, :, None], order[:, None, :]]
        m = torch.where(pair, torch.diag_embed(1.0 / ws[order]) - sub, eye)
        kwd = (k @ (wd[:, None] * masks.T.double())).T  # [E, R]: K (w d restricted to the set)
        rhs = torch.where(valid, torch.gather(xb.expand(len(sets), -1) - kwd, 1, order), 0.0)
        c = torch.where(valid, torch.linalg.solve(m, rhs) - wd[order], 0.0)  # [E, width]
        full = torch.zeros(len(sets), xs.shape[0], dtype=torch.float64).scatter_(1, order, c)  # [E, R]
        betas = beta[:, None] + v @ full.T  # [p, E]
        return self._checked(betas.T, self._removed(sets))

    @functools.cached_property
    def _dual_inverse(self) -> torch.Tensor:
        """The inverse of the fit's dual system over every row (see :meth:`_dual_batch`)."""
        n, rows = self.n, self._xa.shape[0]
        system = torch.zeros(rows + n, rows + n, dtype=torch.float64)
        system[:rows, :rows] = (self._xa[:, n:] / self.ridge[n:]) @ self._xa[:, n:].T + torch.diag(1.0 / self._wa)
        system[:rows, rows:] = self._xa[:, :n]
        system[rows:, :rows] = self._xa[:, :n].T
        system[rows:, rows:] = -torch.diag(self.ridge[:n])
        return torch.linalg.inv(system)

    def _dual_batch(self, sets: list[frozenset[int]]) -> list[torch.Tensor | None]:
        """The fits without each set of groups in the dual form, for fewer rows than coefficients.

        With the degree-one coefficients ``a`` (ridge ``r``, negligible) and the rest ``c`` (ridge ``L``), the
        fit's optimality conditions are ``(W^-1 + X_c L^-1 X_c') u + X_a a = t``, ``X_a' u = r a`` and
        ``c = L^-1 X_c' u`` (``u = W (t - X beta)``, the weighted residuals): a system of ``rows + n``
        unknowns. Removing the rows ``S`` removes their rows and columns from it; with ``P`` its inverse on
        every row, the solution without them is ``y - P[:, S] P[S, S]^-1 y[S]`` for ``y = P (t with t[S] =
        0)``. Each fit is checked like the downdates."""
        n, rows = self.n, self._xa.shape[0]
        inv = self._dual_inverse
        removed = self._removed(sets)  # [E, rows]
        target = torch.zeros(len(sets), rows + n, dtype=torch.float64)
        target[:, :rows] = torch.where(removed, 0.0, self._ta)
        y = target @ inv.T  # [E, rows + n]
        width = max(1, int(removed.sum(1).max()))
        order = torch.sort((~removed).to(torch.int8), dim=1, stable=True).indices[:, :width]  # removed rows first
        valid = torch.gather(removed, 1, order)  # [E, width]
        pair = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(width, dtype=torch.float64).expand(len(sets), -1, -1)
        block = torch.where(pair, inv[order[:, :, None], order[:, None, :]], eye)
        c = torch.linalg.solve(block, torch.where(valid, torch.gather(y, 1, order), 0.0))  # [E, width]
        spread = torch.zeros(len(sets), rows + n, dtype=torch.float64).scatter_(1, order, c)
        solution = y - spread @ inv.T
        u = torch.where(removed, 0.0, solution[:, :rows])
        betas = torch.cat([solution[:, rows:], (u @ self._xa[:, n:]) / self.ridge[n:]], dim=1)  # [E, p]
        return self._checked(betas, removed)

    def _fits(self, sets: list[frozenset[int]]) -> torch.Tensor:
        """Coefficients ``[E, p]`` fitted without each set of groups (see :attr:`solver`)."""
        if self.solver == "direct":
            return self._direct(sets)
        betas = self._dual_batch(sets) if self.solver == "dual" else self._downdate_batch(sets)
        missing = [i for i, beta in enumerate(betas) if beta is None]
        if missing:
            for i, beta in zip(missing, self._direct([sets[i] for i in missing])):
                betas[i] = beta
        return torch.stack([beta for beta in betas if beta is not None])

    def _class_sums(self, excluded: frozenset[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the fit without ``excluded``: per (sampled class, group) the sums of ``r (z - s/n)`` ``[C, G,
        n]`` and of ``r`` ``[C, G]`` over the group's pairs (``r`` the residuals), and ``Q_k(g)`` per class
        ``[C, n]``; computed together for :meth:`_family` and cached."""
        if excluded not in self._sums:
            sets = [e for e in self._family(excluded) if e not in self._sums]
            betas = self._fits(sets)  # [E, p]
            resid = self.d[:, None] - self.x @ betas.T  # [rows, E]
            c, g, n = self._counts.shape[0], self._counts.shape[1], self.n
            rz = (self._sum_rows @ (resid.T[:, :, None] * self._centred[None])).reshape(len(sets), c, g, n)
            rs = (self._sum_rows @ resid).T.reshape(len(sets), c, g)
            contrasts = (betas @ self._contrasts.T).reshape(len(sets), c, n)
            for i, e in enumerate(sets):
                self._sums[e] = (rz[i], rs[i], contrasts[i])
        return self._sums[excluded]

    def estimate(self, deleted: int | None = None) -> torch.Tensor:
        """The adjusted estimate from every group but ``deleted`` (see the module docs)."""
        total = self.exact_sum.clone()
        if not self.classes:
            return self.equal + total / self.n
        drop = frozenset() if deleted is None else frozenset([deleted])
        slots = [i for i, j in enumerate(self.used) if j != deleted]
        active = self._counts > 0  # [C, G]
        if deleted is not None and deleted in self.used:
            active[:, self.used.index(deleted)] = False
        # fit j (the surrogate without group j and the deleted one) serves group j's pairs in every class
        sums = [self._class_sums(drop | {self.used[i]}) for i in slots]
        rz = torch.stack([t[0] for t in sums])  # [J, C, G, n]
        rs = torch.stack([t[1] for t in sums])  # [J, C, G]
        contrasts = torch.stack([t[2] for t in sums])  # [J, C, n]
        j_index = torch.tensor(slots, dtype=torch.int64)
        mine = torch.zeros(len(slots), active.shape[1], dtype=torch.bool)
        mine[torch.arange(len(slots)), j_index] = True
        other = active[None] & ~mine[:, None, :]  # [J, C, G]
        counts = self._counts[None] * other
        m_o = counts.sum(2)  # [J, C]
        m_j = self._counts[:, j_index].T  # [J, C]
        valid = active[:, j_index].T  # [J, C]: group j holds pairs of the class and is not deleted
        centre = torch.where(
            (m_o > 0) & ~self._middle[None], (rs * other).sum(2) / m_o.clamp(min=1), torch.zeros_like(m_o)
        )
        other_h = (rz * other[..., None]).sum(2) - centre[..., None] * (self._zsums[None] * other[..., None]).sum(2)
        pick = j_index[:, None].expand(-1, active.shape[0])
        classes = torch.arange(active.shape[0])[None].expand(len(slots), -1)
        mine_h = rz[torch.arange(len(slots))[:, None], classes, pick] - centre[..., None] * self._zsums[classes, pick]
        factor = torch.where(valid, (self._units[None] - m_o) / m_j.clamp(min=1), torch.zeros_like(m_o))
        est = contrasts + (other_h + factor[..., None] * mine_h) / self._scale[None, :, None]
        m = (self._counts * active).sum(1)  # [C]
        share = (torch.where(valid, m_j / m.clamp(min=1)[None], torch.zeros_like(m_j))[..., None] * est).sum(0)
        share = torch.where(self._middle[:, None], share / 2, share)
        return self.equal + (total + share.sum(0)) / self.n
