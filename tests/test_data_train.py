"""Own tables through the Hydra entry point: the three data shapes train, bad files exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

import train
from ude import UdeError, simulate_measurements
from ude.data import write_long
from ude.errors import one_line

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _check_run(run: Path, metrics: dict) -> None:
    assert metrics["stop_reason"] is None
    saved = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(saved["train_nmse"])
    assert (run / "plots" / "fit.png").is_file()


def test_wide_one_condition_lynx_hare(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=lynx_hare",
        f"data.path={DATA / 'lynx_hare.csv'}",
        f"model.spec={DATA / 'lynx_hare.yaml'}",
        *FAST,
    )
    metrics = train.train(cfg)
    _check_run(tmp_path / "run", metrics)
    # years after 1916 are held out: 4 years x 2 species
    assert metrics["forecast"]["n_points"] == 8 and metrics["forecast"]["after_time"] == 1916
    assert set(metrics["fit_nrmse"]) == {"hare", "lynx"}


def test_wide_with_conditions_table_dose_response(make_cfg, tmp_path):
    d = DATA / "dose_response"
    cfg = make_cfg(
        "experiment=dose_response",
        f"data.path={d / 'measurements.csv'}",
        f"data.conditions={d / 'conditions.csv'}",
        f"model.spec={d / 'model.yaml'}",
        "data.val_conditions=[dose_3]",
        # the tables' wiring is tested, not the fit: a short warm start (its latent drug
        # level's gradient matching took 40 of the test's 42 s)
        "optim.warm_start_steps=100",
        "optim.warm_start_cycles=1",
        *FAST,
    )
    metrics = train.train(cfg)
    _check_run(tmp_path / "run", metrics)
    assert list(metrics["forecast"]["by_condition"]) == ["dose_3"]
    assert metrics["forecast"]["n_points"] == 13  # dose_3's samples


def test_long_with_sigma(make_cfg, tmp_path):
    m = simulate_measurements("lotka_volterra", replicates=2)
    m.sigma = np.full_like(m.values, 0.05)
    m.values[0, 5:9, 0, 0] = np.nan
    path = write_long(m, tmp_path / "long.csv")
    cfg = make_cfg("data=csv", f"data.path={path}", "model.spec=lotka_volterra", *FAST)
    metrics = train.train(cfg)
    _check_run(tmp_path / "run", metrics)
    assert "forecast" not in metrics


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = [sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={tmp_path}/run"]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _check_refused(tmp_path: Path, rc: int, stderr: str, path: Path, expected: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last and expected in last, last
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_bad_file_exits_2_from_the_command_line(tmp_path):
    """The real command in a fresh process (the other cases run in-process: same code path,
    without paying the imports again)."""
    path = tmp_path / "data.csv"
    path.write_text("time,x,y\n0,1,2\n1,two,3\n")
    out = _cli(tmp_path, "data=csv", f"data.path={path}", "model.spec=lotka_volterra")
    _check_refused(
        tmp_path, out.returncode, out.stderr, path, "line 3, column 'x': expected a number"
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        ("time,x,lynx\n0,1,2\n", "column 'lynx': 'lynx' matches no state or observable"),
        ("time,x,y\n0,1,2\n1,3\n", "line 3: has 2 cells, the header has 3"),
        ("", "the file is empty"),
        ("t,x,y\n0,1,2\n", "no 'time' column"),
        ("time,x,y\n0,1,\n1,2,\n", "observable 'y' has no values"),
        ("time,x,y\n1,1,2\n-1,2,3\n", "negative time -1"),
        (None, "file not found"),
    ],
)
def test_bad_file_is_refused_before_training(make_cfg, tmp_path, content, expected):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    cfg = make_cfg("data=csv", f"data.path={path}", "model.spec=lotka_volterra", *FAST)
    with pytest.raises(Exception) as err:  # Hydra wraps the UdeError raised while reading
        train.train(cfg)
    assert isinstance(err.value, UdeError) or isinstance(err.value.__cause__, UdeError)
    line = "error: " + one_line(err.value)  # what cli() prints before exiting 2
    _check_refused(tmp_path, 2, line, path, expected)


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            "condition,time,state,amount\ndose_1,1,X,5\n",
            "line 2, column 'state': 'X' is not a state",
        ),
        ("condition,time,state,amount\ndose_1,-2,D,5\n", "line 2, column 'time': negative time -2"),
        ("condition,time,state,amount\ndose_1,30,D,5\n", "after the horizon of condition 'dose_1'"),
        ("condition,time,state,amount\nplacebo,1,D,5\n", "condition 'placebo' is not in the data"),
    ],
)
def test_bad_dosing_table_is_refused_before_training(make_cfg, tmp_path, content, expected):
    """A dosing table's bad row stops the run before training, as a bad data file does."""
    d = DATA / "dose_response"
    path = tmp_path / "doses.csv"
    path.write_text(content)
    cfg = make_cfg(
        "experiment=dose_response",
        f"data.path={d / 'measurements.csv'}",
        f"data.conditions={d / 'conditions.csv'}",
        f"model.spec={d / 'model.yaml'}",
        f"data.doses={path}",
        *FAST,
    )
    with pytest.raises(Exception) as err:  # Hydra wraps the UdeError raised while reading
        train.train(cfg)
    assert isinstance(err.value, UdeError) or isinstance(err.value.__cause__, UdeError)
    _check_refused(tmp_path, 2, "error: " + one_line(err.value), path, expected)


def test_a_time_without_samples_has_no_mean_and_no_warning():
    """A condition with a missing sample (the dose-response example's) has NaN at that time,
    and training prints no numpy warning for it."""
    import warnings

    from ude.fit import measured_states

    m = simulate_measurements("lotka_volterra", noise=0.0, n_times=11)
    m.values[0, 3, :, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = measured_states(m, ["x", "y"])
    assert np.isnan(means[0, 3, 0]) and np.isfinite(means[0, 3, 1])
