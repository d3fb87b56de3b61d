"""Where a run starts: a checkpoint named on the command line, its own run directory's
``checkpoints/last.ckpt`` (``resume: auto``: a relaunched or requeued job continues), or
nothing (a new run).

The run directory is the identity of a run. A job that a cluster preempts and requeues (SLURM
through submitit), or that a user relaunches with the same ``hydra.run.dir`` (or the same
``hydra.sweep.dir``), finds its checkpoint there and continues from the last finished epoch; a
run that finished (its ``metrics.json`` is written last) is not trained again. A relaunch with
other settings is refused: the folder would otherwise hold a run that no config describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ude.errors import UdeError

# Settings that may differ between a run and its relaunch: how it resumes, and the CPU
# threads, which change no result.
_FREE = {"resume", "ckpt_path", "threads"}


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first dotted key whose value differs (``old -> new``), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if not path and key in _FREE:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return f"{where} ({'added' if key not in old else 'removed'})"
            found = _first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} -> {new!r}"


def checkpoint_epoch(ckpt: Path) -> int | None:
    """The number of finished epochs in a Lightning checkpoint (None: unreadable)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - unreadable: the caller reports it
        return None
    return int(state.get("epoch", -1)) + 1


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """``(checkpoint to resume from or None, metrics of a finished run or None)``.

    ``ckpt_path`` (explicit) always wins, with any settings (e.g. more epochs). Otherwise,
    with ``resume: auto``, a run directory that holds ``metrics.json`` is a finished run (its
    metrics are returned: nothing to train), and one that holds ``checkpoints/last.ckpt``
    continues from it; either needs the settings of the run's ``config.yaml``.
    ``resume: never`` starts over, whatever the folder holds.
    """
    mode = cfg.get("resume", "auto")  # one of config_check.RESUME_MODES (checked with the config)
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path), None
    ckpt, saved, done = (
        run_dir / "checkpoints" / "last.ckpt",
        run_dir / "config.yaml",
        run_dir / "metrics.json",
    )
    if mode == "never" or not (ckpt.is_file() or done.is_file()):
        return None, None
    if saved.is_file():
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        new = OmegaConf.to_container(cfg, resolve=True)
        diff = _first_difference(old, new)
        if diff:
            raise UdeError(
                f"this run directory holds a run with other settings ({diff})",
                source=str(saved),
                fix="relaunch it with its own settings to resume it, give another "
                "hydra.run.dir for a new run, or resume=never to start over in this folder",
            )
    if done.is_file():
        return None, json.loads(done.read_text())
    return str(ckpt), None
