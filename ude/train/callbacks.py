"""Callbacks: checkpoints that never save a diverged state, and a compact progress line."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


def _stopped(pl_module: pl.LightningModule) -> bool:
    return getattr(pl_module, "stop_reason", None) is not None


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that saves nothing once the NaN guard has stopped training, so
    ``last.ckpt`` stays the last good state."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _stopped(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _stopped(pl_module):
            super().on_validation_end(trainer, pl_module)


class PrintProgress(pl.Callback):
    """Prints one line every ``every`` epochs: epoch, losses, seconds so far."""

    def __init__(self, every: int = 100):
        self.every = every
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every and (epoch % self.every == 0 or epoch == trainer.max_epochs):
            m = trainer.callback_metrics
            parts = [
                f"{k.split('/')[-1] if k.startswith('train/') else k}={float(v):.4g}"
                for k, v in m.items()
                if k in {"train/loss", "train/mse", "val/mse"}
            ]
            print(
                f"epoch {epoch}/{trainer.max_epochs}  "
                + "  ".join(parts)
                + f"  {time.perf_counter() - self._start:.1f}s",
                flush=True,
            )
