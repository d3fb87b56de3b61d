"""Training from Python without Hydra: build the module, run Lightning, evaluate."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from ude.benchmark.metrics import state_nmse
from ude.data.datamodule import ConditionsDataModule
from ude.data.measurements import Measurements
from ude.data.splits import Split
from ude.model.hybrid import HybridODE, build_hybrid
from ude.model.solver import Solver, SolverFailed
from ude.spec.model_spec import ModelSpec
from ude.spec.simulate import simulate_spec
from ude.train.module import UDEModule
from ude.train.quiet import quiet_lightning
from ude.train.warm_start import smooth_states

log = logging.getLogger("ude.train")


@dataclass
class FitResult:
    """A trained model with its module, trainer and metrics."""

    model: HybridODE
    module: UDEModule
    measurements: Measurements
    metrics: dict[str, Any] = field(default_factory=dict)
    trainer: pl.Trainer | None = None


def make_module(model: HybridODE, measurements: Measurements, **optim: Any) -> UDEModule:
    """The LightningModule for ``model`` on ``measurements``' time grid."""
    dtype = model.initial.dtype
    if optim.get("warm_start_steps"):
        optim = {**optim, "smoothed": smooth_states(measurements, model.spec.states)}
    if optim.get("shooting_segments", 1) > 1 or optim.get("rescue_segments", 0) > 1:
        optim = {
            **optim,
            "observed_states": torch.tensor(
                measured_states(measurements, model.spec.states), dtype=dtype
            ),
        }
    return UDEModule(
        model,
        torch.tensor(measurements.times, dtype=dtype),
        torch.tensor(measurements.observable_scale(), dtype=dtype),
        **optim,
    )


def measured_states(measurements: Measurements, states: list[str]) -> np.ndarray:
    """Replicate means of directly measured states ``(condition, time, state)``; NaN where a
    state is not an observable or was not measured."""
    out = np.full((measurements.n_conditions, len(measurements.times), len(states)), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a time with no sample: NaN, no mean
        for i, s in enumerate(states):
            if s in measurements.observables:
                col = measurements.values[..., measurements.observables.index(s)]
                out[..., i] = np.nanmean(col, axis=2) if np.isfinite(col).any() else np.nan
    return out


def train_settings() -> dict[str, Any]:
    """The ``optim`` settings ``python train.py`` trains with (``ude/conf/config.yaml``'s
    ``optim`` node, before an experiment changes them), which :func:`fit` takes unless
    told otherwise."""
    from omegaconf import OmegaConf

    from ude.conf import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").optim, resolve=True)


def fit(
    spec: str | ModelSpec,
    measurements: Measurements,
    *,
    solver: Solver | None = None,
    max_epochs: int = 600,
    seed: int = 0,
    run_dir: str | Path | None = None,
    model_kwargs: dict | None = None,
    trainer_kwargs: dict | None = None,
    **optim: Any,
) -> FitResult:
    """Train a HybridODE for ``spec`` on ``measurements`` (CPU, float64 by default) as
    ``python train.py`` trains it: each ``optim`` setting not given is the command's
    (:func:`train_settings`: the warm start, the fit cycles, the rescue by multiple shooting
    and the step-backs included); ``lr=0.001`` and the like change one."""
    optim = {**train_settings(), **optim}
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(spec, measurements, solver or Solver(), **(model_kwargs or {}))
    finally:
        torch.set_default_dtype(torch.float32)
    module = make_module(model, measurements, **optim)
    kwargs = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        check_val_every_n_epoch=max_epochs,
        default_root_dir=str(run_dir) if run_dir else None,
    )
    kwargs.update(trainer_kwargs or {})
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)
        metrics = run_training(module, ConditionsDataModule(measurements), trainer)
    return FitResult(
        model=module.reported,
        module=module,
        measurements=measurements,
        metrics=metrics,
        trainer=trainer,
    )


