"""Choosing the twin: refit each candidate through the ODE, score it on the data with an
information criterion that pays for the size of the search, then prune the best by
trajectory-level backward elimination; the candidates' evidence weights, and the structures
the data cannot tell apart from the chosen one.

The default criterion is the extended BIC (Chen & Chen 2008, Biometrika 95:759):
``n log(RSS/n) + k log n + 2 γ Σ_targets log C(p_t, k_t)`` with ``p_t`` library terms and
``k_t`` chosen terms per target, γ = 1. BIC alone pays for the parameters of one model, not
for having looked at every support of a large library: with many rival terms one of them fits
the noise by chance, and the last term pays for that. ``exp(-criterion/2)`` approximates each
candidate's evidence under a prior uniform over sizes, then over the supports of a size:
normalised over the refitted candidates these are the weights kept in distill.json."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ude.distill.refit import RefitResult
from ude.distill.sparse import Candidate
from ude.errors import UdeError
from ude.threads import usable_cpus

CRITERIA = ("ebic", "bic", "aicc")
EBIC_GAMMA = 1.0
"""Weight of the search-size term: 1, the value for which Chen & Chen show consistency when
the library grows with the data."""
REWRITES = ("limit", "complement")
"""Origins of a refitted twin rewritten with a term or a constant fewer
(:mod:`ude.distill.rewrites`): refitted at every step beside the removals (outside
``max_moves``), and after the refit budget, as removals are."""
TIE = 2.0
"""Criterion units within which two structures fit equally well: a Bayes factor under e
(Kass & Raftery: "not worth more than a bare mention")."""


def first_of_each(items: list, key: Callable) -> list:
    """``items`` in order, each ``key`` once (its first)."""
    out: dict = {}
    for item in items:
        out.setdefault(key(item), item)
    return list(out.values())


def log_supports(p: int, k: int) -> float:
    """``log C(p, k)``: the number of supports of ``k`` terms from a library of ``p``."""
    if k < 0 or k > p:
        return 0.0
    return math.lgamma(p + 1) - math.lgamma(k + 1) - math.lgamma(p - k + 1)


def information_criterion(
    nmse: float, n: int, k: int, kind: str = "ebic", log_models: float = 0.0
) -> float:
    """``n log(RSS/n) + penalty`` for ``n`` data points and ``k`` discovered parameters;
    ``kind``: ``bic`` (k log n), ``ebic`` (k log n + 2 γ ``log_models``, the log of the number
    of candidate models of this size) or ``aicc`` (2k + 2k(k+1)/(n-k-1)). A model with
    ``k >= n - 1`` parameters can interpolate the data (its residual says nothing): ∞."""
    if kind not in CRITERIA:
        raise UdeError(
            f"unknown criterion '{kind}'",
            source="distill.selector.criterion",
            fix=", ".join(CRITERIA),
        )
    if not math.isfinite(nmse) or nmse <= 0 or k >= n - 1:
        return math.inf
    base = n * math.log(nmse)
    if kind == "aicc":
        return base + 2 * k + 2 * k * (k + 1) / (n - k - 1)
    extra = 2 * EBIC_GAMMA * log_models if kind == "ebic" else 0.0
    return base + k * math.log(n) + extra


class NoSolvableTwin(UdeError):
    """No refitted candidate could be solved over the data: there is no twin to report.
    ``scored``: every candidate tried, in order of scoring (each with its failed refit)."""

    def __init__(self, scored: list[Scored]):
        refused = sum(s.refit.refused is not None for s in scored)
        self.reason = (
            f"none of the {len(scored)} candidate twins could be integrated over the data "
            "(every refit's solve failed or diverged)"
            if not refused
            else f"none of the {len(scored)} candidate twins is admissible: {refused} drive a "
            "neural reaction's species below zero (e.g. "
            + next(s.refit.refused for s in scored if s.refit.refused)
            + "), the others' solves failed or diverged"
        )
        fix = (
            "the candidates are in distill.json; distil the run again with another refit "
            "solver or library, e.g. python -m ude.distill <run_dir> "
            "distill.distiller.score_refit.method=dopri5"
            if not refused
            else "the candidates are in distill.json; distil the run again with a larger "
            "library (distill.library), or where these states may go negative with "
            "python -m ude.distill <run_dir> distill.distiller.nonnegative=false"
        )
        super().__init__(self.reason, source="distill", fix=fix)
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
    for name, own in scored.candidate.info.get("owner", {}).items():
        if own.constant is None and name in scored.refit.values:
            coef[own.target][own.index] = float(scored.refit.values[name]) * own.scale
    return coef


def refitted_constants(scored: Scored) -> dict[str, dict[int, dict[str, float]]]:
    """The candidate's learnable constants ``{target: {term: {name: value}}}`` at their
    refitted values (its own start values where the refit has none)."""
    out = {t: {j: dict(c) for j, c in cs.items()} for t, cs in scored.candidate.constants.items()}
    for name, own in scored.candidate.info.get("owner", {}).items():
        if own.constant is not None and name in scored.refit.values:
            value = float(scored.refit.values[name])
            out.setdefault(own.target, {}).setdefault(own.index, {})[own.constant] = value
    return out


def moved_from(best: Scored) -> dict:
    """``info`` for a candidate proposed around ``best``: its refit starts from ``best``'s
    fitted initial states (``info["initial"]``), not from the trained model's; a refused
    ``best``'s too (it solved; :func:`TrajectorySelector.select`'s refused siblings)."""
    model = best.refit.model
    if model is None or not (best.refit.ok or best.refit.refused is not None):
        return {}
    return {"initial": model.initial.detach().cpu().numpy()}


def evidence_weights(scored: list[Scored]) -> np.ndarray:
    """``(candidate,)``: ``exp(-criterion/2)`` normalised over the candidates (0 for a failed
    refit): approximate posterior probabilities of the refitted structures."""
    crit = np.array([s.criterion for s in scored], dtype=float)
    ok = np.isfinite(crit)
    w = np.zeros(len(scored))
    if ok.any():
        w[ok] = np.exp(-(crit[ok] - crit[ok].min()) / 2)
        w /= w.sum()
    return w


def _contains(big: Scored, small: Scored) -> bool:
    """Whether ``big``'s support holds all of ``small``'s terms (per target)."""
    a, b = big.candidate.coef, small.candidate.coef
    return all(set(np.flatnonzero(b[t])) <= set(np.flatnonzero(a[t])) for t in b)


def ties(chosen: Scored, scored: list[Scored], margin: float = TIE) -> list[Scored]:
    """Other structures that fit as well as ``chosen``: a criterion within ``margin`` of
    its own, and not ``chosen`` with terms added (an extra term that does not help is no
    rival); best first."""
    if not math.isfinite(chosen.criterion):
        return []
    key = chosen.candidate.support()
    out = [
        s
        for s in scored
        if s.candidate.support() != key
        and abs(s.criterion - chosen.criterion) <= margin
        and not _contains(s, chosen)
    ]
    return sorted(out, key=lambda s: s.criterion)


class TrajectorySelector:
    """Refits the most promising candidates through the ODE and scores each with
    ``criterion`` on its trajectory error against the data; then, from the best, moves one
    term at a time (each move refitted) while the criterion improves: removals (``prune``)
    and, with ``grow``, additions of library terms the candidates left out.

    Candidates are taken in the order of their integral-matching score (``order="screen"``,
    :mod:`ude.distill.integral`; cheap, on the data) or sparsest first (``"sparsity"``).
    Each step's moves are the one-term changes of the best, its rewrites with a term or a
    constant fewer (``rewrite``) and the integral-matching candidates along the best's own
    refitted trajectory (``propose``); with a screen, every removal and rewrite but only the
    ``max_moves`` best-screened other moves of a step are refitted; the first step also
    refits each target's first-order swaps (``swap``), whatever their screen. The steps stop
    when none improves the criterion. With species the data do not measure (``reswap``), the
    settled best's first-order swaps are then refitted again from its fitted initial states
    (with every species measured, those within ``tolerance`` of it), and the steps go on from
    one that beats it. Then, past the refit budget, removals and
    rewrites go on from the best while they improve it. A removal or rewrite whose support was
    refitted before from another start, to a worse criterion than the best's, is refitted
    again from the best's values (once during the steps; in this last elimination once more
    from each best it reaches, whatever refits the support had), and the better refit kept.

    Args:
        criterion: ``ebic`` (the default: pays for the library's size), ``bic`` or ``aicc``.
        prune: do the trajectory-level backward elimination.
        max_candidates: refit at most this many candidates.
        grow: also try adding each absent term at every step.
        order: ``screen`` or ``sparsity``.
        max_moves: refitted additions and proposals per step when a screen ranks them
            (None: all); removals and rewrites are always refitted.
        margin: with ``order="screen"``, the candidates refitted after the best-screened one
            are the sparsest whose screen is within this of it.
        max_refits: stop the moves after this many refits in all (None: no limit), then only
            removals and rewrites of the best; each costs an ODE fit, and the candidates
            refitted first are the likeliest.
        rescreen: also propose integral-matching candidates along the best refitted twin's
            trajectory at every step.
        swaps: at the first step, also refit each target's first-order terms (an input
            alone, the constant) as one-term replacements of its support, at most this many
            per target (the best-screened first; 0: none), outside ``max_moves`` and the refit
            budget (:mod:`ude.distill.swaps`: the screen misranks them).
        siblings: for each new best, also refit its terms' siblings (the same law over other
            variables: :func:`ude.distill.swaps.siblings`) in their place, at most this many
            per target (the best-screened along its trajectory first; 0: none), outside
            ``max_moves`` and the refit budget.
        reswaps: with ``select(reswap=True)``, once the steps settle, refit at most this many
            of each target's first-order swaps of the best again (the best-screened along its
            trajectory first; 0: none), from its fitted initial states, outside the refit
            budget. A swap's first refit starts from the trained model's initial states, and
            a species no data measure can start far from where any twin puts it: yeast
            glycolysis with S4-S7 unmeasured refitted the true ``-c*S6`` from them 197 units
            of the criterion behind the chosen ``c*S2`` plus a Hill law of S7, and from that
            twin's fitted states 45 units ahead of it. Its screen along the twin's trajectory
            ranked ``c*S6`` fifth of the eight first-order terms. With every species measured
            (``reswap=False``) only the swaps whose first refit ended within ``tolerance`` of
            the settled best are refitted again: the data anchor the states, but a refit
            still stops where its iterations run out (yeast at 20 % noise: the true ``-c*S6``
            from the trained states stopped 5.7 units behind a constant after its 300
            iterations, and from the constant's fitted states 22 units ahead of it).
        rivals: once the steps settle, also refit the siblings (as ``siblings``) of this
            many other structures within ``tolerance`` of the best (the best first; 0: none),
            from their fitted initial states, outside the refit budget; the steps go on from
            one that beats the best. A rival's neighbourhood is as plausible as the best's,
            and the truth can be a sibling of the runner-up and of no best: Goldbeter at 30 %
            noise settled on ``c*X/(K + X)`` with ``c*M*X/(K + M)`` 1.5 units behind, and the
            true ``c*C*X/(K + C)`` (0.7 behind the best, refitted by the benchmark's oracle)
            was never refitted, so no weight or inclusion probability could hold it.
        max_initial_terms: the first refits take candidates with at most this many terms per
            target (None: any).
        tolerance: the chosen twin is the sparsest candidate whose criterion is within this
            of the best (6: the difference Kass & Raftery call strong evidence for BIC); 0
            chooses the best.
        workers: a step's refits run in this many threads (1: one after the other; 0: one per
            CPU this process may use); the choice and every score are the same for any
            number, only the wall time changes. The stiff solver's compiled kernels run
            outside the GIL (``bench/selection_threads.py``, Goldbeter with 4 conditions: 49 s
            of selection in 33 s on two cores); torch's refits hold it and gain little.
    """

    def __init__(
        self,
        criterion: str = "ebic",
        prune: bool = True,
        max_candidates: int = 5,
        grow: bool = True,
        tolerance: float = 6.0,
        order: str = "screen",
        max_moves: int | None = 3,
        margin: float = 15.0,
        max_refits: int | None = 20,
        rescreen: bool = True,
        max_initial_terms: int | None = 3,
        swaps: int = 12,
        siblings: int = 3,
        reswaps: int = 12,
        rivals: int = 3,
        workers: int = 1,
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
        self.max_initial_terms = max_initial_terms
        self.swaps = swaps
        self.siblings = siblings
        self.reswaps = reswaps
        self.rivals = rivals
        self.workers = usable_cpus() if workers == 0 else max(1, int(workers))

    def scored(
        self,
        cand: Candidate,
        result: RefitResult,
        k: int,
        sizes: dict[str, int] | None = None,
        step: str = "path",
    ) -> Scored:
        """``cand`` with its refit ``result`` (``k`` discovered parameters) scored by this
        selector's criterion; ``sizes``: as for :meth:`select`."""
        log_models = sum(
            log_supports(sizes[t], int(np.count_nonzero(c)))
            for t, c in cand.coef.items()
            if sizes and t in sizes
        )
        crit = information_criterion(result.nmse, result.n_points, k, self.criterion, log_models)
        return Scored(cand, result, crit, k, step, {"log_models": log_models})

    def select(
        self,
        candidates: list[Candidate],
        refit: Callable[[Candidate], tuple[RefitResult, int]],
        screen: Callable[[Candidate, Scored | None], float] | None = None,
        propose: Callable[[Scored], list[Candidate]] | None = None,
        sizes: dict[str, int] | None = None,
        rewrite: Callable[[Scored], list[Candidate]] | None = None,
        swap: Callable[[Scored], list[Candidate]] | None = None,
        sibling: Callable[[Scored], list[Candidate]] | None = None,
        workers: int | None = None,
        reswap: bool = False,
        single: Callable[[Scored], list[Candidate]] | None = None,
    ) -> tuple[Scored, list[Scored]]:
        """The chosen candidate and every scored one (the whole path), in order of scoring.

        ``refit(candidate)`` returns the refit and the number of discovered parameters;
        ``screen(candidate, around)`` a cheap score, lower is better, along the trajectory of
        the refitted candidate ``around`` (None: the trained model's; without a screen,
        ``info["screen"]``); ``propose(best)`` new candidates around the best refitted one;
        ``sizes[target]``: its library's number of terms (for ``ebic``; without it the
        search term is left out, as in BIC); ``rewrite(best)``: the best written with a term
        or a constant fewer (:mod:`ude.distill.rewrites`; origins in :data:`REWRITES`), refitted
        at every step and, like its removals, after the refit budget; ``swap(best)``: its
        first-order swaps (:mod:`ude.distill.swaps`; ``info["swapped"]``: the target),
        refitted at the first step outside the budget; ``sibling(best)``: its terms' siblings
        in their place (:func:`ude.distill.swaps.sibling_swaps`), refitted once for each
        best, outside the budget; ``workers``: threads for a step's refits (None:
        ``self.workers``); ``reswap``: the model has states the data do not measure, so the
        settled best's swaps are refitted again from its fitted initial states
        (``reswaps``); without it, only those whose refit ended within ``tolerance`` of it;
        ``single(best)``: each target's library terms alone in its place, from the screen
        (:func:`ude.distill.swaps.single_term_swaps`), at most ``swaps`` per target, the
        best-screened first, refitted beside the first-order swaps only where every first
        candidate failed or was refused.
        """
        if not candidates:
            raise UdeError(
                "the sparse regression found no candidate with a term for every target",
                source="distill",
                fix="lower distill.path.min_threshold or widen the library",
            )
        scored: list[Scored] = []
        seen: dict[tuple, Scored] = {}
        retried: set[tuple] = set()
        started: dict[tuple, int] = {}  # a move's support: the id of the best it moved from
        moved: set[tuple[tuple, int]] = set()  # (support, id of a best it was refitted from)
        seeded: set[tuple[tuple, int]] = set()  # (support, id of a best) refitted from its states

        def score(
            cand: Candidate,
            step: str,
            around: Scored | None = None,
            done: tuple[RefitResult, int] | None = None,
            last: bool = False,
        ) -> Scored:
            """The candidate refitted (``done``: its refit, run already) and scored (a move of
            ``around``: from its values); a support refitted before, again from this start
            (:func:`fresh`), keeps the better of its refits (``last``: the last elimination's
            move, refitted whatever refits its support had)."""
            key = cand.support()
            if key in seen and key in retried and step != "reswap" and not last:
                return seen[key]
            if around is not None:
                started[key] = id(around)
                moved.add((key, id(around)))
                if "initial" in cand.info:  # a move of around's that starts from its states
                    seeded.add((key, id(around)))
            result, k = refit(cand) if done is None else done
            s = self.scored(cand, result, k, sizes, step)
            if key not in seen:
                scored.append(s)
            else:
                retried.add(key)
                if not s.criterion < seen[key].criterion:
                    return seen[key]
                scored[next(i for i, o in enumerate(scored) if o is seen[key])] = s
            seen[key] = s
            return s

        def fresh(cand: Candidate, step: str, best: Scored, last: bool = False) -> bool:
            """Whether to refit ``cand``: a support not refitted yet, or a sparser form of
            ``best`` (a removal, a rewrite) whose support was refitted once, from another
            start, to a worse criterion than ``best``'s. Started from ``best``'s refitted
            values it can reach the optimum that start missed (a steep Hill law refitted from
            the screen's constants can stop in a poor basin; Goodwin's repression did, 127
            units behind its refit from a neighbour's values). ``last``: the last
            elimination's moves, refitted from each best they were not refitted from,
            however many refits their support had: yeast glycolysis's true ``-c*S6``, refitted
            first as a swap and as a rewrite of an early best, both thousands of units behind,
            was never refitted from the settled ``-c*S6 - c*S3**2`` (its removal), and the
            twin kept the spurious term where the truth, refitted from it, scored 3.2 units
            better with a term fewer (its 8-condition cell trained and distilled with torch's
            two default threads; the benchmark's, with one, took another path to the truth)."""
            key = cand.support()
            if key not in seen:
                return True
            if not (step == "prune" or step in REWRITES) or seen[key].criterion <= best.criterion:
                return False
            if last:
                return (key, id(best)) not in moved
            return started.get(key) != id(best) and key not in retried

        def score_all(
            moves: list[tuple[Candidate, str]], around: Scored | None, last: bool = False
        ) -> list[Scored]:
            """:func:`score` of each move in order, their refits run first in threads (a
            refit depends only on its candidate); a support that comes twice is scored once."""
            unique = first_of_each(moves, lambda m: m[0].support())
            todo = [
                c
                for c, step in unique
                if step == "reswap" or last or not (c.support() in seen and c.support() in retried)
            ]
            results = self.refit_all(refit, todo, self.workers if workers is None else workers)
            done = dict(zip(map(id, todo), results, strict=True))
            return [score(c, step, around, done.get(id(c)), last) for c, step in unique]

        swapped: set[tuple] = set()

        def n_refits() -> int:
            """Refits counted against ``max_refits`` (the swaps have their own bound)."""
            return len(scored) + len(retried) - len(swapped)

        def swap_moves(
            around: Scored,
            queued: set[tuple],
            step: str = "swap",
            skip: frozenset[tuple] = frozenset(),
        ) -> tuple[list[tuple[Candidate, str]], list[tuple[Candidate, str]]]:
            """``around``'s swaps (``step="sibling"``: its siblings, screened along its
            trajectory) not refitted yet and not in ``skip``, the best-screened first, at most
            ``swaps`` (or ``siblings``) per target (outside ``max_refits``): those whose
            support is not ``queued`` by the same step's other moves, and those whose support
            is. The latter are refitted after those moves, from their own start, keeping the
            better of the two refits: a swap
            starts from the trained model's states, a removal from the best's values, and the
            two can end in different basins (yeast's true c*S6, refitted only as a removal of
            the best's S1*S7 term, stopped 2010 units behind its refit from the trained
            states)."""
            first, again, per_target, taken = [], [], {}, set()
            cands, limit = {
                "swap": (swap, self.swaps),
                "sibling": (sibling, self.siblings),
                "single": (single, self.swaps),
            }[step]
            along = around if step == "sibling" else None
            for cand in sorted(cands(around), key=lambda c: screened(c, along)):
                key, target = cand.support(), cand.info.get("swapped")
                if key in taken or key in skip or not fresh(cand, step, around):
                    continue
                # a monomial's saturating forms have their own allowance: a law that
                # saturates does not take the place of the same law over other variables
                target = (target, bool(cand.info.get("saturates")))
                if per_target.get(target, 0) < limit:
                    per_target[target] = per_target.get(target, 0) + 1
                    (again if key in queued else first).append((cand, step))
                    taken.add(key)
                    swapped.add(key)
            return first, again

        def reswap_moves(around: Scored, near_only: bool = False) -> list[tuple[Candidate, str]]:
            """``around``'s first-order swaps refitted from its fitted initial states, at most
            ``reswaps`` per target, the best-screened along its trajectory first: those not
            refitted yet, and those refitted before from other starts to a worse criterion
            than ``around``'s (:func:`score` keeps the better refit); ``near_only``: only
            those refitted before within ``tolerance`` of it. Called once for each settled
            best: the steps then end, or go on from a better one."""
            start = moved_from(around)
            if swap is None or not self.reswaps or not start:
                return []
            out, per_target, taken = [], {}, set()
            for cand in sorted(swap(around), key=lambda c: screened(c, around)):
                key, target = cand.support(), cand.info.get("swapped")
                if (key, id(around)) in seeded or key in taken:
                    continue
                if per_target.get(target, 0) >= self.reswaps:
                    continue
                if key in seen and seen[key].criterion <= around.criterion:
                    continue
                if near_only and (
                    key not in seen or seen[key].criterion > around.criterion + self.tolerance
                ):
                    continue
                per_target[target] = per_target.get(target, 0) + 1
                cand.info.update(start)
                out.append((cand, "reswap"))
                taken.add(key)
                swapped.add(key)
            return out

        def rival_siblings(around: Scored) -> list[Scored]:
            """The siblings of at most ``rivals`` structures within ``tolerance`` of
            ``around`` (the settled best) whose siblings were not refitted yet, the best
            first, each refitted and scored from the rival's fitted initial states (as a
            best's siblings are)."""
            if not self.rivals or not self.siblings or sibling is None:
                return []
            near = [
                s
                for s in sorted(scored, key=lambda s: s.criterion)
                if s is not around
                and id(s) not in sibled
                and s.criterion <= around.criterion + self.tolerance
            ]
            trials: list[Scored] = []
            for rival in near[: self.rivals]:
                sibled.add(id(rival))
                trials += score_all(swap_moves(rival, set(), "sibling")[0], rival)
            return trials

        def refused_siblings(around: Scored) -> list[Scored]:
            """The siblings of at most ``rivals`` refused candidates
            (:mod:`ude.distill.admissible`) whose fit before the refusal scores within
            ``tolerance`` of ``around`` (the settled best), the best first, each refitted as a
            best's siblings are. A law over the wrong variable can fit as well as the truth
            and be refused for it (Goldbeter's ``-c*M*X/(K + M)`` degrades cyclin where
            there is none, with C declared ``nonnegative``); the search had moved on from it,
            and its sibling, the true ``-c*C*X/(K + C)``, was never refitted. A sibling
            refitted before from another start to a criterion more than ``tolerance`` behind
            the refused fit is refitted again from the refused candidate's states (the better
            refit kept): on Goldbeter's base cell the true support had been refitted once as
            another move's sibling, from ``K`` 6.1, and stopped 360 units behind."""
            if not self.rivals or not self.siblings or sibling is None:
                return []
            would = {
                id(s): information_criterion(
                    s.refit.refused_nmse,
                    s.refit.n_points,
                    s.n_params,
                    self.criterion,
                    s.info.get("log_models", 0.0),
                )
                for s in scored
                if s.refit.refused is not None and s.refit.refused_nmse is not None
            }
            near = sorted(
                (s for s in scored if id(s) in would and id(s) not in sibled),
                key=lambda s: would[id(s)],
            )
            near = [s for s in near if would[id(s)] <= around.criterion + self.tolerance]
            trials: list[Scored] = []
            for refused in near[: self.rivals]:
                sibled.add(id(refused))
                kin = [
                    (c, "sibling")
                    for c in sibling(refused)
                    if c.support() not in seen
                    or (
                        c.support() not in retried
                        and seen[c.support()].criterion > would[id(refused)] + self.tolerance
                    )
                ]
                trials += score_all(kin, refused)
            return trials

        def screened(cand: Candidate, around: Scored | None = None) -> float:
            if screen is not None:
                return screen(cand, around)
            return cand.info.get("screen", 0.0)

        if self.max_initial_terms is not None:
            # a candidate dense enough to interpolate the trained model's errors screens well
            # along its trajectory, but its refit is slow and its solve often blows up
            cap = self.max_initial_terms * max(len(c.coef) for c in candidates)
            candidates = [c for c in candidates if c.n_terms <= cap] or candidates
        sparsest = sorted(candidates, key=lambda c: (c.n_terms, screened(c)))
        if self.order == "screen":
            # the best-screened candidate, the best-screened of the smallest size (a dense
            # candidate can screen best along a poorly fitted trajectory), then the sparsest
            # within the margin of the best: the screen is linearised, so near-ties are
            # settled by the refits
            ranked = sorted(candidates, key=lambda c: (screened(c), c.n_terms))
            floor = screened(ranked[0])
            near = [c for c in sparsest if screened(c) <= floor + self.margin]
            ranked = [ranked[0], sparsest[0], *near, *sparsest]
        else:  # the sparsest first: dense ones are slow to refit and rarely chosen
            ranked = sparsest
        # refit until max_candidates refits succeeded: a failed one (a candidate whose solve
        # blows up) gives way to the next, twice at most (the moves need refits too)
        # (in batches of the refits still wanted: the same candidates as one at a time)
        succeeded, tried = 0, 0
        queue = first_of_each(ranked, lambda c: c.support())
        while queue:
            room = min(self.max_candidates - succeeded, self.max_candidates + 2 - tried)
            if self.max_refits is not None:
                room = min(room, self.max_refits - n_refits())
            batch = [c for c in queue if c.support() not in seen][: max(room, 0)]
            if not batch:
                break
            queue = queue[next(i for i, c in enumerate(queue) if c is batch[-1]) + 1 :]
            trials = score_all([(c, "path") for c in batch], None)
            succeeded += sum(math.isfinite(t.criterion) for t in trials)
            tried += len(batch)
        best = min(scored, key=lambda s: s.criterion)
        if not math.isfinite(best.criterion) and self.swaps:
            # every first candidate failed or was refused (:mod:`ude.distill.admissible`):
            # the first one's swaps (each target's first-order terms, a neural reaction's
            # own law) and each target's single terms from the screen may still hold a twin
            last = swap_moves(scored[0], set())[0] if swap is not None else []
            if single is not None:
                skip = frozenset(c.support() for c, _ in last)
                last += swap_moves(scored[0], set(), "single", skip)[0]
            score_all(last, scored[0])
            best = min(scored, key=lambda s: s.criterion)
        # sibled: the bests and rivals whose siblings were refitted (ids)
        first, sibled = True, set()
        while math.isfinite(best.criterion):
            moves = self._neighbours(best) if self.prune or self.grow else []
            if rewrite is not None:
                moves += [(c, c.origin) for c in rewrite(best)]
            if propose is not None and self.rescreen:
                moves += [(c, "rescreen") for c in propose(best)]
            unique: dict[tuple, tuple[Candidate, str]] = {}
            for cand, step in moves:
                if fresh(cand, step, best):
                    unique.setdefault(cand.support(), (cand, step))
            moves = list(unique.values())
            if self.order == "screen" and self.max_moves is not None:
                # every removal and rewrite is refitted (the parsimony rule below needs the
                # sparser neighbours; a rewrite is the same fit with a term or a constant
                # fewer); additions and proposals only when the screen ranks them high
                sparser = [m for m in moves if m[1] == "prune" or m[1] in REWRITES]
                others = [m for m in moves if m[1] != "prune" and m[1] not in REWRITES]
                others = sorted(others, key=lambda m: screened(m[0], best))
                others = others[: self.max_moves]
                moves = sparser + others
            if self.max_refits is not None:
                moves = moves[: max(0, self.max_refits - n_refits())]
            again: list[tuple[Candidate, str]] = []
            if first and self.swaps and swap is not None:
                swaps, again = swap_moves(best, {c.support() for c, _ in moves})
                moves += swaps
            if self.siblings and sibling is not None and id(best) not in sibled:
                # a sibling whose support this step's swaps refit (an input alone for
                # another) is left to the swap, not refitted a second time from its match
                sibled.add(id(best))
                also = frozenset(c.support() for c, step in moves if step == "swap")
                also |= {c.support() for c, _ in again}
                queued = {c.support() for c, _ in moves} - also
                kin, kin_again = swap_moves(best, queued, "sibling", also)
                moves, again = moves + kin, again + kin_again
            first = False
            if moves:
                trials = score_all(moves, best)
                trials += score_all(again, best)
                top = min(trials, key=lambda s: s.criterion)
                if top.criterion < best.criterion:
                    best = top
                    continue
            # settled: the best's swaps again from its states (with every species measured,
            # those that fit nearly as well); the siblings of the structures that fit nearly
            # as well
            late = reswap_moves(best, near_only=not reswap)
            trials = (score_all(late, best) if late else []) + rival_siblings(best)
            trials += refused_siblings(best)
            if not trials:
                break
            top = min(trials, key=lambda s: s.criterion)
            if top.criterion >= best.criterion:
                break
            best = top
        while self.prune and math.isfinite(best.criterion):
            # backward elimination from the best, past the refit budget (each pass a term or a
            # constant fewer): the parsimony rule below needs the sparser neighbours of what it
            # chooses, and a best written the long way its short form
            sparser = [(c, step) for c, step in self._neighbours(best) if step == "prune"]
            if rewrite is not None:
                sparser += [(c, c.origin) for c in rewrite(best)]
            moves = [(c, step) for c, step in sparser if fresh(c, step, best, last=True)]
            trials = score_all(moves, best, last=True)
            if not trials or min(t.criterion for t in trials) >= best.criterion:
                break
            best = min(trials, key=lambda s: s.criterion)
        return self.choose(scored, [s.criterion for s in scored]), scored

    @staticmethod
    def refit_all(refit: Callable, cands: list[Candidate], workers: int) -> list:
        """``refit`` of each candidate, in order; in ``workers`` threads when there are more
        than one of each."""
        if workers <= 1 or len(cands) < 2:
            return [refit(c) for c in cands]
        # torch's default dtype is global: the refits set float64 (ude.distill.refit), and
        # with it set here no thread changes it under another
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            with ThreadPoolExecutor(min(workers, len(cands))) as pool:
                return list(pool.map(refit, cands))
        finally:
            torch.set_default_dtype(previous)

    def choose(self, scored: list[Scored], criteria: list[float]) -> Scored:
        """The twin among ``scored`` with these ``criteria``: the sparsest one within
        ``tolerance`` of the best (on one trajectory, extra terms can fit the noise), among
        the candidates whose refit solved; :class:`NoSolvableTwin` when none did."""
        solved = [
            (s, c) for s, c in zip(scored, criteria, strict=True) if s.refit.ok and math.isfinite(c)
        ]
        if not solved:
            raise NoSolvableTwin(scored)
        floor = min(c for _, c in solved)
        near = [(s, c) for s, c in solved if c <= floor + self.tolerance]
        return min(near, key=lambda sc: (sc[0].candidate.n_terms, sc[1]))[0]

    def _neighbours(self, best: Scored) -> list[tuple[Candidate, str]]:
        """Supports one term away from ``best``, starting from its refitted coefficients and
        constants."""
        fitted = refitted_coef(best)
        constants = refitted_constants(best)
        start = moved_from(best)
        out = []
        for t, c in fitted.items():
            for j in range(len(c)):
                coef = {k: v.copy() for k, v in fitted.items()}
                if c[j] != 0 and self.prune:
                    if np.count_nonzero(c) == 1:
                        continue  # keep a term in every target
                    coef[t][j] = 0.0
                    out.append(
                        (Candidate(coef, "prune", info=dict(start), constants=constants), "prune")
                    )
                elif c[j] == 0 and self.grow:
                    # a small start; the refit through the ODE sizes it
                    coef[t][j] = 1e-2 * float(np.max(np.abs(c))) if np.any(c) else 1e-3
                    out.append(
                        (Candidate(coef, "grow", info=dict(start), constants=constants), "grow")
                    )
        return out
