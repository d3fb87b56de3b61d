"""Variable projection: the constants of rate laws (``K``, Hill ``n``) fitted as continuous
parameters, with the linear coefficients solved exactly.

For fixed constants a Michaelis-Menten or Hill column is linear in its coefficient, so for
each trial of the constants the least-squares coefficients, and the residual, follow from the
columns exactly (Golub & Pereyra's variable projection); only the constants are searched: as
``log K`` within the range of the variable along the trajectory, and ``n`` within
:data:`ude.distill.library.HILL_N_BOUNDS`, by scipy's bounded trust-region least squares from a
few starts. Columns that need no constants (intercepts, mass-action terms) are projected out
once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares

from ude.distill.library import HILL_N_BOUNDS, RateLaw

K_QUANTILES = (0.1, 0.5, 0.9)
"""Starts of ``K``: these quantiles of the variable's positive values along the trajectory."""
N_STARTS = (1.5, 4.0, 10.0)
"""Starts of a Hill ``n``: shallow, switch-like and steep."""
K_RANGE = 10.0
"""``K`` is searched (and refitted) from the variable's smallest positive value over this to
its largest times this: beyond, the term is constant or linear over the data, which simpler
terms say with fewer constants (and a refit chasing ``K`` to infinity crawls)."""


def _orthonormal_basis(A: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``(point, rank)`` of the columns of ``A``."""
    if A.shape[1] == 0:
        return A
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    rank = int(np.sum(s > s[0] * 1e-10)) if s.size and s[0] > 0 else 0
    return U[:, :rank]


class ProjectedFit:
    """Least squares of ``y (point,)`` on ``fixed (point, m)`` columns plus columns with free
    constants, ``columns(constants) -> (point, r)``; ``fixed`` is projected out once."""

    def __init__(self, y: np.ndarray, fixed: np.ndarray):
        self.Q = _orthonormal_basis(np.asarray(fixed, dtype=float))
        self.y = np.asarray(y, dtype=float)
        self.y_perp = self._perp(self.y)

    def _perp(self, A: np.ndarray) -> np.ndarray:
        return A - self.Q @ (self.Q.T @ A) if self.Q.shape[1] else A

    def residual(self, cols: np.ndarray) -> np.ndarray:
        """Residual ``(point,)`` of the best fit with ``cols (point, r)`` added."""
        C = self._perp(cols)
        if not np.all(np.isfinite(C)):
            return np.full_like(self.y_perp, 1e150)
        scale = np.sqrt(np.sum(C**2, axis=0))
        scale = np.where(scale > 0, scale, 1.0)
        w, *_ = np.linalg.lstsq(C / scale, self.y_perp, rcond=None)
        return self.y_perp - (C / scale) @ w


POSITIVE = 1e-12
"""Values of a variable below this fraction of its largest are taken as zero for the range of
``K`` (a species decaying to 1e-300 along the trajectory would put ``K``'s range, and its
logarithm, at zero)."""


def _positive(x: np.ndarray) -> np.ndarray:
    """The values of ``x (point,)`` that count as positive (above :data:`POSITIVE` of its
    largest)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    top = float(x.max()) if x.size else 0.0
    return x[x > top * POSITIVE] if top > 0 else x[:0]


def constant_bounds(law: RateLaw, x: np.ndarray) -> dict[str, tuple[float, float]]:
    """Bounds of the law's constants given its variable's values ``x`` along the trajectory:
    ``K`` within :data:`K_RANGE` of the positive values, ``n`` in ``HILL_N_BOUNDS``."""
    pos = _positive(x)
    lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (1e-3, 1.0)
    out = {law.K: (lo / K_RANGE, hi * K_RANGE)}
    if law.kind != "saturation":
        out[law.n] = HILL_N_BOUNDS
    return out


def _bounds(law: RateLaw, x: np.ndarray) -> list[tuple[float, float]]:
    """Search bounds of the law's parameter vector: ``log K`` (and ``n``)."""
    b = constant_bounds(law, x)
    out = [(math.log(b[law.K][0]), math.log(b[law.K][1]))]
    if law.kind != "saturation":
        out.append(b[law.n])
    return out


def _starts(law: RateLaw, x: np.ndarray) -> list[list[float]]:
    pos = _positive(x)
    ks = np.quantile(pos, K_QUANTILES) if pos.size else np.array([1.0])
    logs = [math.log(float(k)) for k in ks]
    if law.kind == "saturation":
        return [[k] for k in logs]
    return [[k, n] for k in logs for n in N_STARTS]


def _to_constants(law: RateLaw, theta: Sequence[float]) -> dict[str, float]:
    out = {law.K: float(math.exp(theta[0]))}
    if law.kind != "saturation":
        out[law.n] = float(theta[1])
    return out


def _from_constants(law: RateLaw, constants: Mapping[str, float]) -> list[float]:
    out = [math.log(max(float(constants[law.K]), 1e-300))]
    if law.kind != "saturation":
        out.append(float(constants[law.n]))
    return out


def fit_constants(
    fit: ProjectedFit,
    laws: Sequence[RateLaw],
    column: Callable[[int, dict[str, float]], np.ndarray],
    variables: Sequence[np.ndarray],
    start: Sequence[Mapping[str, float]] | None = None,
    n_local: int = 2,
    max_nfev: int = 60,
) -> tuple[list[dict[str, float]], float]:
    """Constants of ``laws`` minimising ``fit``'s residual, and its sum of squares.

    ``column(i, constants)`` is the column ``(point,)`` of law ``i`` at ``constants``;
    ``variables[i]`` the values of law ``i``'s variable along the trajectory (for the search
    range and the starts). Without ``start``, each law's starts (:data:`K_QUANTILES` ×
    :data:`N_STARTS`, all combinations for one law, the middle ones for several) are scored
    and the ``n_local`` best are refined; with ``start``, that point is refined.
    """
    bounds = [b for law, x in zip(laws, variables, strict=True) for b in _bounds(law, x)]
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    sizes = [1 if law.kind == "saturation" else 2 for law in laws]
    offsets = np.cumsum([0, *sizes])

    def split(theta: np.ndarray) -> list[dict[str, float]]:
        return [
            _to_constants(law, theta[offsets[i] : offsets[i + 1]]) for i, law in enumerate(laws)
        ]

    def residual(theta: np.ndarray) -> np.ndarray:
        consts = split(theta)
        cols = np.stack([column(i, c) for i, c in enumerate(consts)], axis=1)
        return fit.residual(cols)

    if start is not None:
        points = [
            np.concatenate([_from_constants(law, c) for law, c in zip(laws, start, strict=True)])
        ]
    else:
        per_law = [_starts(law, x) for law, x in zip(laws, variables, strict=True)]
        if len(laws) == 1:
            combos = [np.array(p) for p in per_law[0]]
        else:  # one start per law (its middle K, a switch-like n): the grid would multiply
            combos = [np.concatenate([p[len(p) // 2] for p in per_law])]
        scored = sorted(combos, key=lambda th: float(np.sum(residual(np.clip(th, lo, hi)) ** 2)))
        points = scored[:n_local]
    best_theta, best_rss = None, math.inf
    for th in points:
        th = np.clip(np.asarray(th, dtype=float), lo + 1e-9, hi - 1e-9)
        try:
            sol = least_squares(
                residual, th, bounds=(lo, hi), method="trf", max_nfev=max_nfev, diff_step=1e-4
            )
            theta, rss = sol.x, float(2 * sol.cost)
        except (ValueError, np.linalg.LinAlgError):
            theta, rss = th, float(np.sum(residual(th) ** 2))
        if rss < best_rss:
            best_theta, best_rss = theta, rss
    return split(best_theta), best_rss