def run_training(
    module: UDEModule,
    datamodule: ConditionsDataModule,
    trainer: pl.Trainer,
    ckpt_path: str | None = None,
) -> dict[str, Any]:
    """``trainer.fit`` then :func:`evaluate` (under DDP: on the first process; the others
    return the stop reason and the epochs only); the metrics include the wall time.

    ``module.reported`` is then the model the run reports: the trained HybridODE, or an
    ensemble's member with the lowest error on the training data (``metrics["ensemble"]``
    has every member's)."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    split = getattr(datamodule, "split", None)
    module.reported, chosen = reported_model(module.model, datamodule.measurements, split)
    metrics = (
        evaluate(module, datamodule.measurements, split, model=module.reported)
        if trainer.is_global_zero
        else {}
    )
    if chosen is not None:
        metrics["ensemble"] = chosen
    metrics["epochs"] = int(trainer.current_epoch)
    metrics["stop_reason"] = module.stop_reason
    if getattr(module, "warm_start_cycles_run", None):  # not on a resumed run
        metrics["warm_start_cycles"] = module.warm_start_cycles_run
    if module.warm_start_discarded:
        metrics["warm_start_discarded"] = module.warm_start_discarded
    if module.warm_start_damping:
        metrics["warm_start_damping"] = module.warm_start_damping
    if module.fit_cycles_run > 1:
        metrics["fit_cycles"] = module.fit_cycles_run
    if module.rescued:
        metrics["rescue_segments"] = len(module.segments)
    if module.ended_on_best:
        metrics["ended_on_best"] = module.ended_on_best
    if module.step_backs_run:
        metrics["step_backs"] = module.step_backs_run
        metrics["step_back_reasons"] = module.step_back_notes
    metrics["timings"] = {"train_seconds": round(seconds, 3)}
    return metrics


@torch.no_grad()
def predict(
    model: HybridODE, times: np.ndarray, conditions: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """States ``(condition, time, state)`` and observables ``(condition, time, observable)``."""
    dtype = model.initial.dtype
    cond = torch.arange(model.initial.shape[0]) if conditions is None else torch.tensor(conditions)
    cond = cond.to(model.initial.device)
    t = torch.tensor(times, dtype=dtype, device=model.initial.device)
    states = model.simulate(t, cond)
    return states.cpu().numpy(), model.observe(states, cond).cpu().numpy()


def predict_fine(
    model: HybridODE, data_times: np.ndarray, n: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """:func:`predict` on ``n`` even points over the data's span, for plots, errors against
    the truth and the distillation's samples and integrals: ``(times, (states,
    observables))``. The stiff solver lands a step on every
    output time, so a model that solves on the data's times (training checked that) can fail
    on a finer grid near where it blows up: then the data's own times, with a warning."""
    times = np.linspace(data_times[0], data_times[-1], n)
    try:
        return times, predict(model, times)
    except SolverFailed as err:
        log.warning(
            f"ude: the trained model does not solve on {n} points ({err}); "
            "the data's times are used instead"
        )
        return np.asarray(data_times, dtype=float), predict(model, data_times)


def reported_model(
    model: HybridODE, measurements: Measurements, split: Split | None = None
) -> tuple[HybridODE, dict[str, Any] | None]:
    """``model``, or for an ensemble (:class:`ude.model.ensemble.HybridEnsemble`) its member
    with the lowest normalised MSE on the training data (``split``'s, else all), with
    ``{"members", "chosen", "train_nmse"}`` (every member's error)."""
    if getattr(model, "n_members", 1) == 1:
        return model, None
    p0 = model.initial
    as_t = lambda a: torch.as_tensor(a, dtype=p0.dtype, device=p0.device)  # noqa: E731
    used = ~np.isnan(measurements.values) & (True if split is None else split.train)
    batch = {
        "condition": torch.arange(measurements.n_conditions, device=p0.device),
        "values": as_t(np.nan_to_num(measurements.values)),
        "mask": torch.as_tensor(used, device=p0.device),
        "scale": as_t(measurements.observable_scale()),
    }
    try:
        errors = model.member_errors(as_t(measurements.times), batch)
    except SolverFailed:  # one solve for all: judge each member alone
        errors = np.array(
            [_alone(model.member(i), batch, measurements) for i in range(model.n_members)]
        )
    best = int(np.argmin(errors))
    info = {"members": model.n_members, "chosen": best, "train_nmse": [float(e) for e in errors]}
    return model.member(best), info


def _alone(member: HybridODE, batch: dict[str, torch.Tensor], measurements: Measurements) -> float:
    try:
        _, obs = predict(member, measurements.times)
    except SolverFailed:
        return math.inf
    resid = (measurements.values - obs[:, :, None, :]) / measurements.observable_scale()
    used = batch["mask"].cpu().numpy()
    value = float(np.mean(resid[used] ** 2)) if used.any() else math.inf
    return value if math.isfinite(value) else math.inf


