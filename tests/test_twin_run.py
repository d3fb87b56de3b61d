"""The twin of a per-condition run (python train.py with a population parameter and a network)
forecasts each training condition with that condition's own values, as the fitted hybrid does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train
from ude.distill.cli import load_run
from ude.fit import predict
from ude.twin import Twin

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "virtual_population"
PATIENTS = [f"p{i:02d}" for i in (1, 3, 7, 12, 14, 16, 18, 20)]  # kel 0.11-0.38, Emax 0.42-1.5
NOISE = {"C": 0.2, "R": 0.1}  # the example's measurement noise (truth.json)

QUICK = [
    "trainer.max_epochs=400",
    "callbacks=minimal",
    "logger=none",
    "distill.distiller.selector.max_candidates=2",
    "distill.distiller.selector.max_refits=4",
    "distill.distiller.selector.grow=false",
    "distill.distiller.bootstrap.n_models=5",
    "distill.distiller.sampler.n_times=60",
    "distill.forecast_interval.n_samples=20",
]


def subset(tmp_path: Path) -> list[str]:
    """The example's tables restricted to PATIENTS, as data overrides."""
    out = []
    for key, name in (("path", "measurements"), ("conditions", "conditions"), ("doses", "doses")):
        table = pd.read_csv(DATA / f"{name}.csv")
        path = tmp_path / f"{name}.csv"
        table[table["condition"].isin(PATIENTS)].to_csv(path, index=False)
        out.append(f"data.{key}={path}")
    return out


def rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - b) ** 2)))


@pytest.mark.slow
def test_the_twin_of_a_per_condition_run_forecasts_each_condition_like_the_hybrid(
    make_cfg, tmp_path
):
    """Eight patients of the virtual population, kel individual under a lognormal population
    and the drug effect learned by a network, then distilled with its coefficient individual.
    On each training patient the twin with that patient's own values (Twin.simulate(condition=
    ...)) has the hybrid's kel to 10 % and forecasts the drug concentration C (which kel alone
    drives) as the hybrid does, over the data window and a day past it, to within half the
    measurement noise; the population-median twin with the same doses is several times further
    off. The response R: the hybrid's network fits it loosely (its RMS error was 1.3-19 times
    the noise over the patients), so the twin, refitted through the ODE, is held to fitting
    each patient's R at least as well as the hybrid (it did at 0.8-1.1 times the noise: its
    effect was A*c/(A + 18.9), truth 20), and better than the median twin. Measured: C off
    the hybrid by at most 0.34 noise sd with the patient's own values, 1.9-15 with the
    median's. About 18 minutes on 2 shared cores."""
    run = tmp_path / "run"
    train.train(make_cfg("experiment=virtual_population", *subset(tmp_path), *QUICK))
    twin = Twin.load(run)
    _, model, measurements, _ = load_run(run, [])
    assert twin.condition_names == measurements.conditions == PATIENTS
    assert "kel" in twin.individual and len(twin.individual) >= 2  # kel and the effect's

    times = np.linspace(0, 72, 145)
    _, hybrid = predict(model, times)  # observables (condition, time, observable)
    _, fitted = predict(model, measurements.times)
    names = model.observable_names
    c_, r_ = names.index("C"), names.index("R")
    trained_kel = model.parameters_.values()["kel"]
    at_data = np.isin(times, measurements.times)
    on = lambda t: t["R"].to_numpy()[at_data]  # noqa: E731  R at the sampling times
    rows = []
    for c, name in enumerate(PATIENTS):
        own = twin.simulate(times, condition=name, band=False)
        start, doses = twin.conditions[c].initial, list(twin.conditions[c].doses)
        typical = twin.simulate(times, initial=start, doses=doses, band=False)
        assert twin.values(name)["kel"] == pytest.approx(trained_kel[c], rel=0.1), name
        data = np.nanmean(measurements.values[c, :, :, r_], axis=1)
        rows.append(
            [
                rms(own["C"], hybrid[c, :, c_]) / NOISE["C"],
                rms(typical["C"], hybrid[c, :, c_]) / NOISE["C"],
                rms(on(own), data) / NOISE["R"],
                rms(on(typical), data) / NOISE["R"],
                rms(fitted[c, :, r_], data) / NOISE["R"],
            ]
        )
    own_c, typical_c, own_r, typical_r, hybrid_r = np.array(rows).T
    assert own_c.max() < 0.5, own_c
    assert np.median(typical_c) > 5 * np.median(own_c)
    assert np.median(own_r) <= np.median(hybrid_r) and np.median(own_r) < np.median(typical_r)
