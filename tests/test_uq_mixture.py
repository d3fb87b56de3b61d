"""Structure averaging (ude.uq.mixture): the predictive band over rival refitted structures."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.uncertainty import LaplaceInterval
from ude.errors import UdeError
from ude.spec import ModelSpec
from ude.uq import StructureMixture

TIMES = np.linspace(0, 3, 31)
GRID = np.linspace(0, 9, 46)  # the data's window and twice as far again


def _spec(rhs: str, k: float = 0.5) -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"k": {"value": k, "learn": True}},
            "equations": {"x": rhs},
        }
    )


def _data() -> Measurements:
    rng = np.random.default_rng(0)
    values = 2.0 * np.exp(-0.5 * TIMES) + 0.05 * rng.standard_normal(len(TIMES))
    return Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )


@cache
def _refit(rhs: str) -> Any:
    """The refit of ``x' = rhs`` on :func:`_data` (once per test session: a twin's solves
    leave it as they found it)."""
    refit = TwinRefit(max_iter=80).fit(_spec(rhs), _data(), noise=np.array([0.05]))
    assert refit.ok
    return refit


def _distillation(data: Measurements, weights: list[float]) -> SimpleNamespace:
    """Two refitted rivals on the same data: first-order decay (the truth) and a quadratic
    one; they agree over the data and part past it."""
    models = [_refit(rhs) for rhs in ("-k*x", "-k*x**2")]
    path = [SimpleNamespace(refit=r, rhs=rhs) for r, rhs in zip(models, ("x", "x**2"), strict=True)]
    return SimpleNamespace(
        path=path,
        weights=np.array(weights),
        chosen=path[0],
        model=models[0].model,
        twin=SimpleNamespace(states=["x"]),
        describe=lambda s: {"x": f"-k*{s.rhs}"},
    )


def test_the_mixture_is_wider_than_either_structure_where_they_disagree():
    """Past the data the rivals part: the band of the evenly weighted mixture spans both, so
    at the end it is wider than either structure's own Laplace band; with one structure at
    weight 1 it is that structure's band; the predictive band (observation noise added)
    holds the state band."""
    data = _data()
    result = _distillation(data, [0.5, 0.5])
    band = StructureMixture(n_samples=300, seed=1).band(result, data, GRID)
    assert band.n_failed == 0 and [c["n_samples"] for c in band.components] == [150, 150]
    width = (band.state_upper - band.state_lower)[0, -1, 0]
    for s in result.path:
        own = LaplaceInterval(n_samples=300, seed=1).forecast(s.refit.model, data, GRID)
        own_width = (own.upper - own.lower)[0, -1, 0]
        assert width > 1.5 * own_width, (width, own_width)
    # the noise: about 0.05 at this level, on either side of every trajectory quantile
    assert np.all(band.upper >= band.state_upper - 1e-3)
    assert np.median(band.upper - band.lower) > np.median(band.state_upper - band.state_lower)
    assert 0.03 < band.noise[0] < 0.08

    alone = StructureMixture(n_samples=300, seed=1).band(
        _distillation(data, [1.0, 0.0]), data, GRID
    )
    assert len(alone.components) == 1
    first = LaplaceInterval(n_samples=300, seed=1).forecast(result.path[0].refit.model, data, GRID)
    w_alone = (alone.state_upper - alone.state_lower)[0, -1, 0]
    w_first = (first.upper - first.lower)[0, -1, 0]
    assert abs(w_alone - w_first) < 0.2 * w_first  # the same draws' law, other seeds


def test_with_the_bootstrap_the_mixture_and_model_weights_use_the_bagged_weights():
    """The structure bootstrap ran: the draws are shared by its resample-averaged weights
    (quadratic decay 0.8, which only a resample's screen refitted; the twin's 0.2), not by
    the path's evidence weight (1.0 on the twin), and twin.json's model_weights lists the same
    weights with the evidence beside them (none for the structure the selection never
    scored)."""
    from ude.distill.report import model_weights

    data = _data()
    result = _distillation(data, [1.0])
    twin, rival = result.path
    result.path = [twin]
    for s, key in ((twin, "A"), (rival, "B")):
        s.candidate = SimpleNamespace(support=lambda key=key: key)
    structures = {
        key: SimpleNamespace(scored=lambda s=s: s, refit=s.refit, origin=origin)
        for key, s, origin in (("A", twin, "selection"), ("B", rival, "bootstrap"))
    }
    result.structure_bootstrap = SimpleNamespace(
        weight={"A": 0.2, "B": 0.8}, share={"A": 0.3, "B": 0.7}, structures=structures
    )
    band = StructureMixture(n_samples=100, seed=1).band(result, data, GRID)
    assert [(c["discovered"], c["n_samples"]) for c in band.components] == [
        ("dx: -k*x**2", 80),
        ("dx: -k*x", 20),
    ]
    assert {c["weight_from"] for c in band.components} == {"bootstrap"}
    rows = [{"terms": {"x": "-k*x"}, "weight": 1.0, "criterion": -50.0}]
    weights = model_weights(rows, result)
    assert [(w["weight"], w["evidence_weight"], w["criterion"]) for w in weights] == [
        (0.8, None, None),
        (0.2, 1.0, -50.0),
    ]
    assert weights[0]["bootstrap_share"] == 0.7 and weights[0]["refitted_in"] == "bootstrap"
    # the evidence weights on the data asked for: the twin's alone, the rival listed at 0
    band = StructureMixture(n_samples=100, seed=1, weights="evidence").band(result, data, GRID)
    assert [(c["n_samples"], c["weight_from"]) for c in band.components] == [(100, "evidence")]
    weights = model_weights(rows, result, prefer="evidence")
    assert [(w["weight"], w["weight_from"]) for w in weights] == [
        (1.0, "evidence"),
        (0.0, "evidence"),
    ]
    with pytest.raises(UdeError, match="distill.uq.mixture.weights"):
        StructureMixture(weights="share")
    # without the bootstrap: the path's evidence weights
    result.structure_bootstrap = None
    band = StructureMixture(n_samples=100, seed=1).band(result, data, GRID)
    assert [(c["n_samples"], c["weight_from"]) for c in band.components] == [(100, "evidence")]
    assert model_weights(rows, result)[0]["weight_from"] == "evidence"


@cache
def _exploding() -> Any:
    """A rival that fits growth, x' = k x² from x = 2 with k about 0.15: it blows up at
    t = 1 / (k x0) = 3.3, just past the data, for every draw near its refit."""
    grow = 2.0 / (1 - 0.3 * TIMES)
    values = grow + 0.05 * np.random.default_rng(1).standard_normal(len(TIMES))
    growth = Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )
    refit = TwinRefit(max_iter=80).fit(_spec("k*x**2", k=0.12), growth, noise=np.array([0.05]))
    assert refit.ok
    return refit


def _with_rival(data: Measurements, weights: list[float]) -> SimpleNamespace:
    result = _distillation(data, [1.0, 0.0])
    result.path[1] = SimpleNamespace(refit=_exploding(), rhs="x**2")
    result.weights = np.array(weights)
    return result


def test_a_rival_that_blows_up_makes_the_band_unbounded_not_narrower():
    """Half the mixture's weight on a structure that blows up near t = 3.3: its draws are
    counted (all 150 blew up, the first past the data), and once more than 5 % of all draws have
    escaped no finite band holds 95 % of the mixture: from there the band is unbounded (±inf)
    instead of the surviving structure's narrow band; before, it is finite."""
    data = _data()
    band = StructureMixture(n_samples=300, seed=1).band(_with_rival(data, [0.5, 0.5]), data, GRID)
    stable, rival = band.components
    assert stable["n_failed"] == 0 and rival["n_failed"] == 150 and rival["failed_share"] == 1.0
    assert 3.0 < rival["first_failure"] < 4.0, rival
    assert band.n_failed == 150
    (end,) = band.unbounded_from()
    assert end is not None and rival["first_failure"] <= end < 4.5, end
    after = band.times >= end
    assert np.all(np.isinf(band.state_upper[0, after])) and np.all(band.upper[0, after] == np.inf)
    assert np.all(band.lower[0, after] == -np.inf)
    assert np.all(np.isfinite(band.state_upper[0, ~after]))
    assert band.usable and band.escaped[0, -1] == 0.5
    assert np.isnan(band.median[0, -1])  # half the draws escaped: no median
    # the plot shades the unbounded part's whole height instead of leaving a gap
    shown = band.for_plot()
    assert np.all(np.isfinite(shown.upper)) and np.all(np.isfinite(shown.state_lower))
    assert shown.upper[0, -1, 0] >= 100 * np.nanmax(np.abs(band.median[0, :, 0]))
    # coverage counts the bounded times only
    truth = np.broadcast_to(band.state_lower[:, :1], band.state_lower.shape).copy()
    assert np.isfinite(band.coverage(truth))