def evaluate(
    module: UDEModule,
    measurements: Measurements,
    split: Split | None = None,
    model: HybridODE | None = None,
) -> dict[str, Any]:
    """Fit errors of ``model`` (default: the module's) on the training data, forecast errors
    on the held-out data of ``split`` (when it holds any out) and, for synthetic data, errors
    against the truth.

    Errors are normalised by each observable's RMS over the training entries (the module's
    ``obs_scale``).
    """
    model = module.model if model is None else model
    model.eval()
    try:
        _, obs = predict(model, measurements.times)
    except SolverFailed as err:  # a diverged model: report that, not a traceback
        return {
            "train_mse_first": module.first_mse,
            "train_nmse": math.inf,
            "solve_failed": str(err),
            "parameters": model.parameter_values(),
        }
    scale = module.obs_scale.cpu().numpy()  # the training entries' scale
    full = (measurements.values - obs[:, :, None, :]) / scale
    resid = full if split is None else np.where(split.train, full, np.nan)
    out: dict[str, Any] = {
        "train_mse_first": module.first_mse,
        "train_nmse": float(np.nanmean(resid**2)),
        "fit_nrmse": {
            o: float(np.sqrt(np.nanmean(resid[..., i] ** 2)))
            for i, o in enumerate(measurements.observables)
        },
        "noise": {
            o: float(s)
            for o, s in zip(measurements.observables, model.noise.cpu().tolist(), strict=True)
        },
        "parameters": model.parameter_values(),
    }
    if split is not None and split.has_held_out:
        out["forecast"] = forecast_errors(full, measurements, split)
    if out["train_mse_first"]:
        out["mse_reduction"] = out["train_mse_first"] / max(out["train_nmse"], 1e-300)
    if measurements.truth is not None:
        out["truth"] = truth_errors(model, measurements)
    return out


def forecast_errors(resid: np.ndarray, measurements: Measurements, split: Split) -> dict[str, Any]:
    """Errors on the held-out entries: normalised MSE, NRMSE per observable and per held-out
    condition; ``resid`` is the normalised residual ``(condition, time, replicate, observable)``.
    """
    held = np.where(split.held_out, resid, np.nan)
    out: dict[str, Any] = {
        "nmse": float(np.nanmean(held**2)),
        "nrmse": {
            o: float(np.sqrt(np.nanmean(held[..., i] ** 2)))
            for i, o in enumerate(measurements.observables)
            if split.held_out[..., i].any()
        },
        "n_points": int(split.held_out.sum()),
        "val_conditions": list(split.val_conditions),
        "after_time": split.cut,
        "by_condition": {
            measurements.conditions[c]: float(np.sqrt(np.nanmean(held[c] ** 2)))
            for c in split.held_out_conditions
        },
    }
    return out


def truth_errors(model: HybridODE, measurements: Measurements) -> dict[str, Any]:
    """Trajectory NMSE of the model against the true states, and relative RMSE of the
    networks against the true missing terms along the true trajectories, on 200 points (the
    data's times when the model solves only there: :func:`predict_fine`)."""
    truth = measurements.truth
    times, (states, _) = predict_fine(model, measurements.times, 200)
    true_states = simulate_spec(truth.spec, truth.initial, times, measurements.inputs)
    idx = [truth.spec.states.index(s) for s in model.spec.states if s in truth.spec.states]
    mine = [model.spec.states.index(s) for s in model.spec.states if s in truth.spec.states]
    ref = true_states[..., idx]
    nmse = state_nmse(states[..., mine], ref)
    out: dict[str, Any] = {
        "state_nmse": dict(
            zip(np.array(model.spec.states)[mine].tolist(), nmse.tolist(), strict=True)
        )
    }
    if truth.missing and len(model.networks):
        learned, true = missing_terms(model, measurements, true_states)
        rmse = np.sqrt(np.mean((learned - true) ** 2, axis=0))
        norm = np.sqrt(np.mean(true**2, axis=0))
        out["missing_term_rel_rmse"] = {
            s: float(e / (n or 1.0)) for s, e, n in zip(truth.missing, rmse, norm, strict=True)
        }
    return out


@torch.no_grad()
def missing_terms(
    model: HybridODE, measurements: Measurements, true_states: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Network output and true missing term, ``(point, missing state)`` each, evaluated on the
    true states ``(condition, time, state)``."""
    truth = measurements.truth
    names = list(truth.missing)
    flat = true_states.reshape(-1, true_states.shape[-1])
    n_t = true_states.shape[1]
    cond = torch.arange(true_states.shape[0]).repeat_interleave(n_t).to(model.initial.device)
    y = torch.tensor(
        flat[:, [truth.spec.states.index(s) for s in model.spec.states]],
        dtype=model.initial.dtype,
        device=model.initial.device,
    )
    net = model.neural_terms(y, model.context(cond)).cpu().numpy()
    learned = net[:, [model.spec.states.index(s) for s in names]]
    from ude.spec.compile import CompiledExpressions

    f = CompiledExpressions([truth.missing[s] for s in names], truth.spec.symbols).double()
    params = np.array([p.value for p in truth.spec.parameters.values()])
    inputs = np.repeat(np.asarray(measurements.inputs, dtype=float), n_t, axis=0)
    values = np.concatenate(
        [flat, inputs, np.broadcast_to(params, (len(flat), len(params)))], axis=1
    )
    true = f(torch.tensor(values)).numpy()
    return learned, true
