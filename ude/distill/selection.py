"""Choosing the twin: refit each candidate through the ODE, score it on the data with an
information criterion, then prune the best by trajectory-level backward elimination."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ude.distill.refit import RefitResult
from ude.distill.sparse import Candidate
from ude.errors import UdeError


def information_criterion(nmse: float, n: int, k: int, kind: str = "bic") -> float:
    """``n log(RSS/n) + penalty(k)`` for ``n`` data points and ``k`` discovered parameters;
    ``kind``: ``bic`` (k log n) or ``aicc`` (2k + 2k(k+1)/(n-k-1)). A model with ``k >= n - 1``
    parameters can interpolate the data (its residual says nothing): ∞ for either."""
    if not math.isfinite(nmse) or nmse <= 0 or k >= n - 1:
        return math.inf
    base = n * math.log(nmse)
    if kind == "bic":
        return base + k * math.log(n)
    if kind == "aicc":
        return base + 2 * k + 2 * k * (k + 1) / (n - k - 1)
    raise UdeError(
        f"unknown criterion '{kind}'", source="distill.selector.criterion", fix="bic or aicc"
    )


class NoSolvableTwin(UdeError):
    """No refitted candidate could be solved over the data: there is no twin to report.
    ``scored``: every candidate tried, in order of scoring (each with its failed refit)."""

    def __init__(self, scored: list[Scored]):
        self.reason = (
            f"none of the {len(scored)} candidate twins could be integrated over the data "
            "(every refit's solve failed or diverged)"
        )
        super().__init__(
            self.reason,
            source="distill",
            fix="the candidates are in distill.json; distil the run again with another refit "
            "solver or library, e.g. python -m ude.distill <run_dir> "
            "distill.distiller.score_refit.method=rosenbrock23",
        )
        self.scored = scored


@dataclass
class Scored:
    """A candidate with its refit and score."""

    candidate: Candidate
    refit: RefitResult
    criterion: float
    n_params: int
    step: str = "path"
    info: dict = field(default_factory=dict)


def refitted_coef(scored: Scored) -> dict[str, np.ndarray]:
    """The candidate's coefficients ``{target: (term,)}`` at their refitted values."""
    coef = {k: v.copy() for k, v in scored.candidate.coef.items()}
    for name, (target, j, scale) in scored.candidate.info.get("owner", {}).items():
        if name.startswith("c_") and name in scored.refit.values:
            coef[target][j] = float(scored.refit.values[name]) * scale
    return coef


