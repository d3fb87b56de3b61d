"""What a run's processes are: the line a DDP run prints about them, the settings it refuses,
and the warning when a process has no condition to fit."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.strategies import DDPStrategy

from ude.errors import UdeError

log = logging.getLogger("ude.train")


def check_processes(trainer: pl.Trainer, devices: object, n_conditions: int) -> str | None:
    """Raise :class:`UdeError` for a DDP run on the CPU with ``devices: auto`` (Lightning runs
    one process there, silently); return the line that says how the conditions are split
    (None without DDP), and warn when a process gets no condition."""
    if not isinstance(trainer.strategy, DDPStrategy):
        return None
    cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if cpu and str(devices) == "auto":
        raise UdeError(
            "on the CPU, devices=auto is one process",
            source="trainer",
            where="trainer.devices",
            fix="say how many: trainer.devices=2 (2 processes, each fitting its share of the "
            "conditions), or trainer=cpu for one",
        )
    processes = trainer.world_size
    backend = getattr(trainer.strategy, "_process_group_backend", None) or (
        "gloo" if cpu else "nccl"
    )
    if trainer.num_nodes > 1:
        where = f"{trainer.num_nodes} nodes x {trainer.num_devices} {'CPU' if cpu else 'GPUs'}"
    else:
        where = "the CPU" if cpu else f"{trainer.num_devices} GPUs"
    shares = sorted({len(range(r, n_conditions, processes)) for r in range(processes)})
    per = " or ".join(str(s) for s in reversed(shares))
    line = (
        f"ddp: {processes} processes on {where} ({backend}); {n_conditions} training "
        f"conditions, {per} per process"
    )
    idle = processes - min(processes, n_conditions)
    if idle and trainer.is_global_zero:
        log.warning(
            f"ddp: {idle} of {processes} processes have no condition to fit ({n_conditions} "
            "training conditions): they only keep the others in step; use "
            f"trainer.devices={min(processes, n_conditions)} or more conditions"
        )
    return line
