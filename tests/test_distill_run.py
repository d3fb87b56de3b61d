"""Distillation inside a train.py run and again from a finished run directory."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from omegaconf import OmegaConf

import train
from tests.conftest import FAST
from ude.distill import load_twin
from ude.distill.cli import load_run, new_distill_dir, summary
from ude.distill.cli import main as distill_main
from ude.distill.report import STATUSES
from ude.distill.selection import REWRITES
from ude.errors import UdeError
from ude.progress import ConsoleProgress
from ude.spec.simulate import simulate_spec

ROOT = Path(__file__).resolve().parents[1]

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
    "distill.uq.enabled=true",  # the horseshoe and the structure mixture (the default), cheap
    "distill.uq.regression.num_samples=20",
    "distill.uq.regression.warmup=20",
    "distill.uq.regression.chains=2",
    "distill.uq.mixture.n_samples=40",
    "distill.uq.bootstrap.n_resamples=5",
    "distill.uq.bootstrap.max_refits=1",
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
    for name in ("twin.json", "equations.md", "distill.json", "twin.sbml"):
        assert (run / name).is_file(), name
    for name in ("distilled_terms.png", "forecast.png"):
        assert (run / "plots" / name).is_file(), name
    report = json.loads((run / "distill.json").read_text())
    _assert_consistent(report)
    band = report["forecast_interval"]
    assert band["n_samples"] == 30 and band["level"] == 0.95
    # the uncertainty of ude.uq: the horseshoe per target with its diagnostics, the
    # structure-averaged band, the twin's coefficients with intervals in every file
    uq = report["uq"]
    assert set(uq["targets"]) == {"x", "y"}
    for entry in uq["targets"].values():
        assert entry["max_rhat"] > 0 and entry["min_ess"] > 0 and entry["n_draws"] == 40
    predictive = report["predictive_band"]
    assert predictive["n_samples"] == 40 and predictive["structures"]
    assert abs(sum(s["weight"] for s in predictive["structures"]) - 1) < 1e-3
    assert "coverage_of_truth" in predictive
    # the structure bootstrap: resamples of the data through the screen and the selection
    resampled = report["structure_bootstrap"]
    assert resampled["n_resamples"] == 5 and resampled["unit"] == "times"
    assert resampled["refits_added"] <= 1 and resampled["structures"]
    assert abs(sum(s["bootstrap_share"] for s in resampled["structures"]) - 1) < 1e-3
    chosen = report["inclusion_probability"]  # every term's share of the resamples
    assert all(p in {k / 5 for k in range(6)} for ps in chosen.values() for p in ps.values())
    weights = json.loads((run / "twin.json").read_text())["model_weights"]
    assert all("bootstrap_share" in w and "bootstrap_weight" in w for w in weights)
    intervals = json.loads((run / "twin.json").read_text())["credible_intervals"]
    assert intervals and all(lo <= hi for lo, hi in intervals.values())
    assert "credible intervals" in (run / "equations.md").read_text()
    # every term of the weighted structures, its interval averaged over them: the twin's own
    # terms among them, each weight that of the structures holding it
    averaged = report["term_intervals"]
    assert set(averaged) <= {"x", "y"} and all(averaged.values())
    kept = {s["discovered"] for s in predictive["structures"]}
    for terms in averaged.values():
        for e in terms.values():
            assert 0 < e["weight"] <= 1 + 1e-6 and 1 <= e["structures"] <= len(kept)
            lo, hi = e["interval"]
            assert lo <= e["value"] <= hi or e["weight"] < 1 - 1e-6
    assert sum(len(t) for t in averaged.values()) >= len(intervals)
    assert json.loads((run / "twin.json").read_text())["term_intervals"].keys() == averaged.keys()
    assert "averaged over them" in (run / "equations.md").read_text()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["distill"]["discovered"] == metrics["distill"]["discovered"]
    # every stage was shown on the terminal's live line, and its duration kept
    shown = screen.getvalue()
    selector = make_cfg().distill.distiller.selector  # the refits count up to the budget
    refits = f"refits  1/{max(selector.max_refits, selector.max_candidates)}"
    for line in ("warm start  500/500", "epochs  3/3", "screen", refits, "final refit",
                 "bootstrap", "band", "plots", "petab export"):  # fmt: skip
        assert line in shown, line
    stages = {"warm_start", "epochs", "screen", "refits", "final_refit", "bootstrap", "band",
              "plots", "petab_export"}  # fmt: skip
    assert {f"{s}_seconds" for s in stages} <= set(saved["timings"]), saved["timings"]
    # twin.json is the twin the report describes
    twin = load_twin(run / "twin.json")
    for state, expr in report["discovered"].items():
        assert sp.simplify(twin.discovered[sp.Symbol(state).name] - sp.sympify(expr)) == 0
    assert "$$" in (run / "equations.md").read_text()

    # again from the run directory, with other settings: into a folder of its own
    first = {name: (run / name).read_bytes() for name in ("twin.json", "metrics.json")}
    overrides = [
        "distill.distiller.selector.criterion=aicc",
        "distill.distiller.selector.max_candidates=1",
        "distill.distiller.selector.prune=false",
        "distill.distiller.selector.grow=false",
        "distill.distiller.selector.rescreen=false",
        "distill.distiller.selector.swaps=0",
        "distill.distiller.selector.siblings=0",
        "distill.distiller.bootstrap=null",
        "distill.forecast_interval=null",
        "distill.uq=none",
    ]
    again = distill_main([str(run), *overrides, "--name", "aicc"])
    # one candidate of the path refitted and admitted; a refused one (it would drive a state
    # below zero: ude.distill.admissible) counts as failed, and the next is refitted in its
    # place. No moves but the rewrites of what it found (a constant to its limit, a term in
    # its short form: the same fit with fewer constants), which stay on
    admitted = [r for r in again["path"] if r["refused"] is None]
    assert [r["step"] for r in admitted if r["step"] == "path"] == ["path"]
    assert {r["step"] for r in admitted} <= {"path", *REWRITES}, again["path"]
    assert sum(r["chosen"] for r in admitted) == 1 and "inclusion_probability" not in again
    assert all(not r["solved"] for r in again["path"] if r["refused"] is not None)
    assert "forecast_interval" not in again
    assert "uq" not in again and "predictive_band" not in again  # distill.uq=none: off
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


def _assert_consistent(report: dict) -> None:
    """distill.json tells the truth about itself: a status with its failures, a band's
    coverage only when the band is usable, an inclusion table with the twin's own terms."""
    failed = {f["status"] for f in report["failures"]}
    assert report["status"] in STATUSES
    assert (report["status"] == "ok") == (not failed) and (not failed or report["status"] in failed)
    band = report.get("forecast_interval")
    if band is not None:
        # usable: bounded at the start (failed draws count outside it, never dropped)
        usable = "error" not in band and "bounded_share" in band
        assert usable == ("band_failed" not in failed)
        assert usable or "error" in band or band["n_failed"] > 0
        assert ("coverage_of_truth" in band) == usable
    nmse = report.get("forecast_nmse", {})
    assert all(np.isfinite(v) for v in nmse.values()) == ("forecast_failed" not in failed)
    line = summary(report)
    assert ("FAILED" in line) == bool(failed), line
    chosen = next(r for r in report["path"] if r["chosen"])
    assert chosen["solved"]
    for target, terms in report.get("inclusion_probability", {}).items():
        # "+0.8*x*y -0.1*x": the twin's terms of this target, without their coefficients
        used = re.findall(r"(?:^| )[+-][0-9.e+-]+\*(\S+)", chosen["terms"][target])
        assert used and set(used) <= set(terms), (used, terms)


