"""Training behaviour: the loss falls, a killed run resumes exactly, divergence is caught."""

import csv
import json
import math
import time

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from tests.conftest import FAST
from ude.train import job as train


def test_short_training_lowers_trajectory_loss_tenfold(make_cfg):
    metrics = train.train(
        make_cfg("trainer.max_epochs=40", "optim.warm_start_steps=0", "optim.lr=0.01", *FAST[1:])
    )
    # The initial network contributes almost nothing, so the first loss is that of the known
    # terms alone; 40 Adam steps must take it at least 10x lower.
    assert metrics["mse_reduction"] >= 10, metrics


class _Kill(pl.Callback):
    """Raises at the start of an epoch, like a process killed between checkpoints."""

    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at_epoch:
            raise RuntimeError("killed")


def _with_callback(callback: pl.Callback):
    """Hydra's instantiate, with ``callback`` added to the Trainer train.py builds."""

    def instantiate_with(cfg, *a, **kw):
        obj = instantiate(cfg, *a, **kw)
        if kw.get("_partial_") and getattr(obj, "func", None) is pl.Trainer:
            return lambda **k: pl.Trainer(
                **{**obj.keywords, **k, "callbacks": [*k["callbacks"], callback]}
            )
        return obj

    return instantiate_with


def _fails_once_at(epoch: int, failed: list[int]):
    """UDEModule.local_losses whose solve fails once, in the training step of ``epoch``
    (noted in ``failed``)."""
    from ude.model.solver import SolverFailed
    from ude.train import module

    local_losses = module.UDEModule.local_losses

    def fails_once(self, batch, shooting=False):
        if self.training and self.current_epoch == epoch and not failed:
            failed.append(epoch)
            raise SolverFailed("the test's solver could not integrate past t=1")
        return local_losses(self, batch, shooting)

    return fails_once


def _final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"], ckpt["epoch"]


def _log(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


_CSV = [a for a in FAST[1:] if a != "logger=none"] + ["logger=csv"]
# trajectory fitting from untrained networks: the normalised MSE starts at ~75 and each
# cycle of 4 epochs at a rate of 1e-2 lowers it by a fifth or more, still far above
# optim.unexplained after three (~1.8)
_NOT_TAKEN_HOLD = ["trainer.max_epochs=4", "optim.warm_start_steps=0", "optim.lr=1e-2"]


def test_a_fit_that_has_not_taken_hold_runs_more_cycles_with_the_rate_restarted(make_cfg, tmp_path):
    metrics = train.train(make_cfg(*_NOT_TAKEN_HOLD, "optim.fit_cycles=3", *_CSV))
    assert metrics["fit_cycles"] == 3 and metrics["epochs"] == 12
    assert metrics["train_nmse"] > 1  # why the cycles ran
    rows = [r for r in _log(tmp_path / "run") if r["lr"]]
    lr = {int(r["epoch"]): float(r["lr"]) for r in rows}
    for start in (4, 8):  # each cycle restarts the cosine decay from the full rate
        assert lr[start] == pytest.approx(1e-2) and lr[start - 1] < 0.9e-2


# at a rate of 1e-4 the fit from untrained networks barely moves (~0.4 % a cycle)
_STALLED = [a if a != "optim.lr=1e-2" else "optim.lr=1e-4" for a in _NOT_TAKEN_HOLD]


def test_a_fit_that_has_stopped_falling_runs_one_cycle(make_cfg):
    """Far from the data, but another cycle of the same would not take it there."""
    metrics = train.train(
        make_cfg(*_STALLED, "optim.fit_cycles=3", "optim.rescue_segments=0", *FAST[1:])
    )
    assert metrics["train_nmse"] > 10 and metrics["epochs"] == 4 and "fit_cycles" not in metrics


def test_a_fit_stalled_far_from_the_data_runs_its_next_cycle_with_multiple_shooting(
    make_cfg, tmp_path
):
    """The default rescue: the stalled cycle is followed by one whose pieces start from nodes
    on the data, so its first epoch already fits far better than the stalled cycle's last."""
    metrics = train.train(make_cfg(*_STALLED, "optim.fit_cycles=2", *_CSV))
    assert metrics["fit_cycles"] == 2 and metrics["epochs"] == 8
    assert metrics["rescue_segments"] == 5
    mse = {int(r["epoch"]): float(r["train/mse"]) for r in _log(tmp_path / "run") if r["train/mse"]}
    assert mse[3] > 10 and mse[4] < 0.2 * mse[3], mse


def test_a_fit_that_takes_hold_runs_exactly_max_epochs(make_cfg):
    metrics = train.train(make_cfg("trainer.max_epochs=4", *FAST[1:]))  # warm-started
    assert metrics["train_nmse"] < 0.1  # the default optim.unexplained
    assert metrics["epochs"] == 4 and "fit_cycles" not in metrics


@pytest.mark.parametrize(
    "args, kill_at",
    [
        (["trainer.max_epochs=8"], 5),
        # killed in the second of three cycles: the resumed run knows it is there
        ([*_NOT_TAKEN_HOLD, "optim.fit_cycles=3"], 6),
        # killed in the rescue cycle: the nodes, their optimiser state and the shooting resume
        ([*_STALLED, "optim.fit_cycles=2"], 6),
    ],
    ids=["one cycle", "across cycles", "in a rescue cycle"],
)
def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(
    make_cfg, tmp_path, monkeypatch, args, kill_at
):
    args = [*args, *_CSV]
    train.train(make_cfg(*args, run_dir=tmp_path / "whole"))

    killed = tmp_path / "killed"
    monkeypatch.setattr(train, "instantiate", _with_callback(_Kill(kill_at)))
    with pytest.raises(RuntimeError, match="killed"):
        train.train(make_cfg(*args, run_dir=killed))
    monkeypatch.setattr(train, "instantiate", instantiate)
    assert _final_state(killed)[1] == kill_at - 1  # the last finished epoch before the kill

    train.train(
        make_cfg(*args, f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}", run_dir=killed)
    )
    whole, epoch_whole = _final_state(tmp_path / "whole")
    resumed, epoch_resumed = _final_state(killed)
    assert epoch_whole == epoch_resumed
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-12, atol=1e-12)
    # the resumed run's log holds every epoch, as the uninterrupted one's does
    logged, expected = _log(killed), _log(tmp_path / "whole")
    assert [(r["epoch"], r["step"]) for r in logged] == [(r["epoch"], r["step"]) for r in expected]
    for got, want in zip(logged, expected, strict=True):
        for key in ("train/mse", "val/mse"):
            if want[key]:
                assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-9), key