def test_a_few_blowups_widen_the_band_by_the_rule():
    """3 % of the weight on the exploding rival (9 of 300 draws): the band stays bounded but
    past the blow-up it is the central 0.95 · 300 / 291 interval of the 291 surviving draws
    (so it holds 95 % of all 300 whatever the 9 do), exactly, not their 95 % interval."""
    data = _data()
    band = StructureMixture(n_samples=300, seed=1).band(_with_rival(data, [0.97, 0.03]), data, GRID)
    assert [c["n_samples"] for c in band.components] == [291, 9]
    assert band.components[1]["n_failed"] == 9 and band.unbounded_from() == [None]
    states, failed, _, _ = LaplaceInterval(n_samples=291, seed=1).trajectories(
        _refit("-k*x").model, data, GRID
    )
    assert not failed.any()
    inner = 0.95 * 300 / 291
    lo, hi = np.quantile(states[:, 0, -1, 0], [(1 - inner) / 2, (1 + inner) / 2])
    assert np.isclose(band.state_lower[0, -1, 0], lo) and np.isclose(band.state_upper[0, -1, 0], hi)
    plain_lo, plain_hi = np.quantile(states[:, 0, -1, 0], [0.025, 0.975])
    assert hi - lo > plain_hi - plain_lo


def test_escape_index():
    """A frozen row escapes one output before its constant tail, a nan escapes at once, a
    failed solve (all nan) at 0; a row of a draw that did not fail is never cut, even if
    constant; a failed draw with nothing to see died in the last interval."""
    from ude.uq.mixture import escape_index

    t = np.linspace(0, 1, 10)
    row = np.exp(t)[:, None]
    frozen = row.copy()
    frozen[6:] = 7.5
    nan = row.copy()
    nan[3:] = np.nan
    states = np.stack([[frozen], [nan], [np.full_like(row, np.nan)], [np.ones_like(row)], [row]])
    failed = np.array([True, True, True, False, True])
    assert escape_index(states, failed)[:, 0].tolist() == [5, 3, 0, 10, 9]


