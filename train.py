"""Train a hybrid UDE: python train.py [group=option] [key=value ...]

Examples:
    python train.py                                   # Lotka-Volterra, the default example
    python train.py trainer.max_epochs=300 seed=1
    python train.py ckpt_path=outputs/<day>/<time>/checkpoints/last.ckpt   # resume
    python train.py -m seed=0,1,2 hydra/launcher=local                     # a local sweep
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ude.config_check import check_config
from ude.errors import UdeError
from ude.fit import run_training
from ude.plots import plot_fit, plot_missing_terms
from ude.runs import build_run, exit_2_on_user_errors, run_cli


def _run_dir(ckpt_path: str | None, default: str) -> str:
    """A resumed run writes into the folder of its checkpoint; a new run into ``default``."""
    return str(Path(ckpt_path).resolve().parent.parent) if ckpt_path else default


OmegaConf.register_new_resolver("ude_run_dir", _run_dir, replace=True)
# Lightning's start-up banners and tips are noise in a run's output; warnings still show.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate data, model, trainer from ``cfg``, train, and write the run directory."""
    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise UdeError(
            "checkpoint not found",
            source=str(ckpt_path),
            fix="give the last.ckpt of an earlier run: <run>/checkpoints/last.ckpt",
        )
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    datamodule, model, module = build_run(cfg)
    measurements = datamodule.measurements

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=loggers or False)
    metrics = run_training(module, datamodule, trainer, ckpt_path=ckpt_path)

    if trainer.is_global_zero and "solve_failed" not in metrics:
        plot_fit(model, measurements, run_dir / "plots" / "fit.png")
        plot_missing_terms(model, measurements, run_dir / "plots" / "missing_terms.png")
        # distill=none turns distillation off; a fast_dev_run only checks the training loop
        if cfg.get("distill") and not cfg.trainer.get("fast_dev_run"):
            from ude.distill.cli import run_distill, summary

            metrics["distill"] = run_distill(cfg.distill, model, measurements, run_dir)
            print(summary(metrics["distill"]))
    if trainer.is_global_zero:
        metrics["run_dir"] = str(run_dir)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _summary(cfg, metrics, run_dir)
    return metrics


def _summary(cfg: DictConfig, metrics: dict[str, Any], run_dir: Path) -> None:
    first, last = metrics.get("train_mse_first"), metrics["train_nmse"]
    line = (
        f"ude: {cfg.model.spec} trained for {metrics['epochs']} epochs in "
        f"{metrics['timings']['train_seconds']:.1f} s; normalised trajectory MSE "
    )
    line += f"{first:.3g} -> {last:.3g}" if first else f"{last:.3g}"
    truth = metrics.get("truth", {})
    if "missing_term_rel_rmse" in truth:
        err = ", ".join(f"{k} {v:.1%}" for k, v in truth["missing_term_rel_rmse"].items())
        line += f"; network vs true missing term (relative RMSE): {err}"
    print(line)
    if metrics.get("warm_start_discarded"):
        print(
            "ude: the warm start was discarded (its model could not be solved over the data: "
            f"{metrics['warm_start_discarded']}); training started from the untrained networks"
        )
    print(f"run directory: {run_dir}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # Exiting inside the job keeps Hydra from printing its own banner around our message.
    with exit_2_on_user_errors():
        metrics = train(cfg)
        if metrics.get("stop_reason"):
            ckpt = Path(metrics["run_dir"]) / "checkpoints" / "last.ckpt"
            kept = f"last good checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint kept"
            # Before the first step the model as given cannot be solved: the solver's message
            # says what to try; a smaller learning rate would not help.
            stepped = metrics.get("train_mse_first") is not None
            raise UdeError(
                metrics["stop_reason"],
                source="train.py",
                fix=f"{kept}; lower optim.lr or tighten the solver" if stepped else kept,
            )


def cli() -> None:
    """Errors a user can cause print one line and exit with status 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
