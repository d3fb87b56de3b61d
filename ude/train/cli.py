"""Training at the edge: ``ude-train`` / ``python train.py`` / ``python -m ude.train``
[group=option] [key=value ...].

Examples:
    ude-train                                             # Lotka-Volterra, the default example
    ude-train trainer.max_epochs=300 seed=1
    ude-train ckpt_path=outputs/<day>/<time>/checkpoints/last.ckpt   # resume
    ude-train -m seed=0,1,2 hydra/launcher=local                     # a local sweep
    ude-train hydra.run.dir=runs/a                                   # killed? run it again
    ude-train trainer=ddp trainer.devices=2                          # 2 processes (DDP)
    ude-train --cfg job                                   # print the composed config
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ude._lazy import lazy_getattr
from ude.conf import CONF_DIR
from ude.config_check import check_config
from ude.errors import UdeError, exit_2_on_user_errors, run_cli
from ude.run_inputs import check_run_inputs

# The job itself (torch, Lightning) loads once the config has passed its checks:
# ``from ude.train.cli import train`` still works.
__getattr__ = lazy_getattr(__name__, {"train": "ude.train.job"}, globals())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    # Exiting inside the job keeps Hydra from printing its own banner around our message.
    with exit_2_on_user_errors():
        check_config(cfg)  # before torch and Lightning load: a bad value answers at once
        check_run_inputs(cfg)  # the checkpoint, the spec file and the library, likewise
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        from ude.train.job import train

        metrics = train(cfg)
        if metrics.get("stop_reason") and rank_zero_only.rank != 0:
            sys.exit(2)  # the first process says why
        if "distill" in metrics:  # the run and its UDE are kept; no twin ends with exit 2
            from ude.distill.cli import raise_if_no_twin

            raise_if_no_twin(metrics["distill"], metrics["run_dir"])
        if metrics.get("stop_reason"):
            ckpt = Path(metrics["run_dir"]) / "checkpoints" / "last.ckpt"
            kept = f"last good checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint kept"
            # Before the first step the model as given cannot be solved: the solver's message
            # says what to try; a smaller learning rate would not help.
            stepped = metrics.get("train_mse_first") is not None
            raise UdeError(
                metrics["stop_reason"],
                source="train",
                fix=f"{kept}; lower optim.lr or tighten the solver" if stepped else kept,
            )


def cli() -> None:
    """Errors a user can cause print one line and exit with status 2."""
    run_cli(main)