def test_structures_on_a_fixed_grid_share_one_solve_with_their_own_results():
    """The mixture solves the structures whose solver steps on a fixed grid (the refits' rk4)
    together: each structure's states and dead draws are those of its own solve, a rival
    that blows up included (its rows frozen, the other structure's untouched)."""
    import copy

    from ude.distill.uncertainty import solve_stacked, stackable
    from ude.model.solver import Solver

    data = _data()
    models = [copy.deepcopy(r.model) for r in (_refit("-k*x"), _exploding())]
    for m in models:
        m.solver = Solver("rk4")  # as the selection's refits: rk4 on the output grid
    assert {stackable(m.solver) for m in models} == {("rk4", None)}
    intervals = [LaplaceInterval(n_samples=n, seed=n) for n in (7, 5)]
    ready = [i.prepare(m, data) for i, m in zip(intervals, models, strict=True)]
    together = solve_stacked(ready, GRID)
    for i, r, (states, dead) in zip(intervals, ready, together, strict=True):
        own_states, own_dead = i.solve(r, GRID)
        assert states.shape == own_states.shape == (len(r.draws), 1, len(GRID), 1)
        np.testing.assert_allclose(states, own_states, rtol=1e-12, atol=0)
        assert np.array_equal(dead, own_dead)
    assert not together[0][1].any() and together[1][1].all()


def test_a_structure_without_a_laplace_approximation_is_named_not_hidden(monkeypatch):
    """A structure whose Hessian cannot be had has no draws at all (not a blow-up): it is
    left out, its weight reported and warned about, and the band is the other structure's."""
    import ude.uq.mixture as mixture
    from ude.uq.report import band_warnings

    data = _data()
    result = _distillation(data, [0.6, 0.4])
    singular = result.path[1].refit.model
    real = mixture.LaplaceInterval.prepare

    def prepare(self, model, *args, **kwargs):
        if model is singular:
            raise np.linalg.LinAlgError("Singular matrix")
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(mixture.LaplaceInterval, "prepare", prepare)
    band = StructureMixture(n_samples=100, seed=1).band(result, data, GRID)
    assert band.left_out_weight == 0.4 and "LinAlgError" in band.components[1]["left_out"]
    assert band.n_failed == 0 and band.unbounded_from() == [None]
    (line,) = band_warnings(band, band.unbounded_from())
    assert "weight 0.40 could not be simulated" in line


def test_the_ensemble_band_keeps_members_that_blow_up():
    """20 members, two of which blow up (inf) at t = 5: 10 % of the pool, more than the 5 %
    a 95 % band may leave out, so from t = 5 the band is unbounded and before it finite;
    with one of 40 (2.5 %) it stays finite, the central 0.95 / 0.975 of the 39 others."""
    import torch

    from ude.uq.ensemble_band import ensemble_band

    t = np.linspace(0, 9, 10)
    rates = np.linspace(0.4, 0.6, 40)

    def ensemble(n: int, blown: int) -> SimpleNamespace:
        traj = 2.0 * np.exp(-rates[:n, None] * t)[:, None, :, None]  # (member, 1, time, 1)
        traj[:blown, :, 5:] = np.inf
        return SimpleNamespace(
            initial=torch.zeros(n, 1, 1, dtype=torch.float64),
            trajectories=lambda times, cond: torch.as_tensor(traj),
            spec=SimpleNamespace(states=["x"], observables={}),
            observable_names=["x"],
            noise=torch.full((n, 1), 0.05, dtype=torch.float64),
        )

    band = ensemble_band(ensemble(20, 2), t)
    assert band.n_failed == 2 and band.unbounded_from() == [5.0]
    assert np.all(np.isfinite(band.state_upper[0, :5])) and np.all(band.upper[0, 5:] == np.inf)
    band = ensemble_band(ensemble(40, 1), t)
    assert band.unbounded_from() == [None]
    alive = 2.0 * np.exp(-rates[1:40] * t[-1])
    inner = 0.95 / (1 - 1 / 40)
    lo, hi = np.quantile(alive, [(1 - inner) / 2, (1 + inner) / 2])
    assert np.isclose(band.state_lower[0, -1, 0], lo) and np.isclose(band.state_upper[0, -1, 0], hi)
