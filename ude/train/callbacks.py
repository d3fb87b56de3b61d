"""Callbacks: checkpoints that never save a diverged state, and a compact progress line."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


def _stopped(pl_module: pl.LightningModule) -> bool:
    return getattr(pl_module, "stop_reason", None) is not None


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that saves nothing once the NaN guard has stopped training, so
    ``last.ckpt`` stays the last good state.

    The end of training saves the state it ended with (after an L-BFGS polish, or a stop in
    the first epoch: the NaN guard has reset it to the last finite one; the best parameters
    where the last ones fit worse: :meth:`ude.train.module.UDEModule.finish_training`).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the run's end state first (callbacks' on_train_end runs before the module's)
        finish = getattr(pl_module, "finish_training", None)
        if finish is not None:
            finish()
        super().on_train_end(trainer, pl_module)
        # Always the state training ended with: L-BFGS polish epochs make no step Lightning
        # counts, so ModelCheckpoint skips them (same global step) and last.ckpt would hold
        # the model before the polish, not the one the run distils and reports.
        if not trainer.fast_dev_run and self.dirpath:
            trainer.save_checkpoint(self.format_checkpoint_name({}), weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _stopped(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _stopped(pl_module):
            super().on_validation_end(trainer, pl_module)


class PrintProgress(pl.Callback):
    """Prints one line every ``every`` epochs: epoch, losses, seconds so far (the first
    process of a DDP run only; the losses are those of all the data).

    Where logging is set up for ``ude`` (a train run: the console and <run>/train.log), the
    line goes through it; elsewhere (a script, a notebook) it is printed.
    """

    def __init__(self, every: int = 100):
        self.every = every
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero:  # under DDP, one line for all processes
            return
        if self.every and (epoch % self.every == 0 or epoch == trainer.max_epochs):
            m = trainer.callback_metrics
            parts = [
                f"{k.split('/')[-1] if k.startswith('train/') else k}={float(v):.4g}"
                for k, v in m.items()
                if k in {"train/loss", "train/mse", "val/mse"}
            ]
            line = (
                f"epoch {epoch}/{trainer.max_epochs}  "
                + "  ".join(parts)
                + f"  {time.perf_counter() - self._start:.1f}s"
            )
            log = logging.getLogger("ude.train.progress")
            if log.isEnabledFor(logging.INFO) and log.hasHandlers():
                log.info(line)
            else:
                print(line, flush=True)