class TrajectorySelector:
    """Refits the most promising candidates through the ODE and scores each with
    ``criterion`` on its trajectory error against the data; then, from the best, moves one
    term at a time (each move refitted) while the criterion improves: removals (``prune``)
    and, with ``grow``, additions of library terms the candidates left out.

    Candidates are taken in the order of their integral-matching score (``order="screen"``,
    :mod:`ude.distill.integral`; cheap, on the data) or sparsest first (``"sparsity"``).
    Each step's moves are the one-term changes of the best and the integral-matching
    candidates along the best's own refitted trajectory (``propose``); with a screen, every
    removal but only the ``max_moves`` best-screened other moves of a step are refitted. The
    steps stop when none improves the criterion.

    Args:
        criterion: ``bic`` or ``aicc``.
        prune: do the trajectory-level backward elimination.
        max_candidates: refit at most this many candidates.
        grow: also try adding each absent term at every step.
        order: ``screen`` or ``sparsity``.
        max_moves: refitted moves per step when a screen ranks them (None: all).
        margin: with ``order="screen"``, the candidates refitted after the best-screened one
            are the sparsest whose screen is within this of it.
        max_refits: stop the moves after this many refits in all (None: no limit); each
            costs an ODE fit, and the candidates refitted first are the likeliest.
        rescreen: also propose integral-matching candidates along the best refitted twin's
            trajectory at every step.
        tolerance: the chosen twin is the sparsest candidate whose criterion is within this
            of the best (6: the difference Kass & Raftery call strong evidence for BIC); 0
            chooses the best.
    """

    def __init__(
        self,
        criterion: str = "bic",
        prune: bool = True,
        max_candidates: int = 5,
        grow: bool = True,
        tolerance: float = 6.0,
        order: str = "screen",
        max_moves: int | None = 3,
        margin: float = 15.0,
        max_refits: int | None = 10,
        rescreen: bool = True,
    ):
        if order not in {"screen", "sparsity"}:
            raise UdeError(
                f"unknown order '{order}'",
                source="distill.selector.order",
                fix="screen or sparsity",
            )
        self.criterion = criterion
        self.prune = prune
        self.max_candidates = max_candidates
        self.grow = grow
        self.tolerance = tolerance
        self.order = order
        self.max_moves = max_moves
        self.margin = margin
        self.max_refits = max_refits
        self.rescreen = rescreen

    def select(
        self,
        candidates: list[Candidate],
        refit: Callable[[Candidate], tuple[RefitResult, int]],
        screen: Callable[[Candidate, Scored | None], float] | None = None,
        propose: Callable[[Scored], list[Candidate]] | None = None,
    ) -> tuple[Scored, list[Scored]]:
        """The chosen candidate and every scored one (the whole path), in order of scoring.

        ``refit(candidate)`` returns the refit and the number of discovered parameters;
        ``screen(candidate, around)`` a cheap score, lower is better, along the trajectory of
        the refitted candidate ``around`` (None: the trained model's; without a screen,
        ``info["screen"]``); ``propose(best)`` new candidates around the best refitted one.
        """
        if not candidates:
            raise UdeError(
                "the sparse regression found no candidate with a term for every target",
                source="distill",
                fix="lower distill.path.min_threshold or widen the library",
            )
        scored: list[Scored] = []
        seen: dict[tuple, Scored] = {}

        def score(cand: Candidate, step: str) -> Scored:
            key = cand.support()
            if key in seen:
                return seen[key]
            result, k = refit(cand)
            crit = information_criterion(result.nmse, result.n_points, k, self.criterion)
            s = Scored(cand, result, crit, k, step)
            seen[key] = s
            scored.append(s)
            return s

        def screened(cand: Candidate, around: Scored | None = None) -> float:
            if screen is not None:
                return screen(cand, around)
            return cand.info.get("screen", 0.0)

        if self.order == "screen":
            # the best-screened candidate, then the sparsest within the margin of it: the
            # screen is linearised, so near-ties are settled by the refits
            ranked = sorted(candidates, key=lambda c: (screened(c), c.n_terms))
            floor = screened(ranked[0])
            near = [c for c in ranked[1:] if screened(c) <= floor + self.margin]
            ranked = [ranked[0], *sorted(near, key=lambda c: (c.n_terms, screened(c)))]
        else:  # the sparsest first: dense ones are slow to refit and rarely chosen
            ranked = sorted(candidates, key=lambda c: c.n_terms)
        for cand in ranked[: self.max_candidates]:
            score(cand, "path")
        best = min(scored, key=lambda s: s.criterion)
        while True:
            moves = self._neighbours(best) if self.prune or self.grow else []
            if propose is not None and self.rescreen:
                moves += [(c, "rescreen") for c in propose(best)]
            unique: dict[tuple, tuple[Candidate, str]] = {}
            for cand, step in moves:
                if cand.support() not in seen:
                    unique.setdefault(cand.support(), (cand, step))
            moves = list(unique.values())
            if self.order == "screen" and self.max_moves is not None:
                # every removal is refitted (the parsimony rule below needs the sparser
                # neighbours); additions and proposals only when the screen ranks them high
                removals = [m for m in moves if m[1] == "prune"]
                others = [m for m in moves if m[1] != "prune"]
                others = sorted(others, key=lambda m: screened(m[0], best))[: self.max_moves]
                moves = removals + others
            if self.max_refits is not None:
                moves = moves[: max(0, self.max_refits - len(scored))]
            if not moves:
                break
            trials = [score(c, step) for c, step in moves]
            top = min(trials, key=lambda s: s.criterion)
            if top.criterion >= best.criterion:
                break
            best = top
        return self.choose(scored, [s.criterion for s in scored]), scored

    def choose(self, scored: list[Scored], criteria: list[float]) -> Scored:
        """The twin among ``scored`` with these ``criteria``: the sparsest one within
        ``tolerance`` of the best (on one trajectory, extra terms can fit the noise), among
        the candidates whose refit solved; :class:`NoSolvableTwin` when none did."""
        solved = [(s, c) for s, c in zip(scored, criteria, strict=True) if s.refit.ok]
        if not solved:
            raise NoSolvableTwin(scored)
        floor = min(c for _, c in solved)
        near = [(s, c) for s, c in solved if c <= floor + self.tolerance]
        return min(near, key=lambda sc: (sc[0].candidate.n_terms, sc[1]))[0]

    def _neighbours(self, best: Scored) -> list[tuple[Candidate, str]]:
        """Supports one term away from ``best``, starting from its refitted coefficients."""
        fitted = refitted_coef(best)
        out = []
        for t, c in fitted.items():
            for j in range(len(c)):
                coef = {k: v.copy() for k, v in fitted.items()}
                if c[j] != 0 and self.prune:
                    if np.count_nonzero(c) == 1:
                        continue  # keep a term in every target
                    coef[t][j] = 0.0
                    out.append((Candidate(coef, "prune"), "prune"))
                elif c[j] == 0 and self.grow:
                    # a small start; the refit through the ODE sizes it
                    coef[t][j] = 1e-2 * float(np.max(np.abs(c))) if np.any(c) else 1e-3
                    out.append((Candidate(coef, "grow"), "grow"))
        return out
