"""Loggers of a run: a CSV log that survives a resume, and W&B offline unless logged in."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps the ``metrics.csv`` it finds.

    Lightning's deletes it. This one keeps its rows before the first step it is given: a run
    resumed from a checkpoint continues the history; a run started over from step 0 (or from
    an earlier checkpoint) replaces the rows it logs again.
    """

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        self._history: list[dict[str, str]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self._history = list(csv.DictReader(file))

    def save(self) -> None:
        if self._history is not None and self.metrics:
            first = min(m["step"] for m in self.metrics)
            kept = [r for r in self._history if r.get("step") and float(r["step"]) < first]
            keys = sorted({k for r in kept for k in r} | {k for m in self.metrics for k in m})
            with open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)
            self.metrics_keys, self._history = keys, None
        super().save()


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (``save_dir/name/version/metrics.csv``, one row per logged step)
    that keeps the rows already there when a run resumes in the same folder
    (``ckpt_path=<run>/checkpoints/last.ckpt``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class _WandbLogger(WandbLogger):
    """Lightning's WandbLogger without its ``anonymous=None`` (which wandb >= 0.19 answers
    with "The anonymous setting has no effect"), and with :meth:`finish`."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def finish(self) -> None:
        """Close the W&B run while the process is alive (left to wandb's exit hook, its
        service connection closes first and debug.log gets a HandleAbandonedError)."""
        run = self._experiment
        if run is None:
            return
        offline, folder = bool(getattr(run, "offline", False)), run.settings.sync_dir
        run.finish()
        self._experiment = None
        if offline:
            logging.getLogger("ude.train").info(
                f"W&B run saved offline; upload it with: wandb sync {folder}"
            )


def wandb_logger(
    project: str, save_dir: str, name: str | None = None, tags: list[str] | None = None, **kwargs
) -> WandbLogger:
    """Lightning's WandbLogger, offline unless the user is logged in.

    ``WANDB_MODE`` (online, offline, disabled) wins when set. Offline runs land in
    ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    """
    import wandb

    mode = os.environ.get("WANDB_MODE")
    offline = mode == "offline" or (mode is None and not _logged_in())
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # quiet: the start banner and the run's history table are noise in a training's output
    kwargs.setdefault("settings", wandb.Settings(quiet=True))
    return _WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        tags=list(tags or []),
        offline=offline,
        **kwargs,
    )


def finish_loggers(loggers: Iterable[Logger]) -> None:
    """Close what the loggers hold open (a W&B run) once a run has written everything."""
    for logger in loggers:
        finish = getattr(logger, "finish", None)
        if callable(finish):
            finish()
