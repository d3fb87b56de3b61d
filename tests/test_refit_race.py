"""A move's refit raced against the best's criterion: it stops once it cannot come within the
selection's tolerance plus ``race_margin`` of the best (``TwinRefit.fit(give_up_above=...)``),
and the selection sets that level from the best before a step's refits."""

from __future__ import annotations

import math

import numpy as np

from tests.test_refit_settle import twin
from ude.benchmark.scenario import Scenario, build_problem
from ude.distill import Candidate, RefitResult, TrajectorySelector, TwinRefit
from ude.distill.refit import RACE_LOOKBACK


def test_a_refit_that_cannot_reach_the_level_stops_where_the_unraced_one_went_on():
    data = build_problem(Scenario(system="goldbeter", seed=0)).measurements
    start = np.asarray(data.truth.initial) * 1.1
    refit = TwinRefit(max_iter=200, tol=0.0, method="rodas5p")
    full = refit.fit(twin(Kd=0.2), data, start)
    assert full.ok and not full.abandoned and full.iterations == 200
    reached = full.n_points * math.log(full.nmse)
    # a level above where it ends: the race changes nothing
    same = refit.fit(twin(Kd=0.2), data, start, give_up_above=reached + 1.0)
    assert not same.abandoned and same.iterations == 200 and same.nmse == full.nmse
    # a level no refit could reach: it stops after its first steps, on the same path
    raced = refit.fit(twin(Kd=0.2), data, start, give_up_above=reached - 1e6)
    assert raced.abandoned and raced.ok
    assert raced.iterations == 20 * (RACE_LOOKBACK + 1) < full.iterations
    np.testing.assert_allclose(raced.trace, full.trace[: len(raced.trace)], rtol=1e-8)


def _selection(race_margin):
    """Three path candidates over four terms (the best: terms 0 and 1), then removals; each
    refit records the level it was raced against."""
    levels: dict[tuple, float | None] = {}

    def cand(support, screen):
        coef = np.zeros(4)
        coef[list(support)] = 1.0
        return Candidate({"x": coef}, "test", info={"screen": screen})

    def refit(c):
        support = tuple(int(j) for j in np.flatnonzero(c.coef["x"]))
        levels[support] = c.info.get("give_up_above")
        nmse = {(0, 1): 1e-3, (0,): 2e-3}.get(support, 5e-3)
        return RefitResult(None, {}, nmse, 60, True, 0), len(support)

    selector = TrajectorySelector(grow=False, max_initial_terms=None, race_margin=race_margin)
    path = [cand([0, 1], 0.0), cand([2], 5.0), cand([0, 1, 3], 6.0)]
    chosen, scored = selector.select(path, refit)
    return selector, chosen, scored, levels


def test_the_moves_are_raced_against_the_best_before_their_step_the_first_candidates_not():
    selector, chosen, scored, levels = _selection(race_margin=50.0)
    best = next(s for s in scored if s.step == "path" and s is chosen)
    assert all(levels[k] is None for k in [(0, 1), (2,), (0, 1, 3)])
    moves = [k for k in levels if k not in {(0, 1), (2,), (0, 1, 3)}]
    assert moves and (0,) in moves
    for k in moves:
        assert levels[k] == best.criterion + selector.tolerance + 50.0
    # off: no refit is raced, and the choice is the same
    _, chosen_off, _, levels_off = _selection(race_margin=None)
    assert all(v is None for v in levels_off.values())
    assert chosen_off.candidate.support() == chosen.candidate.support()
