"""Loggers of a run: a CSV log that survives a resume, and W&B (offline unless logged in)
with the run's config, figures, twin and checkpoint."""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only


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


def wandb_offline() -> bool:
    """W&B runs offline unless the user is logged in; ``WANDB_MODE`` (online, offline,
    disabled) wins when set."""
    mode = os.environ.get("WANDB_MODE")
    return mode == "offline" or (mode is None and not _logged_in())


class _WandbLogger(WandbLogger):
    """Lightning's WandbLogger without its ``anonymous=None`` (which wandb >= 0.19 answers
    with "The anonymous setting has no effect"), with :meth:`log_run` (what a finished run
    leaves) and :meth:`finish`."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def log_run(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        """The run's figures (``plots/*.png``) as images, the twin's equations as a table,
        ``twin.json`` (with ``equations.md``, ``twin.sbml``) and ``checkpoints/last.ckpt`` as
        artifacts, and the final numbers in the run's summary."""
        import wandb

        run = self.experiment
        images = {
            f"plots/{png.stem}": wandb.Image(str(png))
            for png in sorted((run_dir / "plots").glob("*.png"))
        }
        if images:
            run.log(images)
        twin_json = run_dir / "twin.json"
        if twin_json.is_file():
            twin = json.loads(twin_json.read_text())
            rows = [
                [s, f"d{s}/dt = {e}", twin.get("discovered", {}).get(s, "")]
                for s, e in twin.get("equations", {}).items()
            ]
            run.log({"twin/equations": wandb.Table(["state", "equation", "discovered"], rows)})
            twin_art = wandb.Artifact(f"twin-{run.id}", type="twin", metadata=twin)
            for name in ("twin.json", "equations.md", "twin.sbml"):
                if (run_dir / name).is_file():
                    twin_art.add_file(str(run_dir / name))
            run.log_artifact(twin_art)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            model = wandb.Artifact(
                f"checkpoint-{run.id}", type="model", metadata={"epochs": metrics.get("epochs")}
            )
            model.add_file(str(ckpt))
            run.log_artifact(model, aliases=["last"])
        run.summary.update(_summary_numbers(metrics))

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
    ``save_dir/wandb`` and can be uploaded later with ``wandb sync``. A run directory keeps
    one W&B run: its id is kept in ``save_dir/wandb/run_id``, and a resumed run (a relaunch,
    a requeued job) continues it.
    """
    import wandb

    offline = wandb_offline()
    folder = Path(save_dir) / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / "run_id"
    if "id" not in kwargs and "version" not in kwargs:
        if not id_file.is_file() and rank_zero_only.rank == 0:
            alphabet = string.ascii_lowercase + string.digits  # W&B's run id characters
            id_file.write_text("".join(secrets.choice(alphabet) for _ in range(8)))
        if id_file.is_file():
            kwargs["id"] = id_file.read_text().strip()
            kwargs.setdefault("resume", "allow")
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


def _summary_numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``metrics`` (nested keys joined by ``/``), lists and texts left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "path":  # the distillation's candidate table: not a summary number
            continue
        if isinstance(value, dict):
            out.update(_summary_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def log_config(loggers: Iterable[Logger], config: dict[str, Any]) -> None:
    """The run's resolved config as every logger's hyperparameters (W&B: the run's config;
    TensorBoard: its hparams; CSV: ``hparams.yaml``)."""
    for logger in loggers:
        logger.log_hyperparams(config)


def log_run_outputs(loggers: Iterable[Logger], run_dir: Path, metrics: dict[str, Any]) -> None:
    """What a finished run wrote in ``run_dir`` (plots, twin, checkpoint, final numbers), to
    the loggers that keep such things (W&B)."""
    for logger in loggers:
        log_run = getattr(logger, "log_run", None)
        if callable(log_run):
            log_run(run_dir, metrics)


def finish_loggers(loggers: Iterable[Logger]) -> None:
    """Close what the loggers hold open (a W&B run) once a run has written everything."""
    for logger in loggers:
        finish = getattr(logger, "finish", None)
        if callable(finish):
            finish()
