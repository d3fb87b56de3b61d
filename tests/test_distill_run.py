"""Distillation inside a train.py run and again from a finished run directory."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

import train
from ude.distill import load_twin
from ude.distill.cli import main as distill_main
from ude.distill.cli import new_distill_dir
from ude.errors import UdeError
from ude.progress import ConsoleProgress
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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_train_distils_and_run_can_be_distilled_again(make_cfg, tmp_path, caplog):
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ude.progress")  # as hydra/job_logging=ude sets it
    screen = _Terminal()
    # '++': the key may or may not be in conf/distill (absent: LaplaceInterval's defaults)
    metrics = train.train(
        make_cfg(*QUICK, "++distill.forecast_interval.n_samples=30"),
        progress=ConsoleProgress(screen, every=0.0),
    )
    for name in ("twin.json", "equations.md", "distill.json"):
        assert (run / name).is_file(), name
    band = json.loads((run / "distill.json").read_text())["forecast_interval"]
    assert band["n_samples"] == 30 and band["level"] == 0.95
    assert 0 <= band["n_failed"] <= 30 and 0 <= band["coverage_of_truth"] <= 1
    for name in ("distilled_terms.png", "forecast.png"):
        assert (run / "plots" / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["distill"]["discovered"] == metrics["distill"]["discovered"]
    # every stage was shown on the terminal's live line, and its duration kept
    shown = screen.getvalue()
    for line in ("warm start  500/500", "epochs  3/3", "screen", "refits  1/10", "final refit",
                 "bootstrap", "band", "plots", "petab export"):  # fmt: skip
        assert line in shown, line
    stages = {"warm_start", "epochs", "screen", "refits", "final_refit", "bootstrap", "band",
              "plots", "petab_export"}  # fmt: skip
    assert {f"{s}_seconds" for s in stages} <= set(saved["timings"]), saved["timings"]
    twin = load_twin(run / "twin.json")
    assert set(twin.discovered) == {"x", "y"}
    assert "$$" in (run / "equations.md").read_text()

    # again from the run directory, with other settings: into a folder of its own
    first = {name: (run / name).read_bytes() for name in ("twin.json", "metrics.json")}
    overrides = [
        "distill.distiller.selector.criterion=aicc",
        "distill.distiller.selector.max_candidates=1",
        "distill.distiller.selector.prune=false",
        "distill.distiller.selector.grow=false",
        "distill.distiller.selector.rescreen=false",
        "distill.distiller.bootstrap=null",
        "distill.forecast_interval=null",
    ]
    again = distill_main([str(run), *overrides, "--name", "aicc"])
    assert len(again["path"]) == 1 and "inclusion_probability" not in again
    assert "forecast_interval" not in again
    out = run / "distill" / "aicc"
    assert json.loads((out / "distill.json").read_text())["path"] == again["path"]
    for name in ("twin.json", "equations.md", "twin.sbml", "plots/forecast.png"):
        assert (out / name).is_file(), name
    # its settings are recorded; the first twin and the run's metrics are untouched
    used = OmegaConf.load(out / "config.yaml")
    assert used.distill.distiller.selector.criterion == "aicc"
    assert used.distill.distiller.bootstrap is None
    assert {name: (run / name).read_bytes() for name in first} == first

    # without --name: a new folder named by the date and time, even within one second
    stamped = new_distill_dir(run, None)
    stamped.mkdir()
    assert new_distill_dir(run, None) not in {stamped, out}
    with pytest.raises(UdeError, match="aicc: exists"):
        distill_main([str(run), *overrides, "--name", "aicc"])


def test_distill_none_turns_it_off(make_cfg, tmp_path):
    metrics = train.train(make_cfg("distill=none", *QUICK[:4]))
    assert "distill" not in metrics
    assert not (tmp_path / "run" / "twin.json").exists()


def test_distill_cli_errors_name_the_file(tmp_path):
    with pytest.raises(UdeError, match="config.yaml: not found"):
        distill_main([str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        distill_main([])
    assert exit_.value.code == 2


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