def test_a_failed_step_is_undone_and_training_goes_on_at_half_the_rate(
    make_cfg, tmp_path, monkeypatch, caplog
):
    """The solver gives up once, at epoch 2: that step is undone, Adam's rate is halved from
    there on, and training runs all its epochs from the parameters before the failure."""
    from ude.train import module

    args = ["trainer.max_epochs=6", "optim.warm_start_steps=0", "optim.fit_cycles=1", *_CSV]
    reference = train.train(make_cfg(*args, run_dir=tmp_path / "reference"))
    failed: list[int] = []
    monkeypatch.setattr(module.UDEModule, "local_losses", _fails_once_at(2, failed))
    with caplog.at_level("INFO"):
        metrics = train.train(make_cfg(*args))
    assert failed and metrics["stop_reason"] is None and metrics["epochs"] == 6
    assert metrics["step_backs"] == 1 and "epoch 2: the test's solver" in caplog.text
    assert "step_backs" not in reference
    lr = {int(r["epoch"]): float(r["lr"]) for r in _log(tmp_path / "run") if r["lr"]}
    want = {int(r["epoch"]): float(r["lr"]) for r in _log(tmp_path / "reference") if r["lr"]}
    assert 2 not in lr  # the undone step logs nothing
    assert [lr[e] for e in (0, 1)] == [want[e] for e in (0, 1)]
    assert [lr[e] for e in (3, 4, 5)] == pytest.approx([want[e] / 2 for e in (3, 4, 5)])


def test_a_run_whose_steps_keep_failing_stops_after_its_step_backs(make_cfg, monkeypatch):
    from ude.model.solver import SolverFailed
    from ude.train import module

    local_losses = module.UDEModule.local_losses

    def always_fails(self, batch, shooting=False):
        if not self.training:
            return local_losses(self, batch, shooting)
        raise SolverFailed("the test's solver could not integrate past t=1")

    monkeypatch.setattr(module.UDEModule, "local_losses", always_fails)
    metrics = train.train(
        make_cfg(
            "trainer.max_epochs=8", "optim.warm_start_steps=0", "optim.step_backs=2", *FAST[1:]
        )
    )
    assert metrics["step_backs"] == 2
    assert metrics["stop_reason"].startswith("training stopped at epoch 2: the test's solver")


