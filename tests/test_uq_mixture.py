"""Structure averaging (ude.uq.mixture): the predictive band over rival refitted structures."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.uncertainty import LaplaceInterval
from ude.spec import ModelSpec
from ude.uq import StructureMixture

TIMES = np.linspace(0, 3, 31)
GRID = np.linspace(0, 9, 46)  # the data's window and twice as far again


def _spec(rhs: str) -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"k": {"value": 0.5, "learn": True}},
            "equations": {"x": rhs},
        }
    )


def _data() -> Measurements:
    rng = np.random.default_rng(0)
    values = 2.0 * np.exp(-0.5 * TIMES) + 0.05 * rng.standard_normal(len(TIMES))
    return Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )


def _distillation(data: Measurements, weights: list[float]) -> SimpleNamespace:
    """Two refitted rivals on the same data: first-order decay (the truth) and a quadratic
    one; they agree over the data and part past it."""
    models = []
    for rhs in ("-k*x", "-k*x**2"):
        refit = TwinRefit(max_iter=80).fit(_spec(rhs), data, noise=np.array([0.05]))
        assert refit.ok
        models.append(refit)
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
