"""The structure bootstrap: resamples of the data (conditions, or blocks of time points) run
the integral-matching screen and the selection again; inclusion probabilities are the share
of resamples whose chosen structure has a term."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp

from ude.distill.integral import IntegralPath, IntegralProblem, screen_score
from ude.distill.library import Term
from ude.distill.refit import RefitResult
from ude.distill.selection import Scored, TrajectorySelector
from ude.errors import UdeError
from ude.uq import StructureBootstrap
from ude.uq.resampling import block_length, draw_counts, resolve_unit
from ude.uq.structure_bootstrap import Replay, resampled_problem

NAMES = ["a", "b", "c"]
TERMS = {"x": [Term(sp.Symbol(n)) for n in NAMES]}


def system(n_conditions: int = 1, n_times: int = 40, weak: float = 0.0, seed: int = 0):
    """A measured state ``y = a_c + 2 F_a + weak * F_b + noise`` over ``n_conditions``
    conditions of ``n_times`` times each: term ``a`` is in the data, ``c`` is not, ``b`` is
    in with coefficient ``weak``. Columns are smooth curves, unit-scale; noise sd 0.1."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_times)
    cols, ys, conds, entries = [], [], [], []
    for c in range(n_conditions):
        F = np.stack([t * (1 + 0.3 * c), np.sin(6 * np.pi * t + c), np.cos(10 * np.pi * t)], axis=1)
        y = 0.5 * c + 2 * F[:, 0] + weak * F[:, 1] + 0.1 * rng.standard_normal(n_times)
        cols.append(F)
        ys.append(y)
        conds.append(np.full(n_times, c))
        entries.append(np.stack([np.full(n_times, c), np.arange(n_times)], axis=1))
    problem = IntegralProblem(
        F=np.concatenate(cols),
        y=np.concatenate(ys),
        condition=np.concatenate(conds),
        terms=NAMES,
        from_data=True,
        entries=np.concatenate(entries),
    )
    values = np.concatenate(ys).reshape(n_conditions, n_times, 1, 1)
    return problem, SimpleNamespace(values=values, n_conditions=n_conditions)


def fake_replay(problem: IntegralProblem, data, path_supports=None) -> tuple[Replay, list]:
    """A Replay whose "refit" is least squares on all the data (the residuals at every
    entry) and whose selection is the real screen and selector (no ODE)."""
    refits = []

    def residuals_of(support: tuple[int, ...]) -> np.ndarray:
        coef, _ = problem.lstsq(support)
        A = np.concatenate([problem.dummies, problem.F[:, list(support)]], axis=1)
        w, *_ = np.linalg.lstsq(A, problem.y, rcond=None)
        return (problem.y - A @ w) ** 2 / np.mean(problem.y**2)

    def refit(cand):
        refits.append(cand.support())
        support = tuple(np.flatnonzero(cand.coef["x"]))
        r2 = residuals_of(support)
        k = len(support) + problem.dummies.shape[1]
        return RefitResult(None, {}, float(r2.mean()), len(r2), True, 0), k

    def residuals(scored: Scored):
        return residuals_of(tuple(np.flatnonzero(scored.candidate.coef["x"])))

    selector = TrajectorySelector(grow=True, rescreen=False)

    def select(view, refit_fn):
        seen = view({"x": problem})
        cands = IntegralPath(max_terms=2).candidates(seen)
        return selector.select(
            cands, refit_fn, lambda c, _: screen_score(seen, c), sizes={"x": len(NAMES)}
        )[0]

    chosen, path = selector.select(
        IntegralPath(max_terms=2).candidates({"x": problem}),
        refit,
        lambda c, _: screen_score({"x": problem}, c),
        sizes={"x": 3},
    )
    if path_supports is not None:  # a selection that refitted fewer structures
        path = [s for s in path if s.candidate.support() in path_supports]
    replay = Replay(data, select, refit, path, chosen, TERMS, "ebic", residuals, selector.choose)
    return replay, refits


def test_a_true_term_is_near_one_and_an_absent_term_well_below():
    """Term a carries the signal (2 against noise 0.1 over 40 points): every resample
    keeps it; term c is absent from the data: the extended BIC keeps it out of all but a few
    resamples (0.2: the issue's target for false terms)."""
    problem, data = system()
    replay, _ = fake_replay(problem, data)
    found = StructureBootstrap(n_resamples=40, seed=0).resample(replay)
    p = found.inclusion["x"]
    assert p["a"] >= 0.95
    assert p.get("c", 0.0) <= 0.2
    assert found.info["unit"] == "times" and found.info["n_resamples"] == 40
    assert sum(found.share.values()) == pytest.approx(1.0)


def test_a_weak_term_is_uncertain_and_the_weights_say_so():
    """Term b at a coefficient the noise half hides: resamples disagree about it, so its
    inclusion is strictly between the sure and the absent terms'."""
    problem, data = system(weak=0.11, seed=3)
    replay, _ = fake_replay(problem, data)
    found = StructureBootstrap(n_resamples=60, seed=1).resample(replay)
    p = found.inclusion["x"]
    assert 0.1 < p.get("b", 0.0) < 0.9, p
    assert p["a"] >= 0.95
    # the averaged evidence weights sum to one over the refitted structures
    assert sum(found.weight.values()) == pytest.approx(1.0)


