"""Distillation inside a train.py run and again from a finished run directory."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import train
from ude.distill import load_twin
from ude.distill.cli import main as distill_main
from ude.errors import UdeError
from ude.spec.simulate import simulate_spec

QUICK = [
    "trainer.max_epochs=3",
    "trainer.check_val_every_n_epoch=1",
    "callbacks=minimal",
    "logger=none",
    "distill.distiller.selector.max_candidates=2",
    "distill.distiller.selector.prune=false",
    "distill.distiller.selector.grow=false",
    "distill.distiller.bootstrap.n_models=5",
    "distill.distiller.sampler.n_times=50",
    "distill.distiller.score_refit.max_iter=40",
    "distill.distiller.refit.max_iter=40",
    "distill.forecast_horizon=2",
]


def test_train_distils_and_run_can_be_distilled_again(make_cfg, tmp_path):
    run = tmp_path / "run"
    # '++': the key may or may not be in conf/distill (absent: LaplaceInterval's defaults)
    metrics = train.train(make_cfg(*QUICK, "++distill.forecast_interval.n_samples=30"))
    for name in ("twin.json", "equations.md", "distill.json"):
        assert (run / name).is_file(), name
    band = json.loads((run / "distill.json").read_text())["forecast_interval"]
    assert band["n_samples"] == 30 and band["level"] == 0.95
    assert 0 <= band["n_failed"] <= 30 and 0 <= band["coverage_of_truth"] <= 1
    for name in ("distilled_terms.png", "forecast.png"):
        assert (run / "plots" / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["distill"]["discovered"] == metrics["distill"]["discovered"]
    twin = load_twin(run / "twin.json")
    assert set(twin.discovered) == {"x", "y"}
    assert "$$" in (run / "equations.md").read_text()

    # again from the run directory, with other settings
    again = distill_main(
        [
            str(run),
            "distill.distiller.selector.criterion=aicc",
            "distill.distiller.selector.max_candidates=1",
            "distill.distiller.selector.prune=false",
            "distill.distiller.selector.grow=false",
            "distill.distiller.selector.rescreen=false",
            "distill.distiller.bootstrap=null",
            "distill.forecast_interval=null",
        ]
    )
    assert len(again["path"]) == 1 and "inclusion_probability" not in again
    assert "forecast_interval" not in again
    assert json.loads((run / "metrics.json").read_text())["distill"]["path"] == again["path"]


def test_distill_none_turns_it_off(make_cfg, tmp_path):
    metrics = train.train(make_cfg("distill=none", *QUICK[:4]))
    assert "distill" not in metrics
    assert not (tmp_path / "run" / "twin.json").exists()


def test_distill_cli_errors_name_the_file(tmp_path):
    with pytest.raises(UdeError, match="config.yaml: not found"):
        distill_main([str(tmp_path)])
    with pytest.raises(UdeError, match="usage"):
        distill_main([])


def test_twin_sbml_of_a_run_simulates_like_its_twin_json(make_cfg, tmp_path):
    roadrunner = pytest.importorskip("roadrunner")
    run = tmp_path / "run"
    train.train(make_cfg(*QUICK))
    twin = load_twin(run / "twin.json")
    rr = roadrunner.RoadRunner(str(run / "twin.sbml"))
    rr.integrator.relative_tolerance = 1e-10
    rr.integrator.absolute_tolerance = 1e-12
    ids = list(rr.model.getFloatingSpeciesIds())
    start = dict(zip(ids, rr.model.getFloatingSpeciesConcentrations(), strict=True))
    rr.timeCourseSelections = ["time", *twin.states]
    result = np.asarray(rr.simulate(0.0, 3.0, 31))
    initial = np.array([[start[s] for s in twin.states]])
    ours = simulate_spec(twin, initial, result[:, 0])[0]
    rel = np.abs(result[:, 1:] - ours) / np.maximum(np.abs(ours), 1e-3 * np.abs(ours).max())
    assert rel.max() < 1e-4


def test_a_csv_table_trains_and_distils_through_the_command(make_cfg, tmp_path):
    from ude import simulate_measurements
    from ude.data.tables import write_long

    m = simulate_measurements("lotka_volterra", replicates=2, seed=1)
    m.sigma = np.full_like(m.values, 0.05)
    path = write_long(m, tmp_path / "long.csv")
    run = tmp_path / "run"
    cfg = make_cfg("data=csv", f"data.path={path}", "model.spec=lotka_volterra", *QUICK)
    metrics = train.train(cfg)
    twin = load_twin(run / "twin.json")
    assert set(twin.discovered) == {"x", "y"}
    assert (
        metrics["distill"]["discovered"]
        == json.loads((run / "twin.json").read_text())["discovered"]
    )


@pytest.mark.parametrize(
    "hold_out, initial",
    [
        ("data.val_after=2.0", None),  # the last third of the time span
        ("data.val_conditions=[c1]", [[0.44249296, 4.6280594], [1.0, 2.0]]),  # a condition
    ],
)
def test_held_out_values_change_neither_the_twin_nor_its_coefficients(
    make_cfg, tmp_path, hold_out, initial
):
    """The held-out entries are the twin's test: tripling them must leave training and
    distillation (screen, refits, bootstrap) exactly as they were, and move only the twin's
    held-out error, which must be reported."""
    from ude import simulate_measurements
    from ude.data.tables import write_long

    m = simulate_measurements("lotka_volterra", initial=initial, seed=2)
    changed = copy.deepcopy(m)
    if initial is None:
        changed.values[:, m.times > 2.0] *= 3
    else:
        changed.values[1] *= 3
    runs = {}
    for name, data in (("as_is", m), ("tripled", changed)):
        path = write_long(data, tmp_path / f"{name}.csv")
        cfg = make_cfg(
            "data=csv",
            f"data.path={path}",
            "model.spec=lotka_volterra",
            hold_out,
            *QUICK,
            "distill.forecast_interval=null",
            run_dir=tmp_path / name,
        )
        train.train(cfg)
        runs[name] = json.loads((tmp_path / name / "distill.json").read_text())
    a, b = runs["as_is"], runs["tripled"]
    assert a["discovered"] == b["discovered"]  # terms and coefficients (6 digits)
    assert [r["terms"] for r in a["path"]] == [r["terms"] for r in b["path"]]
    assert [r["trajectory_nmse"] for r in a["path"]] == [r["trajectory_nmse"] for r in b["path"]]
    assert a["inclusion_probability"] == b["inclusion_probability"]
    # the held-out error is reported, and it sees the tripled values
    assert a["held_out"]["n_points"] == b["held_out"]["n_points"] > 0
    assert b["held_out"]["nmse"] > 10 * a["held_out"]["nmse"]