class _Rates(pl.Callback):
    """Every Adam group's learning rate at the start of each epoch."""

    def __init__(self):
        self.rates: dict[int, list[float]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        groups = trainer.optimizers[0].param_groups
        self.rates[trainer.current_epoch] = [g["lr"] for g in groups]


def test_a_rescue_cycle_after_a_step_back_runs_its_nodes_at_the_halved_rate(make_cfg, monkeypatch):
    """A step undone in the stalled cycle halves every rate, and the rescue cycle's shooting
    nodes, added after it, start at the halved rate too, not at optim.lr."""
    from ude.train import module

    rates = _Rates()
    monkeypatch.setattr(module.UDEModule, "local_losses", _fails_once_at(1, []))
    monkeypatch.setattr(train, "instantiate", _with_callback(rates))
    metrics = train.train(make_cfg(*_STALLED, "optim.fit_cycles=2", *FAST[1:]))
    assert metrics["step_backs"] == 1 and metrics["rescue_segments"] == 5
    rescue = rates.rates[4]  # the second cycle's first epoch: restarted, with the nodes
    assert len(rescue) == len(rates.rates[0]) + 1
    assert rescue == pytest.approx([1e-4 / 2] * len(rescue))


class _RuinLastStep(pl.Callback):
    """After the last epoch's step, 0.5 added to every network weight: a step that throws the
    fit far from the data, as one can on a stiff oscillator."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.model.networks.parameters():
                    p.add_(0.5)


def test_a_run_whose_last_step_fits_worse_ends_on_its_best_parameters(
    make_cfg, tmp_path, monkeypatch, caplog
):
    """The last step ruins the fit: the run reports, distils and checkpoints the parameters
    its last step started from, the best it saw, and says so; a run whose last step is its
    best keeps it."""
    # from untrained networks, one cycle: the fit improves every step
    args = [*_NOT_TAKEN_HOLD, "optim.fit_cycles=1", *_CSV]
    kept = train.train(make_cfg(*args, run_dir=tmp_path / "kept"))
    assert "ended_on_best" not in kept
    monkeypatch.setattr(train, "instantiate", _with_callback(_RuinLastStep()))
    with caplog.at_level("INFO"):
        metrics = train.train(make_cfg(*args))
    best = metrics["ended_on_best"]
    assert best["epoch"] == 3 and best["last_mse"] > best["mse"]
    assert "training ended on the parameters epoch 3 started from" in caplog.text
    # the reported fit is that of the last step's start, as logged
    mse = {int(r["epoch"]): float(r["train/mse"]) for r in _log(tmp_path / "run") if r["train/mse"]}
    assert metrics["train_nmse"] == pytest.approx(mse[3], rel=1e-9) == best["mse"]
    assert metrics["train_nmse"] < kept["train_nmse"] * 2  # far from the ruined fit
    # the checkpoint holds what the run reports, and a resume knows its best
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["ude_best"][1] == 3
    for k, v in ckpt["ude_best"][2].items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=0, atol=0)


def test_a_curriculum_s_short_windows_are_never_the_best_fit(make_cfg, monkeypatch):
    """Under a curriculum the first epochs fit a part of the series, whose MSE is no measure
    of the fit to all of it: the best parameters come from the epochs that fit all of it."""
    monkeypatch.setattr(train, "instantiate", _with_callback(_RuinLastStep()))
    metrics = train.train(make_cfg("trainer.max_epochs=6", "data.curriculum_epochs=4", *FAST[1:]))
    assert metrics["ended_on_best"]["epoch"] >= 4, metrics["ended_on_best"]


def test_nan_guard_stops_a_diverging_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path):
    metrics = train.train(
        make_cfg(
            "trainer.max_epochs=30",
            "optim.lr=1e4",
            "optim.grad_clip=null",
            "optim.step_backs=0",
            *FAST[1:],
        )
    )
    assert metrics["stop_reason"] and "training stopped at epoch" in metrics["stop_reason"]
    assert metrics["epochs"] < 30
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["stop_reason"] == metrics["stop_reason"]


def test_wandb_offline_logs_every_epoch_into_the_run_directory(make_cfg, tmp_path, monkeypatch):
    """logger=wandb: the logger gets the losses of every epoch and the validation error of
    every validation round, and the offline run under <run>/wandb holds them."""
    from pytorch_lightning.loggers import WandbLogger

    logged: list[dict] = []
    original = WandbLogger.log_metrics

    def spy(self, metrics, step=None):
        logged.append(dict(metrics))
        return original(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    train.train(make_cfg("logger=wandb", "trainer.max_epochs=3", *FAST[1:3], "distill=none"))
    import wandb

    wandb.finish()  # what the end of `python train.py` does: flush the run file
    epochs = [m["epoch"] for m in logged if "train/loss" in m]
    assert epochs == [0, 1, 2], logged
    assert sum("val/mse" in m for m in logged) == 3  # check_val_every_n_epoch=1
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "no offline run under <run>/wandb"
    for _ in range(300):  # wandb's service writes the records after finish() returns
        data = runs[0].read_bytes()
        if b"train/loss" in data and b"val/mse" in data:
            break
        time.sleep(0.1)
    assert b"train/loss" in data and b"val/mse" in data, "the records never reached the run"


def test_fit_shows_no_lightning_banners_tips_or_pytree_warning(capfd, caplog):
    import logging
    import warnings

    import ude

    caplog.set_level(logging.INFO)
    data = ude.simulate_measurements("lotka_volterra", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ude.fit("lotka_volterra", data, max_epochs=2, warm_start_steps=0)
    shown = caplog.text + "".join(capfd.readouterr())
    for noise in ("GPU available", "TPU available", "Tip:", "LeafSpec"):
        assert noise not in shown, (noise, shown)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    # silenced while ude runs the Trainer only: Lightning's own Trainer still says it
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    assert "GPU available" in caplog.text


@pytest.mark.slow
def test_yeast_glycolysis_s_damped_warm_start_takes_hold_in_one_cycle():
    """The benchmark's yeast base cell as ``python train.py`` trains it (~40 s): the model its
    warm start gives blows up (the smoothed derivatives of the fast states carry a bias the
    network learns, a constant drain of ATP); halved, it fits the data at a loss of 16 where
    the untrained networks' is 264, and one cycle of the default schedule takes the fit to the
    noise (5 %). Discarded, as before, training took four cycles, its first leaving the fit
    worse than the data's mean (NMSE ~2)."""
    from ude.benchmark.methods import composed_config, train_as_train_py
    from ude.benchmark.scenario import Scenario, build_problem

    problem = build_problem(Scenario("yeast_glycolysis", noise=0.05))
    _, metrics = train_as_train_py(
        composed_config(problem, []), problem.known, problem.measurements
    )
    assert metrics["warm_start_damping"] == 0.5 and "warm_start_discarded" not in metrics
    assert "fit_cycles" not in metrics and metrics["train_nmse"] < 0.05, metrics


@pytest.mark.slow
def test_goldbeter_at_10_percent_noise_distils_the_true_law_from_a_failed_training(tmp_path):
    """The benchmark's Goldbeter cell at 10 % noise (~2 min). Its warm start drives the
    kinase fraction M past 1, beyond the pole of the known ``(1 - M)/(K1 + 1 - M)``
    (training MSE 60 from the first epoch), every Adam step from there fails to solve, and
    training stops at epoch 8 after its three step backs. (Until d28f330 training went on
    and the multiple-shooting rescue ran; since, it stops first.) The distillation sees
    that the trained model misses its data and screens along the data's own path, and
    still finds the true ``-vd·X·C/(Kd + C)`` (benchmark row on 54c8c87: forecast NMSE
    0.030). A training that goes on from there must keep the twin exact too."""
    from ude.benchmark.methods import UDE
    from ude.benchmark.suite import expand, run_suite

    cells = [
        c
        for c in expand(["goldbeter"], ["ude"], {"noise": [0.1]}, {"n_times": 30})
        if c.axis == "noise"
    ]
    (row,) = run_suite(cells, {"ude": UDE()}, tmp_path, log=lambda *_: None)
    assert row["exact"] and row["forecast_nmse"] < 0.1, row


def test_a_model_that_solves_only_on_the_data_times_is_scored_and_plotted_there(
    monkeypatch, tmp_path, caplog
):
    """The stiff solver lands a step on every output time, so a trained model can solve on the
    data's times and fail on the 200- and 300-point grids of the truth errors and the fit plot
    (Goldbeter with a hidden species): those fall back to the data's times, with a warning,
    instead of ending the run after training."""
    import importlib

    from ude import plots
    from ude.benchmark.methods import composed_config
    from ude.benchmark.scenario import Scenario, build_problem
    from ude.model.solver import SolverFailed
    from ude.runs import build_model

    fit = importlib.import_module("ude.fit")  # the module (``ude.fit`` is also a function)
    problem = build_problem(Scenario("lotka_volterra", noise=0.05, seed=0, library="default"))
    m = problem.measurements
    model, _ = build_model(composed_config(problem, []), problem.known, m)
    solve = fit.predict

    def only_on_the_data_times(model, times, conditions=None):
        if len(times) != len(m.times):
            raise SolverFailed("rodas5p: step size underflow at t=15.95")
        return solve(model, times, conditions)

    monkeypatch.setattr(fit, "predict", only_on_the_data_times)
    errors = fit.truth_errors(model, m)
    assert set(errors["state_nmse"]) == set(model.spec.states)
    assert all(math.isfinite(v) for v in errors["state_nmse"].values())
    assert "does not solve on 200 points" in caplog.text
    assert plots.plot_fit(model, m, tmp_path / "fit.png").exists()