def test_resamples_are_reproducible_with_a_seed():
    problem, data = system(weak=0.11, seed=3)
    replay, _ = fake_replay(problem, data)
    a = StructureBootstrap(n_resamples=30, seed=7).resample(replay)
    b = StructureBootstrap(n_resamples=30, seed=7).resample(replay)
    assert a.inclusion == b.inclusion and a.share == b.share
    present = np.ones((2, 30), dtype=bool)
    draws = [draw_counts(present, "times", 3, np.random.default_rng(s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_the_screen_reruns_and_refits_a_structure_the_selection_never_tried():
    """The selection's path holds the chosen structure alone: the resamples' screen and
    moves reach others, refitted once each within the budget; with no budget they are
    counted as unscored and only the refitted structure can be chosen."""
    problem, data = system(weak=0.11, seed=3)
    replay, refits = fake_replay(problem, data)
    only = {replay.chosen.candidate.support()}
    replay, refits = fake_replay(problem, data, path_supports=only)
    before = len(refits)
    found = StructureBootstrap(n_resamples=30, max_refits=5, seed=0).resample(replay)
    assert 0 < found.info["refits_added"] <= 5
    assert len(refits) - before == found.info["refits_added"]  # each new structure once
    assert any(s.origin == "bootstrap" for s in found.structures.values())
    assert set(found.share) - only  # some resample chose a structure found by the bootstrap
    none = StructureBootstrap(n_resamples=30, max_refits=0, seed=0).resample(replay)
    assert none.info["refits_added"] == 0 and none.info["unscored_proposals"] > 0
    assert set(none.share) == only
    # a path whose one structure (b alone) no resample's screen proposes (each proposes its
    # best single term, a): every resample's candidates are past the budget, so each chose
    # among the refitted
    lone = {(("x", (1,)),)}
    replay, _ = fake_replay(problem, data, path_supports=lone)
    none = StructureBootstrap(n_resamples=30, max_refits=0, seed=0).resample(replay)
    assert none.info["resamples_chosen_among_refitted"] > 0
    assert set(none.share) == lone
    assert sum(none.share.values()) == pytest.approx(1.0)


def test_time_resamples_keep_each_conditions_count_and_blocks_are_consecutive():
    present = np.ones((3, 31), dtype=bool)
    present[1, 5:9] = False  # missing samples are never drawn
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = draw_counts(present, "times", 4, rng)
        assert counts.sum(axis=1).tolist() == present.sum(axis=1).tolist()
        assert counts[1, 5:9].sum() == 0
    # a block as long as the series draws it whole: the data itself
    np.testing.assert_array_equal(draw_counts(present[:1], "times", 31, rng), present[:1])
    assert block_length(None, 31) == 4 and block_length(None, 8) == 2


def test_condition_resamples_draw_whole_conditions():
    present = np.ones((6, 10), dtype=bool)
    counts = draw_counts(present, "conditions", None, np.random.default_rng(0))
    assert counts.sum() == 60
    assert all(len(set(row)) == 1 for row in counts)  # a condition's points go together
    assert resolve_unit("auto", 6, 5) == "conditions" and resolve_unit("auto", 2, 5) == "times"
    with pytest.raises(UdeError, match="unit"):
        resolve_unit("rows", 2, 5)


def test_several_conditions_are_resampled_whole_through_the_screen():
    problem, data = system(n_conditions=6, n_times=15)
    replay, _ = fake_replay(problem, data)
    found = StructureBootstrap(n_resamples=20, seed=0).resample(replay)
    assert found.info["unit"] == "conditions"
    assert found.inclusion["x"]["a"] >= 0.95


def test_a_resampled_problem_repeats_its_rows_by_the_counts():
    problem, _ = system(n_conditions=2, n_times=5)
    counts = np.array([[2, 0, 1, 0, 0], [0, 0, 0, 0, 3]])
    r = resampled_problem(problem, counts)
    assert r.n_points == 6
    assert r.entries.tolist() == [[0, 0], [0, 0], [0, 2], [1, 4], [1, 4], [1, 4]]
    np.testing.assert_array_equal(r.y[:2], problem.y[[0, 0]])


def test_the_summary_names_a_rival_the_resamples_choose():
    """A structure chosen by at least 10 % of the resamples is named on the summary line
    with its share beside the twin's; one chosen less often is not."""
    from ude.distill.cli import bootstrap_rival

    def row(terms, share, chosen=False):
        return {"discovered": terms, "bootstrap_share": share, "chosen": chosen}

    section = {
        "structures": [
            row({"x": "-0.52*x*y/(x + 0.33)"}, 0.6, chosen=True),
            row({"x": "-0.9*x*y"}, 0.3),
            row({"x": "-0.2*y"}, 0.1),
        ]
    }
    line = bootstrap_rival(section)
    assert line == (
        "STRUCTURE UNCERTAIN: 30% of the data's resamples choose dx/dt += -0.9*x*y "
        "(the twin's structure: 60%)"
    )
    section["structures"][1]["bootstrap_share"] = 0.05
    section["structures"][2]["bootstrap_share"] = 0.05
    assert bootstrap_rival(section) is None and bootstrap_rival(None) is None


def test_the_report_lists_the_twins_structure_even_when_no_resample_chose_it():
    problem, data = system(weak=0.11, seed=3)
    replay, _ = fake_replay(problem, data)
    found = StructureBootstrap(n_resamples=10, seed=0).resample(replay)
    key = replay.chosen.candidate.support()
    found.share.pop(key, None)
    found.weight[key] = 0.0
    rows = found.report(lambda s: {"x": str(s.candidate.support())}, key)["structures"]
    assert [r["chosen"] for r in rows].count(True) == 1