def test_distill_none_turns_it_off(make_cfg, tmp_path):
    """Also where keys are added under distill, as experiment=virtual_population does (it
    used to stop with a traceback); python -m ude.distill later distils with the defaults
    and those keys."""
    metrics = train.train(make_cfg("distill=none", "+distill.distiller.tie=3.0", *QUICK[:4]))
    assert "distill" not in metrics
    assert not (tmp_path / "run" / "twin.json").exists()
    cfg, *_ = load_run(tmp_path / "run", [])
    assert cfg.distill.distiller.tie == 3.0 and "enabled" not in cfg.distill
    assert cfg.distill.distiller._target_ == "ude.distill.Distiller"


def test_distill_cli_errors_name_the_file(tmp_path):
    with pytest.raises(UdeError, match="config.yaml: not found"):
        distill_main([str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        distill_main([])
    assert exit_.value.code == 2


@pytest.mark.slow  # a run, its distillation and a roadrunner solve: half a minute
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


def test_a_run_with_relative_paths_is_distilled_again_from_another_directory(
    make_cfg, tmp_path, monkeypatch, capsys
):
    """``python -m ude.distill RUN`` rebuilds the run from its config, whose relative paths
    start where ``python train.py`` ran (Hydra records it in ``<run>/.hydra/hydra.yaml``)."""
    from ude import simulate_measurements
    from ude.data.tables import write_long
    from ude.distill.cli import load_run
    from ude.errors import exit_2_on_user_errors

    project = tmp_path / "project"
    write_long(simulate_measurements("lotka_volterra", seed=1), project / "long.csv")
    monkeypatch.chdir(project)
    run = tmp_path / "run"
    train.train(make_cfg("data=csv", "data.path=long.csv", "model.spec=lotka_volterra", *FAST))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # no record of where it ran: from here, and the data are not here
    with pytest.raises(SystemExit) as stopped, exit_2_on_user_errors():
        load_run(run, [])
    assert stopped.value.code == 2 and "long.csv: file not found" in capsys.readouterr().err
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {project}\n")
    _, _, measurements, _ = load_run(run, [])
    assert measurements.n_conditions == 1 and Path.cwd() == elsewhere


@pytest.mark.parametrize(
    "hold_out, initial",
    [
        ("data.val_after=2.0", None),  # the last third of the time span
        pytest.param(  # a condition (slow: two conditions to train and distil)
            "data.val_conditions=[c1]",
            [[0.44249296, 4.6280594], [1.0, 2.0]],
            marks=pytest.mark.slow,
        ),
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


class _Interaction(torch.nn.Module):
    """The true missing terms of Lotka-Volterra, in place of a trained network."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = z[..., 0], z[..., 1]
        return torch.stack([-0.9 * x * y, 0.8 * x * y], dim=-1)


def test_an_exact_network_gives_a_twin_whose_report_holds_its_numbers(make_cfg, tmp_path):
    """With the true interaction in place of the network and 0.5 % noise, the twin is the
    truth: status ok, its terms certain, every band draw solved, and its error on the held-out
    last third of the data at the noise level."""
    from ude import Solver, build_hybrid, simulate_measurements
    from ude.data.splits import make_split
    from ude.distill.cli import run_distill

    m = simulate_measurements("lotka_volterra", noise=0.005, seed=1)
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid("lotka_volterra", m, Solver())
    finally:
        torch.set_default_dtype(torch.float32)
    model.networks[0] = _Interaction()
    with torch.no_grad():
        model.initial.copy_(torch.as_tensor(m.truth.initial))
    cfg = make_cfg(*QUICK[4:], "distill.forecast_interval.n_samples=50")
    report = run_distill(cfg.distill, model, m, tmp_path, make_split(m, val_after=2.0))
    _assert_consistent(report)
    assert report["status"] == "ok" and report["truth"]["exact"], report["discovered"]
    assert report["forecast_interval"]["n_failed"] == 0
    # the true terms win every resample: BIC prefers them by far at 0.5 % noise
    assert report["inclusion_probability"] == {"x": {"x*y": 1.0}, "y": {"x*y": 1.0}}
    # held out: 10 times x 2 observables. The noise alone gives an NMSE of (0.005 * mean /
    # RMS)^2 ~ 1e-5; a twin with a wrong or missing term is off by 1e-2 or more
    held = report["held_out"]
    assert held["n_points"] == 20 and held["after_time"] == 2.0
    train = m.values[:, m.times <= 2.0]
    sd = 0.005 * np.abs(m.values).mean(axis=(1, 2))  # the noise's standard deviation
    noise_nmse = float(np.mean(sd**2 / np.mean(train**2, axis=(0, 1, 2))))
    assert held["nmse"] < 10 * noise_nmse, (held["nmse"], noise_nmse)


def test_no_solvable_twin_is_a_failure_the_run_says_and_exits_2(tmp_path, monkeypatch):
    """When no candidate's refit can be solved there is no twin: distill.json says why, no
    twin file is left (an earlier one would read as this run's), the summary says FAILED and
    `python train.py` exits 2 with one line, after writing the trained UDE's results."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "twin.json").write_text("{}")  # left by an earlier distillation of this run
    # train.py as a user runs it, with every refit failing as a diverging twin's would
    code = (
        "import runpy, sys, numpy as np\n"
        "from ude.distill.refit import RefitResult, TwinRefit\n"
        "TwinRefit.fit = lambda self, twin, m, *a, **k: RefitResult(\n"
        "    None, {}, np.inf, int(np.isfinite(m.values).sum()), False, 0)\n"
        "sys.argv = ['train.py', *sys.argv[1:]]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    overrides = [f"hydra.run.dir={run}", *QUICK, "distill.forecast_interval=null"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *overrides],
        cwd=ROOT,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    report = json.loads((run / "distill.json").read_text())
    assert report["status"] == "twin_unsolvable" and report["discovered"] == {}
    assert report["path"] and not any(r["solved"] or r["chosen"] for r in report["path"])
    assert not (run / "twin.json").exists() and not (run / "equations.md").exists()
    assert "distillation FAILED (status twin_unsolvable)" in proc.stdout
    assert "distilled in" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "could be integrated" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert json.loads((run / "metrics.json").read_text())["distill"]["status"] == "twin_unsolvable"
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the trained UDE is kept
    # python -m ude.distill on the run says the same (its CLI prints it and exits 2)
    from ude.distill.refit import RefitResult, TwinRefit

    def unsolvable(self, twin, m, *args, **kwargs):
        return RefitResult(None, {}, np.inf, int(np.isfinite(m.values).sum()), False, 0)

    monkeypatch.setattr(TwinRefit, "fit", unsolvable)
    with pytest.raises(UdeError, match="none of the .* candidate twins could be integrated"):
        distill_main([str(run), "distill.forecast_interval=null"])
