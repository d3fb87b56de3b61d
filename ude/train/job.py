"""One training job: data, model and trainer from a composed config; train, then write the
run directory (checkpoint, metrics, plots, the distilled twin). :mod:`ude.train.cli` checks
the config and calls :func:`train`; it imports this module, and with it torch and Lightning,
only then, so that ``--help`` and a mistyped key answer at once."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ude.config_check import check_config
from ude.errors import UdeError
from ude.fit import run_training
from ude.model.hybrid import HybridODE
from ude.plots import plot_fit, plot_missing_terms
from ude.progress import ConsoleProgress, Progress
from ude.run_inputs import missing_checkpoint, petab_spec_source
from ude.runs import build_run
from ude.train.loggers import finish_loggers, log_config, log_run_outputs
from ude.train.module import UDEModule
from ude.train.processes import check_processes
from ude.train.quiet import quiet_lightning
from ude.train.resume import checkpoint_epoch, resume_point

# Hydra's job logging (ude/conf/hydra/job_logging/ude.yaml) prints these lines as they are and
# keeps them, with times, in <run>/train.log.
log = logging.getLogger("ude.train")


def check_checkpoint(ckpt_path: str, module: UDEModule) -> None:
    """Raise :class:`UdeError` unless ``ckpt_path`` is a checkpoint of ``module``'s shapes."""
    if not Path(ckpt_path).is_file():
        raise missing_checkpoint(ckpt_path)
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        state = checkpoint["state_dict"]
    except Exception as err:  # noqa: BLE001 - any failure to read it is a bad checkpoint
        raise UdeError(f"not a readable checkpoint ({err})", source=str(ckpt_path)) from None
    module.restore_rescue(checkpoint)  # a rescue cycle's nodes
    own = module.state_dict()
    wrong = [
        k
        for k in sorted(set(own) | set(state))
        if k not in own or k not in state or tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise UdeError(
            f"the checkpoint does not fit this config's model ({len(wrong)} tensors differ, "
            f"e.g. {wrong[0]})",
            source=str(ckpt_path),
            fix="resume with the model settings of the run that wrote it, as in its config.yaml",
        )


def train(cfg: DictConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Instantiate data, model, trainer from ``cfg``, train, and write the run directory.

    ``progress`` (default: a live line on the terminal, first process only) shows the warm
    start, the training and the distillation's stages; their durations go to
    ``metrics.json``'s ``timings``. Under DDP every process runs this function; the first
    one (``is_global_zero``) alone writes the outputs.
    """
    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    first = rank_zero_only.rank == 0
    progress = progress or (ConsoleProgress() if first else Progress())
    ckpt_path, finished = resume_point(cfg, run_dir)
    if finished is not None:
        if first:
            log.info(
                f"ude: {run_dir} holds a finished run (metrics.json): nothing to train "
                "(resume=never starts it over)"
            )
        return finished
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    if _petab_sciml(cfg):  # a PEtab SciML problem trains as it stands (ude/petab/fit.py)
        from ude.petab.fit import train_problem

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        return train_problem(
            cfg.data.problem,
            run_dir,
            instantiate(cfg.solver),
            epochs=cfg.trainer.max_epochs,
            lr=cfg.optim.lr,
            polish_steps=cfg.optim.polish_epochs,
            seed=cfg.seed,
            log=log.info,
        )
    datamodule, model, module = build_run(cfg, progress)
    if ckpt_path:
        check_checkpoint(ckpt_path, module)
    # Written once the data, the model and the checkpoint are known to be good: a resume that
    # fails keeps the run's config as it was.
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    if first:
        # replaced at once: the other processes of a SLURM DDP job, started together, read it
        partial = run_dir / f".config.yaml.{os.getpid()}"
        partial.write_text(OmegaConf.to_yaml(config))
        os.replace(partial, run_dir / "config.yaml")
        if ckpt_path and not cfg.get("ckpt_path"):
            log.info(f"ude: resuming from {ckpt_path} (epoch {checkpoint_epoch(Path(ckpt_path))})")

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    try:
        log_config(loggers, config)
        with quiet_lightning(), warnings.catch_warnings():
            if ckpt_path:  # a resume continues in its own folder, checkpoints and all
                warnings.filterwarnings("ignore", "Checkpoint directory .* is not empty")
            trainer = instantiate(cfg.trainer, _partial_=True)(
                callbacks=callbacks, logger=loggers or False
            )
            line = check_processes(
                trainer, cfg.trainer.get("devices"), len(datamodule.split.train_conditions)
            )
            if line and trainer.is_global_zero:
                log.info(line)
            try:
                metrics = run_training(module, datamodule, trainer, ckpt_path=ckpt_path)
            except SIGTERMException:
                _terminated(run_dir, trainer)
        if trainer.is_global_zero:
            # an ensemble's best member on the training data, else the trained model
            model = module.reported
            _outputs(cfg, model, datamodule, run_dir, metrics, progress)
            _ensemble_band(cfg, module.model, datamodule, metrics, progress)
            metrics["timings"].update(progress.timings())
            metrics["run_dir"] = str(run_dir)
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            log_run_outputs(loggers, run_dir, metrics)
            _summary(cfg, metrics, run_dir)
    finally:
        progress.close_all()
        finish_loggers(loggers)
    return metrics


def _outputs(
    cfg: DictConfig,
    model: HybridODE,
    datamodule: Any,
    run_dir: Path,
    metrics: dict[str, Any],
    progress: Progress,
) -> None:
    """Plots, the distillation (``distill=none``: none; a fast_dev_run only checks the
    training loop) and the PEtab export of a trained model."""
    if "solve_failed" in metrics:
        return
    measurements = datamodule.measurements
    with progress.stage("plots"):
        plot_fit(model, measurements, run_dir / "plots" / "fit.png", datamodule.split)
        plot_missing_terms(model, measurements, run_dir / "plots" / "missing_terms.png")
    from ude.distill.cli import distill_enabled, run_distill, summary

    if distill_enabled(cfg) and not cfg.trainer.get("fast_dev_run"):
        # the distillation sees the training entries alone; the twin is judged on the rest
        metrics["distill"] = run_distill(
            cfg.distill, model, measurements, run_dir, datamodule.split, progress=progress
        )
        log.info(summary(metrics["distill"]))
    from ude.petab.export import write_run_petab

    with progress.stage("petab export"):
        petab_yaml = write_run_petab(model, measurements, run_dir)
    if petab_yaml is not None:
        metrics["petab"] = str(petab_yaml)


def _ensemble_band(
    cfg: DictConfig, model: Any, datamodule: Any, metrics: dict[str, Any], progress: Progress
) -> None:
    """An ensemble's predictive band (:mod:`ude.uq.ensemble_band`) over the distillation's
    forecast horizon, into ``metrics["ensemble_band"]``."""
    if getattr(model, "n_members", 1) < 2 or "solve_failed" in metrics:
        return
    from ude.uq.ensemble_band import ensemble_band_report

    horizon = float((cfg.get("distill") or {}).get("forecast_horizon", 10.0))
    with progress.stage("ensemble band"):
        metrics["ensemble_band"] = ensemble_band_report(
            model, datamodule.measurements, horizon, seed=int(cfg.seed)
        )


def _terminated(run_dir: Path, trainer: pl.Trainer) -> None:
    """A run stopped by SIGTERM (a cluster's preemption, ``kill``): say where it can resume,
    and exit with 128 + SIGTERM, as a process the signal ends."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if trainer.is_global_zero:
        kept = (
            f"{ckpt} keeps epoch {checkpoint_epoch(ckpt)}; the same command resumes it"
            if ckpt.is_file()
            else "no checkpoint was written yet"
        )
        print(f"ude: stopped by SIGTERM at epoch {trainer.current_epoch}: {kept}", file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)


def _petab_sciml(cfg: DictConfig) -> bool:
    """Whether the run's data is a PEtab problem with networks of its own (PEtab SciML)."""
    problem = cfg.data.get("problem") if "problem" in cfg.data else None
    if not problem:
        return False
    from ude.petab.fit import has_networks

    return has_networks(problem)


def _summary(cfg: DictConfig, metrics: dict[str, Any], run_dir: Path) -> None:
    first, last = metrics.get("train_mse_first"), metrics["train_nmse"]
    line = (
        f"ude: {petab_spec_source(cfg)} trained for {metrics['epochs']} epochs in "
        f"{metrics['timings']['train_seconds']:.1f} s; normalised trajectory MSE "
    )
    line += f"{first:.3g} -> {last:.3g}" if first else f"{last:.3g}"
    if "forecast" in metrics:
        line += f"; held-out NMSE {metrics['forecast']['nmse']:.3g}"
    truth = metrics.get("truth", {})
    if "missing_term_rel_rmse" in truth:
        err = ", ".join(f"{k} {v:.1%}" for k, v in truth["missing_term_rel_rmse"].items())
        line += f"; network vs true missing term (relative RMSE): {err}"
    band = metrics.get("ensemble_band", {})
    if "coverage_of_truth" in band:
        line += (
            f"; the {band['members']}-member ensemble's {band['level']:.0%} band covers "
            f"{band['coverage_of_truth']:.0%} of the truth to t={band['horizon']:g}"
        )
    log.info(line)
    if metrics.get("warm_start_cycles", 1) > 1:
        log.info(
            f"ude: the warm start ran {metrics['warm_start_cycles']} cycles of "
            f"{cfg.optim.warm_start_steps} steps (a cycle that ends on a plateau, the networks "
            "still on a flat solution, is followed by another)"
        )
    if metrics.get("warm_start_discarded"):
        log.info(
            "ude: the warm start was discarded (its model could not be solved over the data: "
            f"{metrics['warm_start_discarded']}); training started from the untrained networks"
        )
    if metrics.get("warm_start_damping"):
        log.info(
            "ude: the warm start's model could not be solved over the data; its networks' "
            f"output times {metrics['warm_start_damping']:g} fitted the training data best "
            "and training started there"
        )
    if metrics.get("fit_cycles", 1) > 1:
        log.info(
            f"ude: trajectory fitting ran {metrics['fit_cycles']} cycles of "
            f"{cfg.trainer.max_epochs} epochs (a cycle that ends with the training NMSE above "
            f"{cfg.optim.unexplained:g} and still falling, the fit not taken hold, is followed "
            "by another)"
        )
    if metrics.get("rescue_segments"):
        log.info(
            "ude: the fit stalled far from the data (training NMSE above 0.5, no longer "
            f"falling); the cycles after it ran with multiple shooting in "
            f"{metrics['rescue_segments']} pieces"
        )
    if metrics.get("ended_on_best"):
        best = metrics["ended_on_best"]
        log.info(
            f"ude: training ended on the parameters epoch {best['epoch']} started from, its best "
            f"fit to the training data (normalised trajectory MSE {best['mse']:.3g}, where its "
            f"last step left {best['last_mse']:.3g})"
        )
    if metrics.get("step_backs"):
        log.info(
            f"ude: {metrics['step_backs']} training step(s) failed (the solver gave up or the "
            "loss was not finite) and were undone, each halving the learning rate"
            + "".join(f"; {note}" for note in metrics.get("step_back_reasons", []))
        )
    log.info(f"run directory: {run_dir}")
