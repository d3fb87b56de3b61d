"""Sparse regression of network outputs on a library: paths of candidate supports.

A regression problem per target state: ``Theta (sample, term)`` and ``y (sample,)``. Columns are
normalised to unit RMS and ``y`` to unit RMS, so a threshold is the smallest contribution a
term may make relative to the network output (0.05: 5 % of its RMS). A path returns the
distinct joint supports (one per target) with their least-squares coefficients.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pysindy as ps

from ude.errors import UdeError


@dataclass
class Problem:
    """One target's regression: ``Theta (sample, term)``, ``y (sample,)``, term names."""

    Theta: np.ndarray
    y: np.ndarray
    terms: list[str]

    def __post_init__(self) -> None:
        self.col_scale = np.sqrt(np.mean(self.Theta**2, axis=0))
        self.col_scale = np.where(self.col_scale > 0, self.col_scale, 1.0)
        y_scale = float(np.sqrt(np.mean(self.y**2)))
        self.y_scale = y_scale if y_scale > 0 else 1.0

    @cached_property
    def Theta_n(self) -> np.ndarray:
        """``Theta`` with unit-RMS columns (computed once: the elimination path reads it for
        every removal it tries)."""
        return self.Theta / self.col_scale

    @cached_property
    def y_n(self) -> np.ndarray:
        return self.y / self.y_scale

    def lstsq(self, support: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
        """Least-squares coefficients ``(term,)`` (zero off ``support``), in original units."""
        coef = np.zeros(self.Theta.shape[1])
        s = list(support)
        if s:
            A = self.Theta_n[:, s] if rows is None else self.Theta_n[rows][:, s]
            b = self.y_n if rows is None else self.y_n[rows]
            c, *_ = np.linalg.lstsq(A, b, rcond=None)
            coef[s] = c * self.y_scale / self.col_scale[s]
        return coef

    def relative_residual(self, coef: np.ndarray) -> float:
        """RMS of ``y - Theta coef`` over RMS of ``y``."""
        r = self.y - self.Theta @ coef
        return float(np.sqrt(np.mean(r**2)) / self.y_scale)


@dataclass
class Candidate:
    """A joint support with coefficients: ``coef[target] (term,)``; ``origin`` says which
    path found it and ``threshold`` at which (None for elimination). ``constants[target][j]``:
    the free constants of term ``j`` where this candidate has its own (e.g. ``K`` fitted
    jointly with the rest of its support); others take the library's fitted ones."""

    coef: dict[str, np.ndarray]
    origin: str
    threshold: float | None = None
    info: dict = field(default_factory=dict)
    constants: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)

    def support(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((t, tuple(np.flatnonzero(c).tolist())) for t, c in self.coef.items())

    @property
    def n_terms(self) -> int:
        return int(sum(np.count_nonzero(c) for c in self.coef.values()))


def _stlsq(problem: Problem, threshold: float, alpha: float, optimizer: str) -> np.ndarray:
    """Support of one sparse fit at ``threshold`` (normalised units)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if optimizer == "stlsq":
            opt = ps.STLSQ(threshold=threshold, alpha=alpha, max_iter=30, unbias=True)
        else:  # SR3 with an L0 penalty: lam = threshold**2 / 2 keeps the same cut-off
            opt = ps.SR3(
                reg_weight_lam=threshold**2 / 2,
                regularizer="L0",
                relax_coeff_nu=1.0,
                max_iter=100,
                unbias=True,
            )
        opt.fit(problem.Theta_n, problem.y_n[:, None])
    return np.flatnonzero(np.abs(opt.coef_[0]) > 0)


class ThresholdPath:
    """Sweeps the sparsity threshold of pysindy's STLSQ (or SR3 with L0) over a geometric
    grid, the same relative threshold for every target.

    Args:
        thresholds: the grid (relative contributions); default ``n_thresholds`` values
            from ``min_threshold`` to 1.
        alpha: ridge weight of STLSQ (normalised units).
        optimizer: ``stlsq`` or ``sr3``.
    """

    name = "threshold"

    def __init__(
        self,
        thresholds: Sequence[float] | None = None,
        n_thresholds: int = 40,
        min_threshold: float = 1e-3,
        alpha: float = 1e-6,
        optimizer: str = "stlsq",
    ):
        self.thresholds = thresholds
        self.n_thresholds = n_thresholds
        self.min_threshold = min_threshold
        self.alpha = alpha
        self.optimizer = optimizer

    def grid(self) -> np.ndarray:
        if self.thresholds is not None:
            return np.sort(np.asarray(self.thresholds, dtype=float))
        return np.geomspace(self.min_threshold, 1.0, self.n_thresholds)

    def support_at(self, problem: Problem, threshold: float) -> np.ndarray:
        return _stlsq(problem, threshold, self.alpha, self.optimizer)

    def candidates(self, problems: dict[str, Problem]) -> list[Candidate]:
        if self.optimizer not in {"stlsq", "sr3"}:
            raise UdeError(
                f"unknown optimizer '{self.optimizer}'",
                source="distill.path.optimizer",
                fix="stlsq or sr3",
            )
        out: dict[tuple, Candidate] = {}
        for thr in self.grid():
            coef = {t: p.lstsq(self.support_at(p, thr)) for t, p in problems.items()}
            if not all(np.any(c) for c in coef.values()):
                continue
            cand = Candidate(coef, self.name, float(thr))
            key = cand.support()
            if key in out:
                # keep the largest threshold that gives this support (most robust)
                out[key].threshold = float(thr)
            else:
                out[key] = cand
        return list(out.values())


class EliminationPath:
    """Joint backward elimination: from the full library for every target, repeatedly drop the
    (target, term) whose removal raises that target's relative residual least, down to
    one term per target. Nested supports, one per size.

    What removing each term costs is read off one QR factorisation of the support, ``A = QR``:
    dropping term ``j`` raises the residual sum of squares by ``beta_j^2 / [(A'A)^-1]_jj``
    (the square of its t-statistic times the noise variance), instead of one least-squares
    solve per term (yeast glycolysis with 8 conditions spent 280 s in these solves, 22 % of its
    distillation). A support whose factor is too ill-conditioned for that (``R``'s condition
    number above :data:`ONE_FACTORISATION_COND`: nearly dependent terms) is costed by a solve
    per term, as before."""

    name = "elimination"

    def candidates(self, problems: dict[str, Problem]) -> list[Candidate]:
        support = {t: list(range(p.Theta.shape[1])) for t, p in problems.items()}
        rss = {t: p.relative_residual(p.lstsq(support[t])) ** 2 for t, p in problems.items()}
        out = [Candidate({t: p.lstsq(support[t]) for t, p in problems.items()}, self.name)]
        while any(len(s) > 1 for s in support.values()):
            best: tuple[float, str, int] | None = None
            for t, p in problems.items():
                if len(support[t]) <= 1:
                    continue
                for j, rise in zip(support[t], removal_costs(p, support[t], rss[t]), strict=True):
                    if best is None or rise < best[0]:
                        best = (rise, t, j)
            assert best is not None
            _, t, j = best
            support[t].remove(j)
            p = problems[t]
            rss[t] = p.relative_residual(p.lstsq(support[t])) ** 2
            out.append(Candidate({s: p.lstsq(support[s]) for s, p in problems.items()}, self.name))
        return out


ONE_FACTORISATION_COND = 1e8
"""Above this condition number of a support's ``R`` factor, :func:`removal_costs` solves once
per term (the closed form's ``(A'A)^-1`` would lose too many digits)."""


def removal_costs(problem: Problem, support: list[int], rss: float) -> np.ndarray:
    """How much removing each term of ``support`` raises ``problem``'s squared relative
    residual (``rss``: at the full support), in the order of ``support``."""
    A = problem.Theta_n[:, support]
    n = A.shape[0]
    if n > len(support):
        Q, R = np.linalg.qr(A)
        if np.linalg.cond(R) < ONE_FACTORISATION_COND:
            beta = np.linalg.solve(R, Q.T @ problem.y_n)
            R_inv = np.linalg.solve(R, np.eye(len(support)))
            return beta**2 / np.sum(R_inv**2, axis=1) / n
    return np.array(
        [
            problem.relative_residual(problem.lstsq([k for k in support if k != j])) ** 2 - rss
            for j in support
        ]
    )


def candidate_union(
    paths: Sequence,
    problems: dict[str, Problem],
    integral: dict | None = None,
    network: dict[int, list[Candidate]] | None = None,
) -> list[Candidate]:
    """Distinct candidates of all ``paths``, sorted by number of terms. A path whose
    ``source`` is ``data`` gets the integral problems (:mod:`ude.distill.integral`) instead
    of the network-sample ones. ``network``: the candidates of the other paths by their
    index, reused where present and filled where not (a resample of the data changes the
    integral problems only)."""
    seen: dict[tuple, Candidate] = {}
    for i, path in enumerate(paths):
        data = getattr(path, "source", "network") == "data"
        if not data and network is not None:
            if i not in network:
                network[i] = path.candidates(problems)
            for cand in network[i]:
                seen.setdefault(cand.support(), cand)
            continue
        if data and integral is None:
            raise UdeError(
                f"the {path.name} path needs the data's integral problems",
                source="distill.paths",
                fix="pass integral problems (Distiller.fit does)",
            )
        for cand in path.candidates(integral if data else problems):
            seen.setdefault(cand.support(), cand)
    return sorted(seen.values(), key=lambda c: c.n_terms)
