"""The Lightning DataModule: one item per condition, batched into one solve."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ude.data.measurements import Measurements
from ude.data.splits import Split, make_split
from ude.data.tables import read_measurements
from ude.errors import UdeError
from ude.spec.model_spec import ModelSpec


class ConditionDataset(Dataset):
    """Item ``i``: condition index, ``values (time, replicate, observable)`` (NaN as 0),
    ``mask`` (True where measured, or where ``mask`` selects), ``sigma`` (0 where unknown) and
    ``real`` (True). ``window`` (optional) returns the current last time served: later entries
    are masked. Item ``len + i`` is item ``i`` as padding: nothing measured, ``real`` False
    (it keeps a process of a DDP run that has fewer conditions in step with the others).

    Args:
        measurements: the data.
        conditions: condition indices served (default: all).
        mask: entries to serve ``(condition, time, replicate, observable)`` (default: all
            measured ones).
    """

    def __init__(
        self,
        measurements: Measurements,
        conditions: list[int] | None = None,
        mask: np.ndarray | None = None,
        window: Callable[[], float | None] | None = None,
    ):
        self.window = window
        self.times = torch.from_numpy(np.asarray(measurements.times, dtype=float))
        self.indices = list(range(measurements.n_conditions)) if conditions is None else conditions
        values = measurements.values
        measured = ~np.isnan(values)
        self.mask = torch.from_numpy(measured if mask is None else measured & mask)
        self.values = torch.from_numpy(np.nan_to_num(values, nan=0.0))
        sigma = measurements.sigma
        self.sigma = torch.from_numpy(
            np.nan_to_num(sigma, nan=0.0) if sigma is not None else np.zeros_like(values)
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        real = i < len(self.indices)
        c = self.indices[i if real else i - len(self.indices)]
        mask = self.mask[c]
        cut = self.window() if self.window is not None else None
        if cut is not None:
            mask = mask & (self.times <= cut)[:, None, None]
        return {
            "condition": torch.tensor(c),
            "values": self.values[c],
            "mask": mask if real else torch.zeros_like(mask),
            "sigma": self.sigma[c],
            "real": torch.tensor(real),
        }


class ConditionShards(DistributedSampler):
    """The items of a :class:`ConditionDataset` split across the processes of a DDP run:
    process ``rank`` gets items ``rank, rank + processes, ...`` (of a shuffled order when
    ``shuffle``, the same on every process, new each epoch), none twice; a shorter share is
    padded with padding items, so that every process takes the same number of steps.

    Lightning's own distributed sampler pads with repeats, which count a condition twice.
    """

    def __init__(self, data: ConditionDataset, processes: int, rank: int, shuffle: bool):
        super().__init__(data, num_replicas=processes, rank=rank, shuffle=shuffle, seed=0)
        self.per_process = -(-len(data) // processes)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        mine = order[self.rank :: self.num_replicas]
        pad = [n + order[(self.rank + k) % n] for k in range(self.per_process - len(mine))]
        return iter(mine + pad)

    def __len__(self) -> int:
        return self.per_process

    def conditions(self) -> int:
        """How many real (not padding) items this process serves."""
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class ConditionsDataModule(pl.LightningDataModule):
    """Serves the conditions of ``measurements``; ``batch_size=None`` puts all in one batch.

    Held-out data (``val_conditions``: whole conditions by name; ``val_fraction``: the last
    fraction of the time span; ``val_after``: every time after it) are left out of training and
    served for validation; without them, validation sees the training data.

    ``curriculum_epochs > 0`` grows the fitted time window over the first epochs, from the
    first ``curriculum_start`` of the training span to all of it: an oscillating series fitted
    at once from a poor start tends to settle on a damped trajectory through its mean. Under DDP,
    :class:`ConditionShards` splits the conditions across processes; ``batch_size`` is then
    per process (null: all of a process's conditions in one step).
    """

    def __init__(
        self,
        measurements: Measurements,
        batch_size: int | None = None,
        val_conditions: Sequence[str] | None = None,
        val_fraction: float | None = None,
        val_after: float | None = None,
        curriculum_epochs: int = 0,
        curriculum_start: float = 0.25,
    ):
        super().__init__()
        self.measurements = measurements
        self.batch_size = batch_size
        self.split: Split = make_split(
            measurements, list(val_conditions or []), val_fraction, val_after
        )
        if isinstance(curriculum_epochs, bool) or not (
            isinstance(curriculum_epochs, int) and curriculum_epochs >= 0
        ):
            raise UdeError(
                f"got {curriculum_epochs!r}, expected an integer >= 0",
                source="data.curriculum_epochs",
            )
        if not 0 < curriculum_start <= 1:
            raise UdeError(
                f"got {curriculum_start!r}, expected a number in (0, 1]",
                source="data.curriculum_start",
            )
        self.curriculum_epochs = curriculum_epochs
        self.curriculum_start = float(curriculum_start)

    def window(self, epoch: int | None = None) -> float | None:
        """Last time fitted at ``epoch`` (default: the trainer's) under the curriculum; None
        once the whole training span is fitted."""
        if self.curriculum_epochs == 0:
            return None
        if epoch is None:
            trainer = getattr(self, "trainer", None)
            epoch = trainer.current_epoch if trainer is not None else self.curriculum_epochs
        if epoch >= self.curriculum_epochs:
            return None
        times = self.measurements.times[self.split.train.any(axis=(0, 2, 3))]
        t0, t1 = float(times[0]), float(times[-1])
        f = self.curriculum_start + (1 - self.curriculum_start) * epoch / self.curriculum_epochs
        return t0 + f * (t1 - t0)

    def _loader(self, data: ConditionDataset, shuffle: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        processes = trainer.world_size if trainer is not None else 1
        if processes == 1:
            size = self.batch_size or len(data)
            return DataLoader(data, batch_size=size, shuffle=shuffle and size < len(data))
        shards = ConditionShards(data, processes, trainer.global_rank, shuffle)
        return DataLoader(data, batch_size=self.batch_size or len(shards), sampler=shards)

    def train_dataloader(self) -> DataLoader:
        s = self.split
        return self._loader(
            ConditionDataset(self.measurements, s.train_conditions, s.train, self.window),
            shuffle=True,
        )

    def val_dataloader(self) -> DataLoader:
        s = self.split
        if not s.has_held_out:
            return self._loader(ConditionDataset(self.measurements), shuffle=False)
        return self._loader(
            ConditionDataset(self.measurements, s.held_out_conditions, s.held_out), shuffle=False
        )


def table_datamodule(
    path: str | Path,
    spec: str | ModelSpec | None = None,
    conditions: str | Path | None = None,
    format: str = "auto",
    time_column: str = "time",
    batch_size: int | None = None,
    val_conditions: Sequence[str] | None = None,
    val_fraction: float | None = None,
    val_after: float | None = None,
    curriculum_epochs: int = 0,
    curriculum_start: float = 0.25,
) -> ConditionsDataModule:
    """A :class:`ConditionsDataModule` over a CSV table (see :func:`read_measurements`)."""
    measurements = read_measurements(path, spec, conditions, format, time_column)
    return ConditionsDataModule(
        measurements,
        batch_size,
        val_conditions,
        val_fraction,
        val_after,
        curriculum_epochs,
        curriculum_start,
    )
